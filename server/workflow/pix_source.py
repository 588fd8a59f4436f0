"""Each site's patient identifier for discovery: from the local index, or asked
of the region's PIX Manager first.

``SPIDERS_PIX_SOURCE`` chooses where :func:`site_identifiers` looks:

``local`` (the default)
    The patient index: in each site's domain, the patient's own identifier
    before one taken over in a merge (as ``Patient.identifier_in`` does).
``iti9`` / ``iti83``
    The external PIX Manager is asked once, by ITI-9 over MLLP
    (:mod:`ihe.pix.iti9_pix_consumer`) or ITI-83 over HTTP
    (:mod:`ihe.pix.iti83_pixm_consumer`), with the patient's best known
    identifier (its own first identifier, one in a site's domain before
    others) for every other site domain. What it answers joins the index as
    linked identifiers, each link written to the patient's history with the
    detail :data:`LINKED_DETAIL`; then the sites' identifiers are read from
    the index as in ``local``.

The PIX Manager is an authoritative source, but an answer is linked only
when that is safe, as a feed would be: never to a fictitious or doubtful
identity (FICT, DOUT) or an inactive patient, never an identifier the index
holds for another patient, never a second identifier in a domain where the
patient already has one, never an INS, and only in the domains asked. An
answer that is not linked is not used either; a WARNING counts it.

Each query is audited as a Query (110112) with the ITI-9 or ITI-83 event
type, SPIDERS (PIX Consumer) as the source: outcome 0 when answered, 4 when
the identifier is not known or the query refused, 8 when the PIX Manager
could not be reached. When it cannot be reached or refuses the query,
discovery goes on with the local index alone and a WARNING without patient
data says so; the returned mapping's ``source`` and ``fallback`` say which
source was used.

Limitations
-----------
One identifier is asked about; a patient the PIX Manager knows under
another identifier only is "not known". A conflicting answer is counted in
the log, not reported to a person. Two discoveries linking the same
identifier to two patients at the same instant: the second transaction's
commit fails on the index's uniqueness. The answer is not cached: each
discovery asks again.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence
from enum import StrEnum
from functools import partial
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from ihe.atna.codes import EventOutcomeIndicator, EventTypeCode
from ihe.pix import iti9_pix_consumer as iti9
from ihe.pix import iti83_pixm_consumer as iti83
from ihe.pix import patient_index
from ihe.pix.iti9_pix_consumer import CrossReference
from ihe.tls import client_context
from mappings.identifiers import Identifier, to_cx
from server import audit
from server.config import Settings
from server.errors import PeerError, PixQueryError
from server.models import Patient, PatientHistory, PatientIdentifier

logger = logging.getLogger(__name__)

LINKED_DETAIL = "linked by external PIX Manager"
LOG_FALLBACK = "PIX Manager unavailable, local patient index used"
LOG_NOT_KNOWN = "patient not known to the PIX Manager"
LOG_LINKED = "identifiers linked from the PIX Manager"
LOG_NOT_LINKED = "PIX Manager answer not linked"
LOG_TLS_UNUSABLE = "PIX Manager TLS files unusable"


class PixSource(StrEnum):
    """``SPIDERS_PIX_SOURCE``: where the sites' identifiers come from."""

    LOCAL = "local"
    ITI9 = "iti9"  # IHE ITI-9 PIX Query, HL7 v2 over MLLP
    ITI83 = "iti83"  # IHE ITI-83 PIXm, FHIR over HTTP


class SiteIdentifiers(dict[str, str]):
    """Domain OID to the patient's identifier there, and where it came from.

    Attributes
    ----------
    source : PixSource
        ``local`` when only the index was read, else the PIX Manager's
        transaction whose answer (even "not known") was merged first.
    fallback : bool
        True when a PIX Manager was configured but could not be used.
    """

    def __init__(
        self, values: dict[str, str], source: PixSource, *, fallback: bool = False
    ) -> None:
        super().__init__(values)
        self.source = source
        self.fallback = fallback


