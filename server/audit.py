"""Audit events of SPIDERS' own actions, written to the outbox and delivered.

Each function builds the DICOM PS3.15 message for one action and adds it to
the caller's session, so the audit record is committed with the action it
describes (or not at all). Records name the registration they belong to and
the patient they concern whenever the action knows them, so that the trail of
one registration, or of one patient, is one query.

:func:`start_delivery` starts the thread that sends the outbox to the audit
repositories of ``SPIDERS_AUDIT_REPOSITORIES`` (:mod:`ihe.atna.delivery`).

Limitations
-----------
Requests over HTTP are attributed to the authenticated subject when there is
one, else to the calling address. A transfer into the cache is attributed to
the registration whose prefetch of that study runs (or ran last); a study
received outside any prefetch belongs to no registration. Refused DICOM
associations, refused HTTP requests and failed TLS handshakes are recorded as
security alerts; the first request a bearer token authenticates is the User
Authentication; a C-STORE or C-MOVE the cache refuses is a security alert too.
Not audited yet: TLS failures on connections SPIDERS opens (to sites and audit
repositories), which are logged. SPIDERS deletes, exports and imports nothing
yet, so 110105, 110106 and 110107 have builders but no caller.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from ihe.atna import messages, outbox, security_messages
from ihe.atna.codes import Code, CodedEnum, EventTypeCode, ParticipantObjectIDTypeCode
from ihe.atna.delivery import Destination, OutboxSender
from ihe.atna.iti20_record_audit_event import (
    Scheme,
    TlsTransport,
    Transport,
    UdpTransport,
)
from ihe.dicom.acceptance import RefusedCaller
from ihe.dicom.qr_scp import RetrieveSummary
from ihe.tls import client_context
from mappings.identifiers import Identifier, to_cx
from server.config import Settings, Site
from server.db import Database
from server.errors import ConfigurationError
from server.models import Candidate, Patient, Prefetch, PrefetchState, Registration

logger = logging.getLogger(__name__)

# A person's decision on a study flagged by identity vigilance, written as the
# event type of a Procedure Record update (no standard code names it).
IDENTITY_REVIEW = {
    "confirm": Code("identity-confirmed", "SPIDERS", "Flagged study confirmed"),
    "reject": Code("identity-rejected", "SPIDERS", "Flagged study rejected"),
}

RAD14 = EventTypeCode.RAD_14.code
RAD16 = EventTypeCode.RAD_16.code
APPLICATION_NAME = "SPIDERS"


def audit_source(settings: Settings) -> messages.AuditSource:
    """This node as the audit source."""
    return messages.AuditSource(source_id=f"{APPLICATION_NAME}@{socket.gethostname()}")


def us(
    settings: Settings, *, requestor: bool = False, role: Code | None = None
) -> messages.Participant:
    """SPIDERS as an active participant (process id, AE title, host)."""
    return messages.Participant(
        user_id=str(os.getpid()),
        alternative_user_id=f"AETITLES={settings.ae_title}",
        user_name=APPLICATION_NAME,
        is_requestor=requestor,
        role=role,
        network_access_point=settings.dicom_host,
    )


def peer_ae(
    ae_title: str, host: str, *, requestor: bool = False, role: Code | None = None
) -> messages.Participant:
    """A DICOM peer as an active participant."""
    return messages.Participant(
        user_id=ae_title,
        alternative_user_id=f"AETITLES={ae_title}",
        is_requestor=requestor,
        role=role,
        network_access_point=host,
    )


def http_client(user: str | None, address: str | None) -> messages.Participant:
    """An HTTP caller: its authenticated subject, else its address."""
    return messages.Participant(
        user_id=user or address or "unknown",
        is_requestor=True,
        network_access_point=address,
    )


def patient_cx(patient: Patient) -> str:
    """The patient's first identifier as an HL7 CX, for audit objects.

    A patient known only by an INS that links nothing (status PROV or RECUP,
    or one just downgraded) is named by that INS; one with no identifier at
    all by its resource id.
    """
    if patient.identifiers:
        ident = patient.identifiers[0]
        return to_cx(Identifier(ident.system, ident.value, ident.type_code))
    if patient.ins_system and patient.ins_value:
        return to_cx(Identifier(patient.ins_system, patient.ins_value, "INS"))
    return f"Patient/{patient.id}"


def patient_name(patient: Patient) -> str | None:
    """The patient's name as a DICOM PN, if known."""
    if not patient.family_name:
        return None
    return "^".join(filter(None, [patient.family_name, patient.given_names or ""]))


