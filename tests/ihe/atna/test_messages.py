"""DICOM PS3.15 A.5 audit message builders: exact values and schema validity."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from lxml import etree

from ihe.atna import messages
from ihe.atna.codes import Code, EventID, EventTypeCode, RoleIDCode
from ihe.atna.messages import AuditSource, Participant
from tests.audit_schema import assert_valid_audit, audit_errors

WHEN = datetime(2024, 3, 5, 14, 30, 0, tzinfo=timezone(timedelta(hours=1)))
PATIENT_ID = "A1001^^^&2.999.1.1&ISO"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
# A C-FIND identifier fragment: binary, with NUL bytes, not valid UTF-8.
CFIND_IDENTIFIER = b"\x08\x00\x52\x00\x06\x00STUDY \x10\x00\x20\x00\x00\x00\xff\xfe"

SPIDERS = Participant(
    user_id="spiders",
    alternative_user_id="AETITLES=SPIDERS",
    network_access_point="192.0.2.10",
)
PACS = Participant(
    user_id="pacs.chu.example",
    alternative_user_id="AETITLES=PACS1",
    network_access_point="pacs.chu.example",
)
AUDIT_SOURCE = AuditSource("spiders", enterprise_site_id="RCP-ONCO-1")


def parse(xml: bytes) -> Any:
    return etree.fromstring(xml)


def coded(element: Any) -> tuple[str, str, str]:
    return (
        element.get("csd-code"),
        element.get("codeSystemName"),
        element.get("originalText"),
    )


def participant(root: Any, user_id: str) -> Any:
    (element,) = root.xpath("ActiveParticipant[@UserID=$uid]", uid=user_id)
    return element


def roles(element: Any) -> list[tuple[str, str, str]]:
    return [coded(role) for role in element.findall("RoleIDCode")]


def objects(root: Any) -> list[Any]:
    return list(root.findall("ParticipantObjectIdentification"))


def build_application_activity() -> bytes:
    return messages.application_activity(
        started=True, application=SPIDERS, source=AUDIT_SOURCE, when=WHEN
    )


def build_patient_record() -> bytes:
    return messages.patient_record(
        action="U",
        patient_id=PATIENT_ID,
        patient_name="DUPONT^MARIE",
        source=Participant("ADT|CHU", network_access_point="adt.chu.example"),
        destination=Participant("SPIDERS|RCP"),
        audit_source=AUDIT_SOURCE,
        event_type=EventTypeCode.ITI_8,
        message_id="MSG-0001",
        when=WHEN,
    )


def build_query() -> bytes:
    return messages.query(
        sop_class_uid=STUDY_FIND,
        query=CFIND_IDENTIFIER,
        source=Participant("spiders", "AETITLES=SPIDERS", is_requestor=True),
        destination=PACS,
        audit_source=AUDIT_SOURCE,
        patient_id=PATIENT_ID,
        patient_name="DUPONT^MARIE",
        transfer_syntax=EXPLICIT_LE,
        event_type=EventTypeCode.RAD_14,
        when=WHEN,
    )


def build_instances_transferred() -> bytes:
    return messages.instances_transferred(
        action="C",
        source=PACS,
        destination=SPIDERS,
        audit_source=AUDIT_SOURCE,
        study_uid=STUDY_UID,
        sop_classes={CT_IMAGE: 120, MR_IMAGE: 3},
        patient_id=PATIENT_ID,
        patient_name="DUPONT^MARIE",
        accession_numbers=("ACC-1", "", "ACC-2"),
        event_type=EventTypeCode.RAD_16,
        when=WHEN,
    )


def build_begin_transferring() -> bytes:
    return messages.instances_transferred(
        action="C",
        source=PACS,
        destination=SPIDERS,
        audit_source=AUDIT_SOURCE,
        study_uid=STUDY_UID,
        sop_classes={},
        patient_id=PATIENT_ID,
        patient_name=None,
        begin=True,
    )


BUILDERS: dict[str, Callable[[], bytes]] = {
    "application_activity": build_application_activity,
    "patient_record": build_patient_record,
    "query": build_query,
    "instances_transferred": build_instances_transferred,
    "begin_transferring": build_begin_transferring,
}


@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
def test_builder_any_event_validates_against_schema(
    build: Callable[[], bytes],
) -> None:
    assert_valid_audit(build())


@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
def test_builder_any_event_is_utf8_with_declaration_and_no_bom(
    build: Callable[[], bytes],
) -> None:
    xml = build()

    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<AuditMessage>')
    assert not xml.startswith(b"\xef\xbb\xbf")
    xml.decode("utf-8")


@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
def test_builder_any_event_has_one_source_of_type_4(
    build: Callable[[], bytes],
) -> None:
    root = parse(build())

    (source,) = root.findall("AuditSourceIdentification")
    assert source.get("AuditSourceID") == "spiders"
    assert source.get("AuditEnterpriseSiteID") == "RCP-ONCO-1"
    assert coded(source.find("AuditSourceTypeCode")) == (
        "4",
        "DCM",
        "Application server process tier in a multi-tier system",
    )


def test_application_activity_start_has_event_and_role_codes() -> None:
    root = parse(build_application_activity())

    event = root.find("EventIdentification")
    assert event.get("EventActionCode") == "E"
    assert event.get("EventOutcomeIndicator") == "0"
    assert coded(event.find("EventID")) == ("110100", "DCM", "Application Activity")
    assert [coded(e) for e in event.findall("EventTypeCode")] == [
        ("110120", "DCM", "Application Start")
    ]
    app = participant(root, "spiders")
    assert app.get("UserIsRequestor") == "false"
    assert app.get("AlternativeUserID") == "AETITLES=SPIDERS"
    assert roles(app) == [("110150", "DCM", "Application")]
    assert objects(root) == []


def test_application_activity_stop_with_launcher_has_110121_and_110151() -> None:
    xml = messages.application_activity(
        started=False,
        application=SPIDERS,
        source=AUDIT_SOURCE,
        launchers=[Participant("systemd", user_name="init", is_requestor=True)],
        when=WHEN,
    )
    root = parse(xml)

    assert_valid_audit(xml)
    assert coded(root.find("EventIdentification/EventTypeCode")) == (
        "110121",
        "DCM",
        "Application Stop",
    )
    launcher = participant(root, "systemd")
    assert launcher.get("UserIsRequestor") == "true"
    assert launcher.get("UserName") == "init"
    assert roles(launcher) == [("110151", "DCM", "Application Launcher")]


def test_patient_record_update_has_roles_patient_and_msh10() -> None:
    root = parse(build_patient_record())

    event = root.find("EventIdentification")
    assert event.get("EventActionCode") == "U"
    assert coded(event.find("EventID")) == ("110110", "DCM", "Patient Record")
    assert coded(event.find("EventTypeCode")) == (
        "ITI-8",
        "IHE Transactions",
        "Patient Identity Feed",
    )
    assert roles(participant(root, "ADT|CHU")) == [("110153", "DCM", "Source Role ID")]
    assert roles(participant(root, "SPIDERS|RCP")) == [
        ("110152", "DCM", "Destination Role ID")
    ]
    (patient,) = objects(root)
    assert patient.get("ParticipantObjectID") == PATIENT_ID
    assert patient.get("ParticipantObjectTypeCode") == "1"
    assert patient.get("ParticipantObjectTypeCodeRole") == "1"
    assert coded(patient.find("ParticipantObjectIDTypeCode")) == (
        "2",
        "RFC-3881",
        "Patient Number",
    )
    assert patient.findtext("ParticipantObjectName") == "DUPONT^MARIE"
    (detail,) = patient.findall("ParticipantObjectDetail")
    assert detail.get("type") == "MSH-10"
    assert base64.b64decode(detail.get("value")) == b"MSG-0001"


@pytest.mark.parametrize("action", ["C", "R", "U", "D"])
def test_patient_record_without_name_uses_patient_id_and_validates(
    action: str,
) -> None:
    xml = messages.patient_record(
        action=action,
        patient_id=PATIENT_ID,
        patient_name=None,
        source=Participant("ADT|CHU"),
        destination=Participant("SPIDERS|RCP"),
        audit_source=AUDIT_SOURCE,
    )
    root = parse(xml)

    assert_valid_audit(xml)
    assert root.find("EventIdentification").get("EventActionCode") == action
    assert root.findtext(".//ParticipantObjectName") == PATIENT_ID
    assert root.find(".//ParticipantObjectDetail") is None
    assert root.find("EventIdentification/EventTypeCode") is None


@pytest.mark.parametrize("action", ["E", "X", ""])
def test_patient_record_other_action_raises_value_error(action: str) -> None:
    with pytest.raises(ValueError, match="EventActionCode"):
        messages.patient_record(
            action=action,
            patient_id=PATIENT_ID,
            patient_name=None,
            source=Participant("ADT|CHU"),
            destination=Participant("SPIDERS|RCP"),
            audit_source=AUDIT_SOURCE,
        )


def test_patient_record_empty_patient_id_raises_value_error() -> None:
    with pytest.raises(ValueError, match="patient_id"):
        messages.patient_record(
            action="C",
            patient_id="",
            patient_name="DUPONT^MARIE",
            source=Participant("ADT|CHU"),
            destination=Participant("SPIDERS|RCP"),
            audit_source=AUDIT_SOURCE,
        )


def test_query_cfind_query_object_round_trips_identifier() -> None:
    root = parse(build_query())

    event = root.find("EventIdentification")
    assert event.get("EventActionCode") == "E"
    assert coded(event.find("EventID")) == ("110112", "DCM", "Query")
    assert coded(event.find("EventTypeCode")) == (
        "RAD-14",
        "IHE Transactions",
        "Query Images",
    )
    requestor = participant(root, "spiders")
    assert requestor.get("UserIsRequestor") == "true"
    assert roles(requestor) == [("110153", "DCM", "Source Role ID")]
    assert roles(participant(root, PACS.user_id)) == [
        ("110152", "DCM", "Destination Role ID")
    ]
    query_object, patient = objects(root)
    assert query_object.get("ParticipantObjectID") == STUDY_FIND
    assert query_object.get("ParticipantObjectTypeCode") == "2"
    assert query_object.get("ParticipantObjectTypeCodeRole") == "3"
    assert coded(query_object.find("ParticipantObjectIDTypeCode")) == (
        "110181",
        "DCM",
        "SOP Class UID",
    )
    assert query_object.find("ParticipantObjectName") is None
    query_text = query_object.findtext("ParticipantObjectQuery")
    assert base64.b64decode(query_text, validate=True) == CFIND_IDENTIFIER
    (detail,) = query_object.findall("ParticipantObjectDetail")
    assert detail.get("type") == "TransferSyntax"
    assert base64.b64decode(detail.get("value")) == EXPLICIT_LE.encode()
    assert patient.get("ParticipantObjectID") == PATIENT_ID
    assert patient.findtext("ParticipantObjectName") == "DUPONT^MARIE"


def test_query_without_patient_has_only_query_object() -> None:
    xml = messages.query(
        sop_class_uid=STUDY_FIND,
        query=b"",
        source=SPIDERS,
        destination=PACS,
        audit_source=AUDIT_SOURCE,
        patient_name="IGNORED^WITHOUT^ID",
    )
    root = parse(xml)

    assert_valid_audit(xml)
    (query_object,) = objects(root)
    assert query_object.findtext("ParticipantObjectQuery") in ("", None)
    assert query_object.find("ParticipantObjectDetail") is None
    assert root.find("EventIdentification/EventTypeCode") is None


def test_instances_transferred_create_describes_study_and_patient() -> None:
    root = parse(build_instances_transferred())

    event = root.find("EventIdentification")
    assert event.get("EventActionCode") == "C"
    assert coded(event.find("EventID")) == (
        "110104",
        "DCM",
        "DICOM Instances Transferred",
    )
    assert coded(event.find("EventTypeCode")) == (
        "RAD-16",
        "IHE Transactions",
        "Retrieve Images",
    )
    assert roles(participant(root, PACS.user_id)) == [
        ("110153", "DCM", "Source Role ID")
    ]
    assert roles(participant(root, "spiders")) == [
        ("110152", "DCM", "Destination Role ID")
    ]
    study, patient = objects(root)
    assert study.get("ParticipantObjectID") == STUDY_UID
    assert study.get("ParticipantObjectTypeCode") == "2"
    assert study.get("ParticipantObjectTypeCodeRole") == "3"
    assert coded(study.find("ParticipantObjectIDTypeCode")) == (
        "110180",
        "DCM",
        "Study Instance UID",
    )
    assert study.findtext("ParticipantObjectName") == STUDY_UID
    (description,) = study.findall("ParticipantObjectDescription")
    assert [a.get("Number") for a in description.findall("Accession")] == [
        "ACC-1",
        "ACC-2",
    ]
    assert [
        (c.get("UID"), c.get("NumberOfInstances"))
        for c in description.findall("SOPClass")
    ] == [(CT_IMAGE, "120"), (MR_IMAGE, "3")]
    assert patient.get("ParticipantObjectTypeCode") == "1"
    assert patient.get("ParticipantObjectTypeCodeRole") == "1"
    assert coded(patient.find("ParticipantObjectIDTypeCode")) == (
        "2",
        "RFC-3881",
        "Patient Number",
    )


def test_instances_transferred_begin_is_110102_execute_without_description() -> None:
    root = parse(build_begin_transferring())

    event = root.find("EventIdentification")
    assert event.get("EventActionCode") == "E"
    assert coded(event.find("EventID")) == (
        "110102",
        "DCM",
        "Begin Transferring DICOM Instances",
    )
    study, patient = objects(root)
    assert study.find("ParticipantObjectDescription") is None
    assert patient.findtext("ParticipantObjectName") == PATIENT_ID


@pytest.mark.parametrize("action", ["R", "U"])
def test_instances_transferred_read_or_update_keeps_action(action: str) -> None:
    xml = messages.instances_transferred(
        action=action,
        source=PACS,
        destination=SPIDERS,
        audit_source=AUDIT_SOURCE,
        study_uid=STUDY_UID,
        sop_classes={CT_IMAGE: 1},
        patient_id=PATIENT_ID,
        patient_name=None,
    )

    assert_valid_audit(xml)
    assert parse(xml).find("EventIdentification").get("EventActionCode") == action


@pytest.mark.parametrize(
    ("action", "sop_classes", "match"),
    [
        ("D", {CT_IMAGE: 1}, "EventActionCode"),
        ("E", {CT_IMAGE: 1}, "EventActionCode"),
        ("C", {CT_IMAGE: -1}, "negative instance count"),
    ],
)
def test_instances_transferred_bad_input_raises_value_error(
    action: str, sop_classes: dict[str, int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        messages.instances_transferred(
            action=action,
            source=PACS,
            destination=SPIDERS,
            audit_source=AUDIT_SOURCE,
            study_uid=STUDY_UID,
            sop_classes=sop_classes,
            patient_id=PATIENT_ID,
            patient_name=None,
        )


def test_event_time_given_offset_is_written_with_offset() -> None:
    root = parse(build_application_activity())

    assert (
        root.find("EventIdentification").get("EventDateTime")
        == "2024-03-05T14:30:00.000+01:00"
    )


def test_event_time_omitted_is_now_in_utc_with_offset() -> None:
    before = datetime.now(UTC)
    root = parse(
        messages.application_activity(
            started=True, application=SPIDERS, source=AUDIT_SOURCE
        )
    )
    after = datetime.now(UTC)

    written = root.find("EventIdentification").get("EventDateTime")
    assert written.endswith("+00:00")
    moment = datetime.fromisoformat(written)
    assert before - timedelta(milliseconds=1) <= moment <= after


def test_event_time_naive_raises_value_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        messages.application_activity(
            started=True,
            application=SPIDERS,
            source=AUDIT_SOURCE,
            when=datetime(2024, 3, 5, 14, 30),  # naive on purpose
        )


@pytest.mark.parametrize("outcome", [0, 4, 8, 12])
def test_outcome_standard_value_is_written(outcome: int) -> None:
    xml = messages.application_activity(
        started=True, application=SPIDERS, source=AUDIT_SOURCE, outcome=outcome
    )

    assert_valid_audit(xml)
    event = parse(xml).find("EventIdentification")
    assert event.get("EventOutcomeIndicator") == str(outcome)


@pytest.mark.parametrize("outcome", [1, 5, -1, 16])
def test_outcome_other_value_raises_value_error(outcome: int) -> None:
    with pytest.raises(ValueError):
        messages.application_activity(
            started=True, application=SPIDERS, source=AUDIT_SOURCE, outcome=outcome
        )


@pytest.mark.parametrize(
    ("host", "type_code"),
    [
        ("192.0.2.10", "2"),
        ("2001:db8::1", "2"),
        ("pacs.chu.example", "1"),
        ("PACS01", "1"),
    ],
)
def test_participant_network_access_point_type_follows_address(
    host: str, type_code: str
) -> None:
    xml = messages.application_activity(
        started=True,
        application=Participant("spiders", network_access_point=host),
        source=AUDIT_SOURCE,
    )
    app = participant(parse(xml), "spiders")

    assert_valid_audit(xml)
    assert app.get("NetworkAccessPointID") == host
    assert app.get("NetworkAccessPointTypeCode") == type_code


def test_participant_without_access_point_omits_both_attributes() -> None:
    xml = messages.patient_record(
        action="C",
        patient_id=PATIENT_ID,
        patient_name=None,
        source=Participant("ADT|CHU"),
        destination=Participant("SPIDERS|RCP"),
        audit_source=AuditSource("spiders"),
    )
    root = parse(xml)

    destination = participant(root, "SPIDERS|RCP")
    assert destination.get("NetworkAccessPointID") is None
    assert destination.get("NetworkAccessPointTypeCode") is None
    assert root.find("AuditSourceIdentification").get("AuditEnterpriseSiteID") is None


def test_participant_own_role_is_written_after_event_role() -> None:
    viewer = Code("110151", "DCM", "Application Launcher")
    xml = messages.query(
        sop_class_uid=STUDY_FIND,
        query=b"q",
        source=Participant("spiders", is_requestor=True, role=viewer),
        destination=Participant("pacs", role=RoleIDCode.DESTINATION),
        audit_source=AUDIT_SOURCE,
    )
    root = parse(xml)

    assert_valid_audit(xml)
    assert roles(participant(root, "spiders")) == [
        ("110153", "DCM", "Source Role ID"),
        ("110151", "DCM", "Application Launcher"),
    ]
    assert roles(participant(root, "pacs")) == [
        ("110152", "DCM", "Destination Role ID")
    ]


def test_builder_non_ascii_name_is_written_as_utf8() -> None:
    xml = messages.patient_record(
        action="C",
        patient_id=PATIENT_ID,
        patient_name="LEFÈVRE^HÉLÈNE",
        source=Participant("ADT|CHU"),
        destination=Participant("SPIDERS|RCP"),
        audit_source=AUDIT_SOURCE,
    )

    assert_valid_audit(xml)
    assert "LEFÈVRE^HÉLÈNE".encode() in xml


def test_builder_xml_special_characters_are_escaped() -> None:
    xml = messages.patient_record(
        action="C",
        patient_id=PATIENT_ID,
        patient_name='<O"BRIEN> & SONS',
        source=Participant("ADT|CHU"),
        destination=Participant("SPIDERS|RCP"),
        audit_source=AUDIT_SOURCE,
    )

    assert_valid_audit(xml)
    assert b"&amp;2.999.1.1&amp;ISO" in xml
    assert parse(xml).findtext(".//ParticipantObjectName") == '<O"BRIEN> & SONS'


def test_coded_enum_member_code_matches_standard_triplet() -> None:
    assert EventTypeCode.RAD_14.code == Code(
        "RAD-14", "IHE Transactions", "Query Images"
    )
    assert EventID("110112") is EventID.QUERY
    assert str(EventID.QUERY) == "110112"
    assert RoleIDCode.SOURCE.code == Code("110153", "DCM", "Source Role ID")


def _without(xml: bytes, path: str) -> bytes:
    root = parse(xml)
    element = root.find(path)
    element.getparent().remove(element)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _with_attribute(xml: bytes, path: str, name: str, value: str) -> bytes:
    root = parse(xml)
    root.find(path).set(name, value)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


BROKEN: dict[str, Callable[[], bytes]] = {
    "patient_without_name": lambda: _without(
        build_patient_record(),
        "ParticipantObjectIdentification/ParticipantObjectName",
    ),
    "query_without_query": lambda: _without(
        build_query(), "ParticipantObjectIdentification/ParticipantObjectQuery"
    ),
    "no_audit_source": lambda: _without(
        build_application_activity(), "AuditSourceIdentification"
    ),
    "outcome_5": lambda: _with_attribute(
        build_application_activity(),
        "EventIdentification",
        "EventOutcomeIndicator",
        "5",
    ),
    "date_only": lambda: _with_attribute(
        build_application_activity(),
        "EventIdentification",
        "EventDateTime",
        "2024-03-05",
    ),
    "rfc3881_code_attribute": lambda: build_application_activity().replace(
        b'csd-code="110100"', b'code="110100"'
    ),
}


@pytest.mark.parametrize("build", BROKEN.values(), ids=BROKEN.keys())
def test_assert_valid_audit_broken_message_fails(build: Callable[[], bytes]) -> None:
    xml = build()

    assert audit_errors(xml)
    with pytest.raises(AssertionError, match="audit message invalid"):
        assert_valid_audit(xml)