def site_identifiers(
    settings: Settings,
    session: Session,
    patient: Patient,
    registration_id: str | None = None,
) -> SiteIdentifiers:
    """The patient's identifier in each site's domain, from the configured source.

    Parameters
    ----------
    settings : Settings
        ``pix_source`` and the PIX Manager's settings; the sites' domains.
    session : sqlalchemy.orm.Session
        The caller's; identifiers linked and the audit record are added to
        it and committed by the caller.
    patient : Patient
        The registered patient, attached to `session`.
    registration_id : str, optional
        The registration discovery runs for: its audit records and log lines
        name it.
    """
    domains = site_domains(settings)
    mode = PixSource(settings.pix_source)
    source = best_identifier(patient, domains)
    wanted = tuple(d for d in domains if source is None or d != source.system)
    if mode is PixSource.LOCAL or source is None or not wanted:
        return SiteIdentifiers(local_identifiers(patient, domains), PixSource.LOCAL)
    try:
        answer = _ask(settings, session, patient, mode, source, wanted, registration_id)
    except PeerError as exc:
        logger.warning(
            LOG_FALLBACK,
            extra={
                "registration": registration_id,
                "pix_source": mode.value,
                "error": type(exc).__name__,
            },
        )
        return SiteIdentifiers(
            local_identifiers(patient, domains), PixSource.LOCAL, fallback=True
        )
    if not answer.known:
        logger.info(
            LOG_NOT_KNOWN,
            extra={"registration": registration_id, "pix_source": mode.value},
        )
    link_answer(session, patient, answer.identifiers, wanted, registration_id)
    return SiteIdentifiers(local_identifiers(patient, domains), mode)


def site_domains(settings: Settings) -> tuple[str, ...]:
    """The sites' patient identifier domains, each once, in sites-file order."""
    return tuple(dict.fromkeys(s.patient_id_domain for s in settings.directory.sites))


def local_identifiers(patient: Patient, domains: Sequence[str]) -> dict[str, str]:
    """The index's identifier of `patient` in each of `domains` that has one."""
    found = {d: patient.identifier_in(d) for d in domains}
    return {d: value for d, value in found.items() if value}


def best_identifier(patient: Patient, domains: Sequence[str]) -> Identifier | None:
    """The identifier to ask the PIX Manager with.

    The patient's own identifiers (not taken over in a merge) come first, in
    the order the feeds brought them; among them one in a site's domain.
    """
    rows = sorted(
        patient.identifiers,
        key=lambda r: (r.merged_from is not None, r.system not in domains, r.id or 0),
    )
    if not rows:
        return None
    first = rows[0]
    return Identifier(first.system, first.value, first.type_code)


def link_answer(
    session: Session,
    patient: Patient,
    identifiers: Sequence[Identifier],
    domains: Sequence[str],
    registration_id: str | None = None,
) -> int:
    """Link the PIX Manager's `identifiers` to `patient` where safe; the count.

    See the module's description for what is safe. Each link is written to
    the patient's history with :data:`LINKED_DETAIL`.
    """
    refused = 0
    linked = 0
    doubtful = not patient.active or patient.fictitious_or_doubtful
    for ident in identifiers:
        if ident.system not in domains or ident.is_ins or doubtful:
            refused += 1
            continue
        holder = patient_index.find_patient(session, ident)
        if holder is not None:
            refused += int(holder.id != patient.id)
            continue
        if any(row.system == ident.system for row in patient.identifiers):
            refused += 1
            continue
        patient.identifiers.append(
            PatientIdentifier(
                system=ident.system, value=ident.value, type_code=ident.type_code
            )
        )
        patient.history.append(
            PatientHistory(
                kind="linked",
                system=ident.system,
                new_value=ident.value,
                detail=LINKED_DETAIL,
            )
        )
        linked += 1
    if linked:
        patient.version += 1
        session.flush()
        logger.info(
            LOG_LINKED,
            extra={
                "registration": registration_id,
                "patient": patient.id,
                "linked": linked,
            },
        )
    if refused:
        logger.warning(
            LOG_NOT_LINKED,
            extra={
                "registration": registration_id,
                "patient": patient.id,
                "refused": refused,
            },
        )
    return linked