def application(session: Session, settings: Settings, *, started: bool) -> None:
    """Application Activity: start or stop (110100)."""
    xml = messages.application_activity(
        started=started,
        application=us(settings),
        source=audit_source(settings),
    )
    outbox.record(session, xml)


def patient_record(
    session: Session, settings: Settings, patient: Patient, *, action: str, client: str
) -> None:
    """Patient Record (110110) created or updated through the identity feed."""
    xml = messages.patient_record(
        action=action,
        patient_id=patient_cx(patient),
        patient_name=patient_name(patient),
        source=messages.Participant(
            user_id=client, is_requestor=True, network_access_point=client
        ),
        destination=us(settings),
        audit_source=audit_source(settings),
    )
    outbox.record(session, xml, patient_id=patient.id)


def registration_event(
    session: Session,
    settings: Settings,
    registration: Registration,
    *,
    action: str,
    requestor: messages.Participant,
    event_type: Code | CodedEnum | None = None,
) -> None:
    """Procedure Record (110111): a registration created (C), read (R), changed
    (U: rescheduled, selection, retry, order hints) or cancelled (D).

    For a read the data flows from SPIDERS to the requestor; otherwise from
    the requestor to SPIDERS.
    """
    patient = registration.patient
    source, destination = (
        (us(settings), requestor) if action == "R" else (requestor, us(settings))
    )
    xml = messages.procedure_record(
        action=action,
        procedure_uri=f"Appointment/{registration.id}",
        patient_id=patient_cx(patient),
        patient_name=patient_name(patient),
        source=source,
        destination=destination,
        audit_source=audit_source(settings),
        event_type=event_type,
    )
    outbox.record(session, xml, registration_id=registration.id, patient_id=patient.id)


def patient_read(
    session: Session,
    settings: Settings,
    patient: Patient,
    *,
    requestor: messages.Participant,
) -> None:
    """Patient Record (110110) read: demographics sent to a requestor.

    A patient merged into another has no identifier left; its resource
    reference names it then.
    """
    xml = messages.patient_record(
        action="R",
        patient_id=patient_cx(patient),
        patient_name=patient_name(patient),
        source=us(settings),
        destination=requestor,
        audit_source=audit_source(settings),
    )
    outbox.record(session, xml, patient_id=patient.id)


def patient_query(
    session: Session,
    settings: Settings,
    *,
    transaction: Code | CodedEnum,
    query_id: str,
    query: bytes,
    requestor: messages.Participant,
    patients: Sequence[Patient] = (),
    outcome: int = 0,
) -> None:
    """Query (110112) answered: an ITI-78 PDQm or ITI-83 PIXm query.

    One patient object per patient returned; the record is filed under the
    patient when there is exactly one.
    """
    xml = messages.patient_query(
        transaction=transaction,
        query_id=query_id,
        query=query,
        source=requestor,
        destination=us(settings),
        audit_source=audit_source(settings),
        patients=[(patient_cx(p), patient_name(p)) for p in patients],
        outcome=outcome,
    )
    only = patients[0].id if len(patients) == 1 else None
    outbox.record(session, xml, patient_id=only)


def hl7_sender(sender: str, peer: str) -> messages.Participant:
    """An HL7 v2 sender (MSH-3|MSH-4) as the requesting participant."""
    return messages.Participant(
        user_id=sender or "unknown",
        is_requestor=True,
        network_access_point=peer or None,
    )


