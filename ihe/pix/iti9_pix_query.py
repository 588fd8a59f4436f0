"""ITI-9 PIX Query (HL7 v2.5 ``QBP^Q23``), PIX Manager side.

IHE ITI TF-2a section 3.9: a PIX Consumer sends ``QBP^Q23^QBP_Q21`` with the
identifier it knows in QPD-3 (CX, ``id^^^namespace&OID&ISO``) and, in QPD-4,
the domains whose identifiers it wants (``^^^namespace&OID&ISO``, repeating;
empty for all). SPIDERS answers ``RSP^K23^RSP_K23`` on the same connection:

===============================================  ===========================
the identifier is known                          ``AA``, QAK-2 ``OK``, one
                                                 PID whose PID-3 lists the
                                                 patient's other identifiers
known, none in the QPD-4 domains                 ``AA``, ``NF``, no PID
QPD-3 domain unknown (or CX-4 empty)             ``AE``, ERR-2 ``QPD^1^3^1^4``,
                                                 ERR-3 204
identifier unknown in a known domain             ``AE``, ``QPD^1^3^1^1``, 204
a QPD-4 domain unknown                           ``AE``, ``QPD^1^4^n`` (n the
                                                 repetition), 204, one ERR
                                                 per unknown domain
===============================================  ===========================

The PID carries PID-3 only, and PID-5 as the profile asks: an empty first
repetition and a second whose name type (XPN-7) is ``S`` (pseudonym), so that
no domain's name is preferred. PID-3 holds one identifier per domain (the
patient's own before one taken over in a merge) and never the queried one.
An identifier absorbed by a merge resolves to the survivor, whose
identifiers are answered.

A domain is *known* when an identifier of the index is in it or a site of
the sites file declares it as its ``patient_id_domain``. A domain is named by
its OID (CX-4.2) when the CX has one, else by its namespace (CX-4.1), as the
identity feeds store it.

Every answer, errors included, is audited as a Query (110112, event type
ITI-9) with the QPD segment as the query object and the patient found.

Limitations
-----------
A domain named only by its namespace is another domain than the same
authority named by its OID; the sites file gives no namespace to match.
Identifiers held aside (an INS whose status does not link) are not
answered. RCP-1 is not read: every query is answered immediately.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from ihe.atna.codes import EventOutcomeIndicator, EventTypeCode
from ihe.hl7v2 import er7
from ihe.hl7v2.ack import ErrorDetail
from ihe.hl7v2.application import Context
from ihe.hl7v2.codes import AckCode, ErrorCode
from ihe.hl7v2.query import (
    QPD,
    Answer,
    QueryError,
    QueryRoute,
    QuerySpec,
    QueryStatus,
    check_name,
    query_segment,
    query_tag,
    refuse,
    respond,
)
from ihe.pix import patient_index
from mappings.identifiers import Identifier, is_oid
from server import audit
from server.errors import MessageError
from server.models import Patient, PatientIdentifier

logger = logging.getLogger(__name__)

SPEC = QuerySpec("IHE PIX Query", "K23", "RSP_K23", EventTypeCode.ITI_9)
# PID-5 of a PIX answer: no name, then a pseudonym name type (XPN-7 "S").
PSEUDONYM_NAME = "~^^^^^^S"


def handle_query(session: Session, msg: er7.Message, ctx: Context) -> Answer:
    """Answer one PIX query and audit the answer."""
    qpd = msg.segment(QPD)
    try:
        qpd = query_segment(msg)
        query_tag(qpd)
        check_name(qpd, SPEC)
        patient, others = _cross_reference(session, ctx, qpd)
    except MessageError as exc:
        _audit(session, ctx, msg, qpd, None, EventOutcomeIndicator.MINOR_FAILURE)
        return refuse(msg.msh, SPEC, exc, qpd=qpd, default_charset=_charset(ctx))
    _audit(session, ctx, msg, qpd, patient, EventOutcomeIndicator.SUCCESS)
    body = []
    if others:
        cxs = "~".join(cx_text(row) for row in others)
        body.append(f"PID|||{cxs}||{PSEUDONYM_NAME}")
    return respond(
        msg.msh,
        SPEC,
        ack_code=AckCode.APPLICATION_ACCEPT,
        status=QueryStatus.OK if others else QueryStatus.NO_DATA,
        qpd=qpd,
        body=body,
        default_charset=_charset(ctx),
    )


def queried_identifier(session: Session, ctx: Context, qpd: er7.Segment) -> Identifier:
    """The person identifier of QPD-3, in a known domain.

    Raises
    ------
    QueryError
        No identifier (ERR-3 101, ``QPD^1^3^1^1``); no domain or an unknown
        one (204, ``QPD^1^3^1^4``).
    """
    value = qpd.value(3, 1, 1).strip()
    if not value:
        raise QueryError(
            "QPD-3 holds no identifier",
            ErrorCode.REQUIRED_FIELD_MISSING,
            (QPD, 1, 3, 1, 1),
        )
    system = domain_of(qpd.field(3)[0])
    if not system or not known_domain(session, ctx, system):
        raise QueryError(
            "the assigning authority of QPD-3 is not a known domain",
            ErrorCode.UNKNOWN_KEY_IDENTIFIER,
            (QPD, 1, 3, 1, 4),
        )
    return Identifier(system, value)


def wanted_domains(
    session: Session, ctx: Context, qpd: er7.Segment, field: int
) -> tuple[str, ...]:
    """The domains of a "what domains returned" field, empty for all.

    Raises
    ------
    QueryError
        One ERR (204, ``QPD^1^<field>^<repetition>``) per unknown domain.
    """
    domains: list[str] = []
    unknown: list[ErrorDetail] = []
    for index, rep in enumerate(qpd.field(field), start=1):
        if not any(any(c) for c in rep):
            continue
        system = domain_of(rep)
        if system and known_domain(session, ctx, system):
            domains.append(system)
            continue
        unknown.append(
            ErrorDetail(
                ErrorCode.UNKNOWN_KEY_IDENTIFIER,
                (QPD, 1, field, index),
                f"the domain of QPD-{field} repetition {index} is not known",
            )
        )
    if unknown:
        first = unknown[0]
        raise QueryError(first.message, first.code, first.location, unknown[1:])
    return tuple(domains)


def domain_of(rep: er7.Repetition) -> str:
    """The domain a CX repetition names in CX-4: its OID, else its namespace."""
    namespace = er7.component(rep, 4, 1).strip()
    universal = er7.component(rep, 4, 2).strip()
    return universal or namespace


def known_domain(session: Session, ctx: Context, system: str) -> bool:
    """True when an identifier of the index or a site of the sites file is in
    `system`."""
    if any(site.patient_id_domain == system for site in ctx.settings.directory.sites):
        return True
    held = select(PatientIdentifier.id).where(PatientIdentifier.system == system)
    return session.scalar(held.limit(1)) is not None


def preferred_identifiers(
    patient: Patient, domains: Sequence[str] = ()
) -> list[PatientIdentifier]:
    """One identifier per domain of `patient`, limited to `domains` if any.

    In each domain the patient's own identifier comes before one taken over
    in a merge; domains keep the order their first identifier was added in.
    """
    chosen: dict[str, PatientIdentifier] = {}
    for row in sorted(patient.identifiers, key=lambda r: r.merged_from is not None):
        if domains and row.system not in domains:
            continue
        chosen.setdefault(row.system, row)
    order = {row.system: row.id for row in reversed(patient.identifiers)}
    return sorted(chosen.values(), key=lambda r: order[r.system])


def cx_text(row: PatientIdentifier) -> str:
    """One identifier as an escaped CX: ``value^^^&OID&ISO^type``."""
    system = row.system
    authority = f"&{system}&ISO" if is_oid(system) else er7.escape(system)
    cx = f"{er7.escape(row.value)}^^^{authority}"
    if row.type_code:
        cx += f"^{er7.escape(row.type_code)}"
    return cx


def _cross_reference(
    session: Session, ctx: Context, qpd: er7.Segment
) -> tuple[Patient, list[PatientIdentifier]]:
    """The patient of QPD-3 and its identifiers to answer (QPD-4 applied).

    Raises
    ------
    QueryError
        As :func:`queried_identifier` and :func:`wanted_domains`; an
        identifier unknown in its domain (ERR-3 204, ``QPD^1^3^1^1``).
    """
    ident = queried_identifier(session, ctx, qpd)
    domains = wanted_domains(session, ctx, qpd, 4)
    patient = patient_index.find_patient(session, ident)
    if patient is None:
        raise QueryError(
            "the identifier of QPD-3 is unknown in its domain",
            ErrorCode.UNKNOWN_KEY_IDENTIFIER,
            (QPD, 1, 3, 1, 1),
        )
    others = [
        row
        for row in preferred_identifiers(patient, domains)
        if (row.system, row.value) != (ident.system, ident.value)
    ]
    return patient, others


def _audit(
    session: Session,
    ctx: Context,
    msg: er7.Message,
    qpd: er7.Segment | None,
    patient: Patient | None,
    outcome: int,
) -> None:
    audit.hl7_query(
        session,
        ctx.settings,
        transaction=SPEC.transaction,
        sender=ctx.sender,
        peer=ctx.peer,
        receiver=f"{msg.msh.raw(5)}|{msg.msh.raw(6)}",
        message_id=msg.control_id,
        query=(qpd.text if qpd is not None else "").encode("utf-8"),
        query_id=(qpd.value(2).strip() if qpd is not None else "") or SPEC.name,
        patients=[patient] if patient is not None else [],
        outcome=outcome,
    )


def _charset(ctx: Context) -> str:
    return ctx.settings.hl7_default_charset


QUERIES: dict[tuple[str, str], QueryRoute] = {
    ("QBP", "Q23"): QueryRoute(SPEC, handle_query),
}