def _ask(
    settings: Settings,
    session: Session,
    patient: Patient,
    mode: PixSource,
    source: Identifier,
    wanted: tuple[str, ...],
    registration_id: str | None,
) -> CrossReference:
    """Ask the PIX Manager and audit the query, whatever its outcome."""
    if mode is PixSource.ITI9:
        return _ask_iti9(settings, session, patient, source, wanted, registration_id)
    return _ask_iti83(settings, session, patient, source, wanted, registration_id)


def _ask_iti9(
    settings: Settings,
    session: Session,
    patient: Patient,
    source: Identifier,
    wanted: tuple[str, ...],
    registration_id: str | None,
) -> CrossReference:
    host, port = settings.pix_mllp_host or "", settings.pix_mllp_port or 0
    query = iti9.build_query(source, wanted, application=settings.ae_title)

    def ask() -> CrossReference:
        peer = iti9.MllpPeer(host, port, settings.pix_timeout, _mllp_tls(settings))
        return iti9.ask(peer, query)

    record = partial(
        audit.pix_consumer_query,
        session,
        settings,
        transaction=EventTypeCode.ITI_9,
        manager=f"{host}:{port}",
        manager_host=host,
        query=query.qpd.encode("utf-8"),
        query_id=query.tag,
        source_cx=to_cx(source),
        patient=patient,
        sender=query.sender,
        message_id=query.control_id,
        registration_id=registration_id,
    )
    return _audited(ask, record)


def _ask_iti83(
    settings: Settings,
    session: Session,
    patient: Patient,
    source: Identifier,
    wanted: tuple[str, ...],
    registration_id: str | None,
) -> CrossReference:
    base = settings.pix_url or ""
    peer = iti83.PixmPeer(
        base,
        settings.pix_timeout,
        ca=settings.pix_tls_ca,
        cert=settings.pix_tls_cert,
        key=settings.pix_tls_key,
        auth_header=settings.pix_auth_header,
    )
    record = partial(
        audit.pix_consumer_query,
        session,
        settings,
        transaction=EventTypeCode.ITI_83,
        manager=f"{base}/{iti83.OPERATION}",
        manager_host=urlsplit(base).hostname or "",
        query=iti83.query_string(source, wanted).encode("utf-8"),
        query_id=f"{base}/{iti83.OPERATION}",
        source_cx=to_cx(source),
        patient=patient,
        registration_id=registration_id,
    )
    return _audited(lambda: iti83.ask(peer, source, wanted), record)


def _audited(
    ask: Callable[[], CrossReference], record: Callable[..., None]
) -> CrossReference:
    """`ask()`, its Query audited by ``record(outcome=...)`` whatever happens:
    0 when answered, 4 when not known or refused, 8 otherwise."""
    outcome = EventOutcomeIndicator.SERIOUS_FAILURE
    try:
        answer = ask()
        outcome = _outcome(answer)
        return answer
    except PixQueryError:
        outcome = EventOutcomeIndicator.MINOR_FAILURE
        raise
    finally:
        record(outcome=outcome)


def _outcome(answer: CrossReference) -> EventOutcomeIndicator:
    if answer.known:
        return EventOutcomeIndicator.SUCCESS
    return EventOutcomeIndicator.MINOR_FAILURE


def _mllp_tls(settings: Settings) -> ssl.SSLContext | None:
    """The client context for the PIX Manager's MLLP listener, if TLS is set.

    Raises
    ------
    PeerError
        The CA, certificate or key cannot be read or used.
    """
    if settings.pix_tls_ca is None:
        return None
    try:
        return client_context(
            settings.pix_tls_ca, settings.pix_tls_cert, settings.pix_tls_key
        )
    except (OSError, ssl.SSLError) as exc:
        logger.error(LOG_TLS_UNUSABLE, extra={"error": type(exc).__name__})
        raise PeerError("the PIX Manager's TLS files cannot be used") from exc