def hl7_query(
    session: Session,
    settings: Settings,
    *,
    transaction: Code | CodedEnum,
    sender: str,
    peer: str,
    receiver: str,
    message_id: str,
    query: bytes,
    query_id: str,
    patients: Sequence[Patient],
    outcome: int,
) -> None:
    """Query (110112) answered: an HL7 v2 PIX (ITI-9) or PDQ (ITI-21) query.

    `sender` is ``MSH-3|MSH-4`` of the query, `receiver` its ``MSH-5|MSH-6``
    (SPIDERS as the sender addressed it), `query` the QPD segment as received.
    """
    destination = messages.Participant(
        user_id=receiver,
        alternative_user_id=str(os.getpid()),
        user_name=APPLICATION_NAME,
        network_access_point=settings.mllp_host,
    )
    xml = messages.patient_query(
        transaction=transaction,
        query=query,
        query_id=query_id,
        source=hl7_sender(sender, peer),
        destination=destination,
        audit_source=audit_source(settings),
        message_id=message_id or None,
        patients=[(patient_cx(p), patient_name(p)) for p in patients],
        outcome=outcome,
    )
    # One patient answered: the record is found by that patient (ITI-81).
    patient_id = patients[0].id if len(patients) == 1 else None
    outbox.record(session, xml, patient_id=patient_id)


def pix_consumer_query(
    session: Session,
    settings: Settings,
    *,
    transaction: Code | CodedEnum,
    manager: str,
    manager_host: str,
    query: bytes,
    query_id: str,
    source_cx: str,
    patient: Patient,
    outcome: int,
    sender: str | None = None,
    message_id: str | None = None,
    registration_id: str | None = None,
) -> None:
    """Query (110112) sent: SPIDERS, as PIX Consumer, asked a PIX Manager.

    `transaction` is ITI-9 or ITI-83; `manager` names the PIX Manager (its
    ``host:port`` or FHIR base), `query` is the QPD segment or the query
    string as sent, `source_cx` the identifier asked about (HL7 CX). For
    ITI-9, `sender` is ``MSH-3|MSH-4`` and `message_id` MSH-10 of the query.
    """
    consumer = us(settings, requestor=True)
    if sender:
        consumer = messages.Participant(
            user_id=sender,
            alternative_user_id=str(os.getpid()),
            user_name=APPLICATION_NAME,
            is_requestor=True,
            network_access_point=settings.mllp_host,
        )
    xml = messages.patient_query(
        transaction=transaction,
        query_id=query_id,
        query=query,
        source=consumer,
        destination=messages.Participant(
            user_id=manager, network_access_point=manager_host or None
        ),
        audit_source=audit_source(settings),
        patients=[(source_cx, patient_name(patient))],
        outcome=outcome,
        message_id=message_id,
    )
    outbox.record(session, xml, registration_id=registration_id, patient_id=patient.id)


def console_query(
    session: Session,
    settings: Settings,
    *,
    calling_ae: str,
    address: str,
    sop_class_uid: str,
    query: bytes,
) -> None:
    """Query (110112) answered: a console's C-FIND to the cache."""
    xml = messages.query(
        sop_class_uid=sop_class_uid,
        query=query,
        source=peer_ae(calling_ae, address, requestor=True),
        destination=us(settings),
        audit_source=audit_source(settings),
        transfer_syntax="1.2.840.10008.1.2",
        event_type=RAD14,
        outcome=0,
    )
    outbox.record(session, xml)


def site_query(
    session: Session,
    settings: Settings,
    *,
    site_ae: str,
    site_host: str,
    query: bytes,
    patient_cx_value: str,
    sop_class_uid: str,
    outcome: int,
    registration_id: str,
) -> None:
    """Query (110112): a C-FIND sent to a site."""
    xml = messages.query(
        sop_class_uid=sop_class_uid,
        query=query,
        source=us(settings, requestor=True),
        destination=peer_ae(site_ae, site_host),
        audit_source=audit_source(settings),
        patient_id=patient_cx_value,
        transfer_syntax="1.2.840.10008.1.2",
        event_type=RAD14,
        outcome=outcome,
    )
    outbox.record(
        session,
        xml,
        registration_id=registration_id,
        patient_id=_registration_patient(session, registration_id),
    )


