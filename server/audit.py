"""Audit events of SPIDERS' own actions, written to the outbox.

Each function builds the DICOM PS3.15 message for one action and adds it to
the caller's session, so the audit record is committed with the action it
describes (or not at all).

Limitations
-----------
Records stay in the outbox: delivery to a syslog audit repository and the
FHIR AuditEvent view are not implemented yet. Requests over HTTP are
attributed to the calling address; user identities come with authentication.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from sqlalchemy.orm import Session

from ihe.atna import messages, outbox
from ihe.atna.codes import Code
from mappings.identifiers import Identifier, to_cx
from server.config import Settings
from server.models import Patient

RAD14 = Code("RAD-14", "IHE Transactions", "Query Images")
RAD16 = Code("RAD-16", "IHE Transactions", "Retrieve Images")
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


def patient_cx(patient: Patient) -> str:
    """The patient's first identifier as an HL7 CX, for audit objects."""
    ident = patient.identifiers[0]
    return to_cx(Identifier(ident.system, ident.value, ident.type_code))


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
    outbox.record(session, xml, registration_id=registration_id)


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
) -> None:
    """DICOM Instances Transferred (110104) or Begin Transferring (110102)."""
    xml = messages.instances_transferred(
        action=action,
        source=peer_ae(source_ae, source_host),
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
    outbox.record(session, xml, registration_id=registration_id)
