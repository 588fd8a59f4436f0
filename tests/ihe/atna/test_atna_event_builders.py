"""Builders of every PS3.15 A.5.3 event: schema validity and exact values."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from lxml import etree

from ihe.atna import messages, security_messages
from ihe.atna.codes import EventTypeCode
from ihe.atna.messages import Participant
from tests.audit_samples import (
    GATEWAY,
    OFFICER,
    PATIENT_ID,
    SAMPLES,
    SOURCE,
    STUDY_UID,
)
from tests.audit_schema import assert_valid_audit

EXPECTED_EVENTS = {
    "110100",
    "110101",
    "110102",
    "110104",
    "110105",
    "110106",
    "110107",
    "110110",
    "110111",
    "110112",
    "110113",
    "110114",
}


def parse(xml: bytes) -> Any:
    return etree.fromstring(xml)


def event(root: Any) -> tuple[str, str, str]:
    ident = root.find("EventIdentification")
    return (
        ident.find("EventID").get("csd-code"),
        ident.get("EventActionCode"),
        ident.get("EventOutcomeIndicator"),
    )


def event_type(root: Any) -> tuple[str, str, str] | None:
    code = root.find("EventIdentification/EventTypeCode")
    if code is None:
        return None
    return code.get("csd-code"), code.get("codeSystemName"), code.get("originalText")


def objects(root: Any) -> list[tuple[str, str, str, str]]:
    return [
        (
            obj.get("ParticipantObjectID"),
            obj.get("ParticipantObjectTypeCode"),
            obj.get("ParticipantObjectTypeCodeRole"),
            obj.find("ParticipantObjectIDTypeCode").get("csd-code"),
        )
        for obj in root.iterfind("ParticipantObjectIdentification")
    ]


def requestors(root: Any) -> list[str]:
    return [
        p.get("UserID")
        for p in root.iterfind("ActiveParticipant")
        if p.get("UserIsRequestor") == "true"
    ]


@pytest.mark.parametrize("name", SAMPLES.keys())
def test_sample_message_valid_against_dicom_schema(name: str) -> None:
    xml = SAMPLES[name]()

    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert not xml.startswith(b"\xef\xbb\xbf")
    assert_valid_audit(xml)


def test_samples_cover_every_event_spiders_declares() -> None:
    events = {event(parse(build()))[0] for build in SAMPLES.values()}

    assert events == EXPECTED_EVENTS


def test_audit_log_used_read_with_query_object() -> None:
    root = parse(SAMPLES["110101"]())

    assert event(root) == ("110101", "R", "0")
    assert event_type(root) == (
        "ITI-81",
        "IHE Transactions",
        "Retrieve ATNA Audit Event",
    )
    assert requestors(root) == ["dr.martin"]
    log, query = root.findall("ParticipantObjectIdentification")
    assert (
        log.get("ParticipantObjectTypeCodeRole"),
        log.findtext("ParticipantObjectName"),
    ) == (
        "13",
        "Security Audit Log",
    )
    assert query.get("ParticipantObjectTypeCodeRole") == "24"
    assert base64.b64decode(query.findtext("ParticipantObjectQuery")) == (
        b"date=ge2025-03-01&patient=Patient/p1"
    )


def test_audit_log_used_without_query_has_log_object_only() -> None:
    root = parse(SAMPLES["110101-read"]())

    assert objects(root) == [
        ("https://spiders.example/fhir/AuditEvent/12", "2", "13", "12")
    ]


def test_security_alert_carries_type_subject_and_description() -> None:
    root = parse(SAMPLES["110113"]())

    assert event(root) == ("110113", "E", "4")
    assert event_type(root) == ("110126", "DCM", "Node Authentication")
    assert requestors(root) == ["INTEROP_GW"]
    (subject,) = root.findall("ParticipantObjectIdentification")
    detail = subject.find("ParticipantObjectDetail")
    assert detail.get("type") == "Alert Description"
    assert base64.b64decode(detail.get("value")) == b"bearer token refused: expired"


def test_security_alert_empty_subject_refused() -> None:
    with pytest.raises(ValueError, match="subject"):
        security_messages.security_alert(
            alert_type=EventTypeCode.NODE_AUTHENTICATION,
            reporter=GATEWAY,
            audit_source=SOURCE,
            subject_id="",
        )


@pytest.mark.parametrize(
    ("name", "code", "outcome"),
    [("110114-login", "110122", "0"), ("110114-logout-failed", "110123", "4")],
)
def test_user_authentication_login_logout_no_objects(
    name: str, code: str, outcome: str
) -> None:
    root = parse(SAMPLES[name]())

    assert event(root) == ("110114", "E", outcome)
    assert event_type(root)[0] == code  # type: ignore[index]
    assert requestors(root) == [root.find("ActiveParticipant").get("UserID")]
    assert objects(root) == []


def test_study_deleted_action_d_study_then_patient() -> None:
    root = parse(SAMPLES["110105"]())

    assert event(root) == ("110105", "D", "0")
    assert requestors(root) == ["retention"]
    assert objects(root) == [
        (STUDY_UID, "2", "3", "110180"),
        (PATIENT_ID, "1", "1", "2"),
    ]
    sop = root.find(
        "ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass"
    )
    assert sop.get("NumberOfInstances") == "120"


def test_export_study_action_r_roles_source_destination() -> None:
    root = parse(SAMPLES["110106-study"]())

    assert event(root) == ("110106", "R", "0")
    roles = [
        (p.get("UserID"), p.find("RoleIDCode").get("csd-code"))
        for p in root.iterfind("ActiveParticipant")
    ]
    assert roles == [
        ("INTEROP_GW", "110153"),
        ("https://repository.example/xds", "110152"),
    ]


def test_export_iti41_submission_set_and_human_requestor() -> None:
    root = parse(SAMPLES["110106-iti41"]())

    assert event_type(root)[0] == "ITI-41"  # type: ignore[index]
    assert "dr.martin" in requestors(root)
    assert objects(root)[-1] == (
        "2.999.41.7",
        "2",
        "20",
        "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd",
    )


def test_export_without_study_or_submission_set_refused() -> None:
    with pytest.raises(ValueError, match="study or a submission set"):
        messages.export(
            source=GATEWAY,
            destination=OFFICER,
            audit_source=SOURCE,
            patient_id=PATIENT_ID,
            patient_name=None,
        )


def test_import_action_c_rad69() -> None:
    root = parse(SAMPLES["110107"]())

    assert event(root) == ("110107", "C", "0")
    assert event_type(root)[0] == "RAD-69"  # type: ignore[index]
    assert [o[3] for o in objects(root)] == ["110180", "2"]


def test_procedure_record_registration_as_schedule_object() -> None:
    root = parse(SAMPLES["110111"]())

    assert event(root) == ("110111", "C", "0")
    assert objects(root) == [
        (PATIENT_ID, "1", "1", "2"),
        ("Appointment/a1", "2", "18", "12"),
    ]


def test_procedure_record_unknown_action_refused() -> None:
    with pytest.raises(ValueError, match="EventActionCode"):
        messages.procedure_record(
            action="E",
            procedure_uri="Appointment/a1",
            patient_id=PATIENT_ID,
            patient_name=None,
            source=Participant("x"),
            destination=GATEWAY,
            audit_source=SOURCE,
        )