def instances_transferred(
    session: Session,
    settings: Settings,
    *,
    source_ae: str,
    source_host: str,
    destination: messages.Participant,
    study_uid: str,
    sop_classes: Mapping[str, int],
    patient_id: str,
    patient_name_value: str | None,
    action: str,
    begin: bool = False,
    outcome: int = 0,
    registration_id: str | None = None,
    source: messages.Participant | None = None,
) -> None:
    """DICOM Instances Transferred (110104) or Begin Transferring (110102).

    `source`, when given, replaces the peer named by `source_ae` and
    `source_host` (SPIDERS sending to a console). Without `registration_id`,
    the transfer is attributed to the registration prefetching `study_uid`,
    if any.
    """
    xml = messages.instances_transferred(
        action=action,
        source=source or peer_ae(source_ae, source_host),
        destination=destination,
        audit_source=audit_source(settings),
        study_uid=study_uid,
        sop_classes=dict(sop_classes),
        patient_id=patient_id,
        patient_name=patient_name_value,
        event_type=RAD16,
        outcome=outcome,
        begin=begin,
    )
    if registration_id is None:
        registration_id = _prefetching(session, study_uid)
    outbox.record(
        session,
        xml,
        registration_id=registration_id,
        patient_id=_registration_patient(session, registration_id),
    )


def prefetch_begins(
    db: Database, settings: Settings, prefetch_id: str, site: Site
) -> None:
    """Begin Transferring DICOM Instances (110102): a prefetch's C-MOVE starts."""
    with db.session() as session:
        prefetch = session.get(Prefetch, prefetch_id)
        if prefetch is None:
            return
        candidate = session.get(Candidate, prefetch.candidate_id)
        registration = session.get(Registration, prefetch.registration_id)
        patient = registration.patient if registration else None
        if candidate is not None and candidate.patient_id_at_site:
            local = Identifier(site.patient_id_domain, candidate.patient_id_at_site)
            cx = to_cx(local)
        else:
            cx = patient_cx(patient) if patient is not None else "unknown"
        instances_transferred(
            session,
            settings,
            source_ae=site.ae_title,
            source_host=site.host,
            destination=us(settings, requestor=True),
            study_uid=prefetch.study_uid,
            sop_classes={},
            patient_id=cx,
            patient_name_value=patient_name(patient) if patient else None,
            action="C",
            begin=True,
            registration_id=prefetch.registration_id,
        )


def retrieve_sent(
    settings: Settings, db: Database
) -> Callable[[RetrieveSummary], None]:
    """A Q/R SCP callback recording what a console retrieved (110104, R)."""

    def write(summary: RetrieveSummary) -> None:
        destination = peer_ae(
            summary.destination_ae,
            summary.destination_host,
            requestor=summary.destination_ae == summary.requestor_ae,
        )
        with db.session() as session:
            for study in summary.studies:
                instances_transferred(
                    session,
                    settings,
                    source_ae=settings.ae_title,
                    source_host=settings.dicom_host,
                    source=us(settings),
                    destination=destination,
                    study_uid=study.study_uid,
                    sop_classes=study.sop_classes,
                    patient_id=study.patient_id or "unknown",
                    patient_name_value=study.patient_name,
                    action="R",
                    outcome=4 if summary.cancelled else 0,
                )

    return write


def audit_log_used(
    session: Session,
    settings: Settings,
    *,
    log_uri: str,
    query: bytes | None,
    user: str | None,
    address: str | None,
    outcome: int = 0,
) -> None:
    """Audit Log Used (110101): someone read the audit trail."""
    xml = security_messages.audit_log_used(
        accessor=http_client(user, address),
        server=us(settings),
        audit_source=audit_source(settings),
        log_uri=log_uri,
        query=query,
        outcome=outcome,
    )
    outbox.record(session, xml)


