"""ITI-21 Patient Demographics Query (HL7 v2.5 ``QBP^Q22``), Supplier side.

IHE ITI TF-2a section 3.21: a Patient Demographics Consumer sends
``QBP^Q22^QBP_Q21`` with the demographics it searches in QPD-3, a repeating
list of ``@<field>^<value>`` pairs, the domains whose identifiers it wants in
QPD-8 and a quantity limit in RCP-2 (``10^RD``). SPIDERS answers
``RSP^K22^RSP_K21`` on the same connection, one PID per patient found.

Fields searched (QPD-3 component 1, with or without the ``@``):

=============================  ==============================================
``PID.5.1.1`` (``PID.5.1``)    family name: the used or the birth name
``PID.5.2``                    a given name
``PID.7.1`` (``PID.7``)        birth date (``YYYYMMDD``)
``PID.8``                      administrative sex, HL7 table 0001
``PID.3.1``                    an identifier, with its domain in ``PID.3.4.2``
                               (OID) or ``PID.3.4.1`` (namespace)
``PID.3.4.1``/``PID.3.4.2``    alone: any patient with an identifier there
``PID.3.4.3``                  accepted and not used
``PID.23``                     birth place, as stored (an INSEE code)
=============================  ==============================================

Names match as :mod:`ihe.pdq.patient_search` does, without case or accents
(``LEVEQUE`` finds ``Lévêque``, ``DUPONT MARTIN`` finds ``DUPONT-MARTIN``);
a trailing ``*`` asks for names that start with the value.

Outcomes: patients found, ``AA`` and QAK-2 ``OK`` with QAK-4, -5 and -6 the
hit counts (total, in this response, remaining); none, ``AA`` and ``NF``; an
unknown domain in QPD-8, ``AE`` with ERR-2 ``QPD^1^8^n`` and ERR-3 204; no
search parameter, ``AE`` 101 at ``QPD^1^3``; an unsupported field, ``AE``
102 at ``QPD^1^3^n^1``; a value that breaks its type, 102 (103 for a sex
outside table 0001) at ``QPD^1^3^n^2``. A domain is known as ITI-9 defines
it (:func:`ihe.pix.iti9_pix_query.known_domain`).

Continuation: when more patients match than RCP-2 allows (100 at most per
response), the response ends with DSC, DSC-1 a continuation pointer and
DSC-2 ``I``. The consumer sends the same query again (same QPD, same QPD-2
tag) with that pointer in DSC-1 and gets the next patients. The pointer is
stateless: it names the last patient sent (patients come in a fixed order)
with the time it was issued and a digest of the sender and the query, so
that any process sharing the database can continue it. A pointer that does
not decode, belongs to another query or is older than 30 minutes is
answered ``AE`` 204 at ``DSC^1^1``.

Every answer, errors included, is audited as a Query (110112, event type
ITI-21) with the QPD segment as the query object and one patient object per
patient sent.

Limitations
-----------
PD1 and QRI segments are not sent. A trailing ``*`` on any name makes every
name of the query match by prefix. Patients added between two pages after
the last one sent appear on a later page, those added before it do not, and
the hit counts are those of the moment each page is built. Addresses,
telecoms and mother's maiden name are not searchable (``AE`` 102). An
identifier domain in QPD-3 that nobody uses finds nothing (``NF``) rather
than an error. Query cancellation (``QCN^J01``) is refused as an unsupported
message type; pointers simply expire.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from ihe.atna.codes import EventOutcomeIndicator, EventTypeCode
from ihe.hl7v2 import er7
from ihe.hl7v2.application import Context
from ihe.hl7v2.codes import AckCode, ErrorCode
from ihe.hl7v2.query import (
    DSC,
    QPD,
    RCP,
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
from ihe.pdq.patient_search import PatientQuery, statement
from ihe.pix.iti9_pix_query import cx_text, preferred_identifiers, wanted_domains
from mappings.hl7_pid import SEX
from mappings.hl7_types import parse_date
from mappings.names import fold
from server import audit
from server.errors import MessageError
from server.models import Patient

logger = logging.getLogger(__name__)

SPEC = QuerySpec("IHE PDQ Query", "K22", "RSP_K21", EventTypeCode.ITI_21)
# Patients per response when RCP-2 asks for none, and at most.
PAGE_LIMIT = 100
# RCP-2.2 units: records (HL7 table 0126).
RECORDS = "RD"
POINTER_LIFETIME_SECONDS = 30 * 60
PREFIX = "*"

FAMILY = "family"
GIVEN = "given"
BIRTH_DATE = "birth_date"
SEX_FIELD = "sex"
ID_VALUE = "id"
ID_NAMESPACE = "namespace"
ID_UNIVERSAL = "universal"
ID_UNIVERSAL_TYPE = "universal_type"
BIRTH_PLACE = "birth_place"
# QPD-3 field names (PID segment field paths) → what they search.
FIELDS = {
    "PID.5.1.1": FAMILY,
    "PID.5.1": FAMILY,
    "PID.5.2": GIVEN,
    "PID.7.1": BIRTH_DATE,
    "PID.7": BIRTH_DATE,
    "PID.8": SEX_FIELD,
    "PID.3.1": ID_VALUE,
    "PID.3.4.1": ID_NAMESPACE,
    "PID.3.4.2": ID_UNIVERSAL,
    "PID.3.4.3": ID_UNIVERSAL_TYPE,
    "PID.23": BIRTH_PLACE,
}


@dataclass(frozen=True)
class Page:
    """The patients of one response and the counts QAK reports."""

    patients: list[Patient]
    total: int
    remaining: int


def handle_query(session: Session, msg: er7.Message, ctx: Context) -> Answer:
    """Answer one demographics query (one page of it) and audit the answer."""
    qpd = msg.segment(QPD)
    try:
        qpd = query_segment(msg)
        tag = query_tag(qpd)
        check_name(qpd, SPEC)
        query = patient_query(qpd)
        domains = wanted_domains(session, ctx, qpd, 8)
        query = _with_domains(query, domains)
        limit = quantity_limit(msg)
        key = _query_key(ctx.sender, tag, qpd)
        after = _continued_after(msg, key)
        page = _page(session, query, limit, after)
    except MessageError as exc:
        _audit(session, ctx, msg, qpd, [], EventOutcomeIndicator.MINOR_FAILURE)
        return refuse(msg.msh, SPEC, exc, qpd=qpd, default_charset=_charset(ctx))
    _audit(session, ctx, msg, qpd, page.patients, EventOutcomeIndicator.SUCCESS)
    found = bool(page.patients)
    pointer = None
    if page.remaining:
        pointer = make_pointer(key, page.patients[-1].id, int(time.time()))
    return respond(
        msg.msh,
        SPEC,
        ack_code=AckCode.APPLICATION_ACCEPT,
        status=QueryStatus.OK if found else QueryStatus.NO_DATA,
        qpd=qpd,
        body=[
            pid_segment(n, patient, domains)
            for n, patient in enumerate(page.patients, start=1)
        ],
        continuation=pointer,
        hits=(page.total, len(page.patients), page.remaining) if found else None,
        default_charset=_charset(ctx),
    )


def patient_query(qpd: er7.Segment) -> PatientQuery:
    """The search QPD-3 asks for.

    Raises
    ------
    QueryError
        No parameter (ERR-3 101), an unsupported or repeated field (102), an
        identifier without its domain (101).
    MessageError
        A birth date that is not a date (102).
    """
    values = _parameters(qpd)
    if not values:
        raise QueryError(
            "QPD-3 holds no search parameter",
            ErrorCode.REQUIRED_FIELD_MISSING,
            (QPD, 1, 3),
        )
    family, family_prefix = _name_value(values, FAMILY)
    given, given_prefix = _name_value(values, GIVEN)
    birth = values.get(BIRTH_DATE)
    return PatientQuery(
        family=family,
        given=given,
        birth_date=(parse_date(birth[1], (QPD, 1, 3, birth[0], 2)) if birth else None),
        sex=_sex(values),
        identifiers=_identifiers(values),
        exact=not (family_prefix or given_prefix),
        birth_place=values[BIRTH_PLACE][1] if BIRTH_PLACE in values else None,
    )


def quantity_limit(msg: er7.Message) -> int:
    """RCP-2 in records; :data:`PAGE_LIMIT` when absent, never above it.

    Raises
    ------
    QueryError
        A quantity that is not a positive whole number, or a unit other than
        records (ERR-3 102, at RCP-2).
    """
    rcp = msg.segment(RCP)
    quantity = rcp.value(2, 1, 1).strip() if rcp is not None else ""
    if rcp is None or not quantity:
        return PAGE_LIMIT
    unit = rcp.value(2, 1, 2).strip().upper()
    if unit not in ("", RECORDS):
        raise QueryError(
            "RCP-2 quantity limit must be counted in records (RD)",
            ErrorCode.DATA_TYPE_ERROR,
            (RCP, 1, 2, 1, 2),
        )
    if not quantity.isdigit() or int(quantity) < 1:
        raise QueryError(
            "RCP-2 quantity limit must be a positive whole number",
            ErrorCode.DATA_TYPE_ERROR,
            (RCP, 1, 2, 1, 1),
        )
    return min(int(quantity), PAGE_LIMIT)


def make_pointer(key: str, after: str, issued: int) -> str:
    """A continuation pointer: the last patient sent, when, and a digest.

    Written in the URL-safe base64 alphabet and ``.``, none of which is an
    HL7 delimiter.
    """
    payload = f"{issued}:{after}"
    body = base64.urlsafe_b64encode(payload.encode("utf-8")).decode("ascii")
    return f"{body.rstrip('=')}.{_digest(key, payload)}"


def pid_segment(set_id: int, patient: Patient, domains: Sequence[str]) -> str:
    """One PID of a response: identifiers, names, birth date, sex, birth place."""
    fields = [""] * 23
    fields[0] = str(set_id)
    fields[2] = "~".join(cx_text(r) for r in preferred_identifiers(patient, domains))
    fields[4] = _names(patient)
    if patient.birth_date is not None:
        fields[6] = patient.birth_date.strftime("%Y%m%d")
    fields[7] = er7.escape(patient.sex or "")
    fields[22] = er7.escape(patient.birth_place or "")
    return "|".join(["PID", *fields]).rstrip("|")


def _parameters(qpd: er7.Segment) -> dict[str, tuple[int, str]]:
    """QPD-3 as field → (repetition, value); empty values are no constraint."""
    values: dict[str, tuple[int, str]] = {}
    for index, rep in enumerate(qpd.field(3), start=1):
        name = er7.component(rep, 1).strip().upper().removeprefix("@")
        value = er7.component(rep, 2).strip()
        if not name and not value:
            continue
        what = FIELDS.get(name)
        if what is None:
            raise QueryError(
                f"QPD-3 repetition {index} names a field that is not searchable; "
                f"searchable: {', '.join('@' + f for f in FIELDS)}",
                ErrorCode.DATA_TYPE_ERROR,
                (QPD, 1, 3, index, 1),
            )
        if what in values:
            raise QueryError(
                f"QPD-3 repetition {index} repeats a field already given",
                ErrorCode.DATA_TYPE_ERROR,
                (QPD, 1, 3, index, 1),
            )
        if value:
            values[what] = (index, value)
    return values


def _name_value(
    values: dict[str, tuple[int, str]], what: str
) -> tuple[str | None, bool]:
    """A name parameter without its trailing ``*``, and whether it had one."""
    if what not in values:
        return None, False
    value = values[what][1]
    prefix = value.endswith(PREFIX)
    return value.rstrip(PREFIX).strip() or None, prefix


def _sex(values: dict[str, tuple[int, str]]) -> str | None:
    if SEX_FIELD not in values:
        return None
    index, value = values[SEX_FIELD]
    sex = SEX.get(value.upper())
    if sex is None:
        raise QueryError(
            "the sex searched is not in HL7 table 0001",
            ErrorCode.TABLE_VALUE_NOT_FOUND,
            (QPD, 1, 3, index, 2),
        )
    return sex


def _identifiers(
    values: dict[str, tuple[int, str]],
) -> tuple[tuple[str, str | None], ...]:
    system = (values.get(ID_UNIVERSAL) or values.get(ID_NAMESPACE) or (0, ""))[1]
    value = values[ID_VALUE][1] if ID_VALUE in values else None
    if value is not None and not system:
        raise QueryError(
            "@PID.3.1 needs the domain of the identifier in @PID.3.4.2 or @PID.3.4.1",
            ErrorCode.REQUIRED_FIELD_MISSING,
            (QPD, 1, 3, values[ID_VALUE][0], 1),
        )
    return ((system, value),) if system else ()


def _with_domains(query: PatientQuery, domains: tuple[str, ...]) -> PatientQuery:
    if not domains:
        return query
    return PatientQuery(
        family=query.family,
        given=query.given,
        birth_date=query.birth_date,
        sex=query.sex,
        identifiers=query.identifiers,
        exact=query.exact,
        patient_ids=query.patient_ids,
        birth_place=query.birth_place,
        domains=domains,
    )


def _page(session: Session, query: PatientQuery, limit: int, after: str | None) -> Page:
    """Up to `limit` patients after the one named `after`, with the counts."""
    base = statement(query)
    stmt = base if after is None else base.where(Patient.id > after)
    patients = list(session.scalars(stmt.limit(limit)))
    total = _count(session, base)
    remaining = (
        _count(session, base.where(Patient.id > patients[-1].id)) if patients else 0
    )
    return Page(patients, total, remaining)


def _count(session: Session, stmt: Select[Any]) -> int:
    subquery = stmt.order_by(None).subquery()
    return int(session.scalar(select(func.count()).select_from(subquery)) or 0)


def _continued_after(msg: er7.Message, key: str) -> str | None:
    """The last patient already sent, from DSC-1; None for a first query.

    Raises
    ------
    QueryError
        A pointer that does not decode, belongs to another query or sender,
        or has expired (ERR-3 204, at DSC-1).
    """
    dsc = msg.segment(DSC)
    pointer = dsc.value(1).strip() if dsc is not None else ""
    if not pointer:
        return None
    body, _, digest = pointer.partition(".")
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode(
            "utf-8"
        )
        issued_text, _, after = payload.partition(":")
        issued = int(issued_text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _pointer_error("the continuation pointer of DSC-1 is unknown") from None
    if not after or digest != _digest(key, payload):
        raise _pointer_error(
            "the continuation pointer of DSC-1 belongs to another query"
        )
    if time.time() - issued > POINTER_LIFETIME_SECONDS:
        raise _pointer_error(
            "the continuation pointer of DSC-1 has expired; send the query again "
            "without DSC"
        )
    return after


def _pointer_error(message: str) -> QueryError:
    return QueryError(message, ErrorCode.UNKNOWN_KEY_IDENTIFIER, (DSC, 1, 1))


def _query_key(sender: str, tag: str, qpd: er7.Segment) -> str:
    """What a pointer is bound to: the sender, the tag and the parameters."""
    parts = [sender, tag, *(er7.encode_field(qpd.field(n)) for n in (3, 8))]
    return "\x00".join(parts)


def _digest(key: str, payload: str) -> str:
    text = f"{key}\x00{payload}".encode()
    return hashlib.sha256(text).hexdigest()[:24]


def _names(patient: Patient) -> str:
    """PID-5: the birth name (``L``) and, when it differs, the used name (``D``)."""
    given = (patient.given_names or "").split()
    first, further = (given[0] if given else ""), " ".join(given[1:])

    def xpn(family: str, name_type: str) -> str:
        parts = [family, first, further, "", "", "", name_type]
        return "^".join(er7.escape(p) for p in parts)

    used, birth = patient.family_name, patient.birth_family_name
    if birth and used and fold(birth) != fold(used):
        return f"{xpn(birth, 'L')}~{xpn(used, 'D')}"
    name = birth or used
    return xpn(name, "L") if name else ""


def _audit(
    session: Session,
    ctx: Context,
    msg: er7.Message,
    qpd: er7.Segment | None,
    patients: list[Patient],
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
        patients=patients,
        outcome=outcome,
    )


def _charset(ctx: Context) -> str:
    return ctx.settings.hl7_default_charset


QUERIES: dict[tuple[str, str], QueryRoute] = {
    ("QBP", "Q22"): QueryRoute(SPEC, handle_query),
}
