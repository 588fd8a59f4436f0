"""One sample message of every audit event SPIDERS builds, for schema and mapping tests.

:data:`SAMPLES` maps a name to a builder call returning the message bytes; the
C25 field case (:func:`c25_instances_transferred`) carries the non-ASCII patient
name whose bytes and characters differ in number.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

from ihe.atna import messages, security_messages
from ihe.atna.codes import EventTypeCode, ParticipantObjectIDTypeCode, RoleIDCode
from ihe.atna.messages import AuditSource, Participant

WHEN = datetime(2025, 3, 21, 14, 30, 2, 417000, tzinfo=timezone(timedelta(hours=1)))
PATIENT_ID = "4000123^^^&2.999.1.1&ISO"
PATIENT_NAME = "DESŒUVRES^Marie-Hélène"
STUDY_UID = "2.999.14.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

PACS = Participant(
    "PACS_BELLEVAL",
    alternative_user_id="AETITLES=PACS_BELLEVAL",
    network_access_point="192.0.2.10",
)
GATEWAY = Participant(
    "INTEROP_GW",
    alternative_user_id="AETITLES=INTEROP_GW",
    is_requestor=True,
    network_access_point="192.0.2.20",
)
OFFICER = Participant(
    "dr.martin", user_name="Dr Martin", network_access_point="192.0.2.30"
)
SOURCE = AuditSource("INTEROP_GW", enterprise_site_id="RCP-BELLEVAL")


def c25_instances_transferred(when: datetime = WHEN) -> bytes:
    """The C25 illustrative body: 110104 after a C-MOVE retrieve."""
    return messages.instances_transferred(
        action="C",
        source=PACS,
        destination=GATEWAY,
        audit_source=AuditSource("INTEROP_GW"),
        study_uid=STUDY_UID,
        sop_classes={CT_IMAGE: 2},
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        event_type=EventTypeCode.RAD_16,
        when=when,
    )


SAMPLES: dict[str, Callable[[], bytes]] = {
    "110100-start": lambda: messages.application_activity(
        started=True, application=GATEWAY, source=SOURCE, when=WHEN
    ),
    "110100-stop": lambda: messages.application_activity(
        started=False, application=GATEWAY, source=SOURCE, launchers=[OFFICER]
    ),
    "110101": lambda: security_messages.audit_log_used(
        accessor=OFFICER,
        server=GATEWAY,
        audit_source=SOURCE,
        log_uri="https://spiders.example/fhir/AuditEvent",
        query=b"date=ge2025-03-01&patient=Patient/p1",
        when=WHEN,
    ),
    "110101-read": lambda: security_messages.audit_log_used(
        accessor=OFFICER,
        audit_source=SOURCE,
        log_uri="https://spiders.example/fhir/AuditEvent/12",
    ),
    "110102": lambda: messages.instances_transferred(
        action="C",
        source=PACS,
        destination=GATEWAY,
        audit_source=SOURCE,
        study_uid=STUDY_UID,
        sop_classes={},
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        begin=True,
    ),
    "110104": c25_instances_transferred,
    "110105": lambda: messages.study_deleted(
        deleter=Participant("retention", user_name="SPIDERS retention"),
        audit_source=SOURCE,
        study_uid=STUDY_UID,
        sop_classes={CT_IMAGE: 120},
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        accession_numbers=["ACC-9"],
        when=WHEN,
    ),
    "110106-study": lambda: messages.export(
        source=GATEWAY,
        destination=Participant("https://repository.example/xds", is_requestor=False),
        audit_source=SOURCE,
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        study_uid=STUDY_UID,
        sop_classes={CT_IMAGE: 3},
        when=WHEN,
    ),
    "110106-iti41": lambda: messages.export(
        source=GATEWAY,
        destination=Participant("https://repository.example/xds"),
        audit_source=SOURCE,
        patient_id=PATIENT_ID,
        patient_name=None,
        submission_set_uid="2.999.41.7",
        human_requestor=OFFICER,
        event_type=EventTypeCode.ITI_41,
    ),
    "110107": lambda: messages.import_(
        source=Participant("https://ids.example/rad69"),
        destination=GATEWAY,
        audit_source=SOURCE,
        study_uid=STUDY_UID,
        sop_classes={CT_IMAGE: 12},
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        when=WHEN,
    ),
    "110110": lambda: messages.patient_record(
        action="C",
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        source=Participant("ADT|CHU", is_requestor=True),
        destination=GATEWAY,
        audit_source=SOURCE,
        event_type=EventTypeCode.ITI_8,
        message_id="MSG-1",
    ),
    "110111": lambda: messages.procedure_record(
        action="C",
        procedure_uri="Appointment/a1",
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        source=Participant("dr.martin", is_requestor=True),
        destination=GATEWAY,
        audit_source=SOURCE,
        when=WHEN,
    ),
    "110112": lambda: messages.query(
        sop_class_uid=STUDY_FIND,
        query=b"\x08\x00\x52\x00\x06\x00STUDY ",
        source=GATEWAY,
        destination=PACS,
        audit_source=SOURCE,
        patient_id=PATIENT_ID,
        transfer_syntax="1.2.840.10008.1.2",
        event_type=EventTypeCode.RAD_14,
    ),
    "110113": lambda: security_messages.security_alert(
        alert_type=EventTypeCode.NODE_AUTHENTICATION,
        reporter=GATEWAY,
        audit_source=SOURCE,
        subject_id="https://spiders.example/fhir/Patient",
        description="bearer token refused: expired",
        performer=Participant("203.0.113.9", network_access_point="203.0.113.9"),
        when=WHEN,
    ),
    "110113-node": lambda: security_messages.security_alert(
        alert_type=EventTypeCode.NODE_AUTHENTICATION,
        reporter=GATEWAY,
        audit_source=SOURCE,
        subject_id="CN=unknown.example",
        subject_id_type=ParticipantObjectIDTypeCode.NODE_ID,
    ),
    "110114-login": lambda: security_messages.user_authentication(
        login=True,
        user=Participant("dr.martin", role=RoleIDCode.APPLICATION_LAUNCHER),
        node=GATEWAY,
        audit_source=SOURCE,
        when=datetime(2025, 3, 21, 13, 0, tzinfo=UTC),
    ),
    "110114-logout-failed": lambda: security_messages.user_authentication(
        login=False, user=OFFICER, audit_source=SOURCE, outcome=4
    ),
}