def security_alert(
    session: Session,
    settings: Settings,
    *,
    alert_type: Code | CodedEnum,
    subject: str,
    description: str,
    peer: messages.Participant | None = None,
    subject_type: Code | CodedEnum = ParticipantObjectIDTypeCode.URI,
) -> None:
    """Security Alert (110113): a bad token, a TLS failure, a refused peer.

    `description` is free text: no token, header or patient data.
    """
    xml = security_messages.security_alert(
        alert_type=alert_type,
        reporter=us(settings),
        audit_source=audit_source(settings),
        subject_id=subject,
        subject_id_type=subject_type,
        description=description,
        performer=peer,
    )
    outbox.record(session, xml)


def refused_association(
    settings: Settings, db: Database
) -> Callable[[RefusedCaller], None]:
    """A caller-policy callback recording a refused association (110113)."""

    def write(refused: RefusedCaller) -> None:
        with db.session() as session:
            security_alert(
                session,
                settings,
                alert_type=EventTypeCode.NODE_AUTHENTICATION,
                subject=f"{refused.calling_ae}@{refused.address}",
                subject_type=ParticipantObjectIDTypeCode.NODE_ID,
                description=f"association refused: {refused.reason}",
                peer=peer_ae(refused.calling_ae, refused.address),
            )

    return write


def user_authentication(
    session: Session,
    settings: Settings,
    *,
    user: str,
    address: str | None,
    login: bool = True,
    outcome: int = 0,
) -> None:
    """User Authentication (110114): a login or logout, 4 when refused."""
    xml = security_messages.user_authentication(
        login=login,
        user=http_client(user, address),
        node=us(settings),
        audit_source=audit_source(settings),
        outcome=outcome,
    )
    outbox.record(session, xml)


def sender(settings: Settings, db: Database) -> OutboxSender:
    """The outbox sender for the configured audit repositories.

    Raises
    ------
    ConfigurationError
        If the TLS files cannot be read or used.
    """
    destinations = []
    for repository in settings.audit_repositories:
        transport: Transport
        if repository.scheme is Scheme.TLS:
            transport = TlsTransport(
                repository.host, repository.port, _audit_tls_context(settings)
            )
        else:
            transport = UdpTransport(repository.host, repository.port)
        destinations.append(Destination(repository, transport))
    return OutboxSender(db, destinations)


def start_delivery(audit_sender: OutboxSender, stop: threading.Event) -> None:
    """Start the thread running `audit_sender` until `stop` is set.

    With no repository configured no thread starts and records stay in the
    outbox, where ITI-81 still finds them.
    """
    if not audit_sender.destinations:
        logger.info("no audit repository configured; audit records stay in the outbox")
        return
    thread = threading.Thread(
        target=audit_sender.run, args=(stop,), name="audit-sender", daemon=True
    )
    thread.start()
    logger.info(
        "audit delivery started",
        extra={"repositories": [d.repository.url for d in audit_sender.destinations]},
    )


def flush_delivery(audit_sender: OutboxSender) -> None:
    """Send what is due once more, then release the leases (at shutdown)."""
    if audit_sender.destinations:
        audit_sender.run_once()
        audit_sender.release()


def _audit_tls_context(settings: Settings) -> ssl.SSLContext:
    ca, cert, key = (
        settings.audit_tls_ca,
        settings.audit_tls_cert,
        settings.audit_tls_key,
    )
    if ca is None or cert is None or key is None:
        raise ConfigurationError(
            "a tls:// audit repository needs SPIDERS_AUDIT_TLS_CA, _CERT and _KEY"
        )
    try:
        return client_context(ca, cert, key)
    except OSError as exc:
        raise ConfigurationError(f"audit TLS files unusable: {exc}") from exc


def _registration_patient(session: Session, registration_id: str | None) -> str | None:
    if registration_id is None:
        return None
    registration = session.get(Registration, registration_id)
    return None if registration is None else registration.patient_id


def _prefetching(session: Session, study_uid: str) -> str | None:
    running = PrefetchState.RUNNING.value
    return session.scalar(
        select(Prefetch.registration_id)
        .where(Prefetch.study_uid == study_uid)
        .order_by(
            (Prefetch.state == running).desc(), Prefetch.started_at.desc().nulls_last()
        )
        .limit(1)
    )
