"""DICOM audit message to FHIR R4 AuditEvent: every event valid, values exact."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from mappings.fhir_audit_event import (
    DCM_SYSTEM,
    ENTITY_TYPE_SYSTEM,
    IHE_EVENT_TYPE_SYSTEM,
    OBJECT_ROLE_SYSTEM,
    to_audit_event,
)
from tests.audit_samples import PATIENT_ID, PATIENT_NAME, SAMPLES, STUDY_UID
from tests.fhir_schema import assert_valid_fhir


def entity(event: dict[str, Any], role: str) -> dict[str, Any]:
    (found,) = [e for e in event["entity"] if e["role"]["code"] == role]
    return found


@pytest.mark.parametrize("name", SAMPLES.keys())
def test_every_event_maps_to_valid_r4_audit_event(name: str) -> None:
    event = to_audit_event(SAMPLES[name](), resource_id="42", patient_id="p1")

    assert_valid_fhir(event)
    assert event["type"]["system"] == DCM_SYSTEM
    assert event["type"]["code"] == name[:6]


def test_transfer_maps_type_subtype_action_outcome_time() -> None:
    event = to_audit_event(SAMPLES["110104"](), resource_id="7")

    assert event["id"] == "7"
    assert event["type"] == {
        "system": DCM_SYSTEM,
        "code": "110104",
        "display": "DICOM Instances Transferred",
    }
    assert event["subtype"] == [
        {
            "system": IHE_EVENT_TYPE_SYSTEM,
            "code": "RAD-16",
            "display": "Retrieve Images",
        }
    ]
    assert (event["action"], event["outcome"]) == ("C", "0")
    assert event["recorded"] == "2025-03-21T14:30:02.417+01:00"


def test_agents_keep_roles_requestor_and_network() -> None:
    event = to_audit_event(SAMPLES["110104"](), resource_id="7")

    source, destination = event["agent"]
    assert source["type"]["coding"][0]["code"] == "110153"
    assert source["who"]["identifier"]["value"] == "PACS_BELLEVAL"
    assert source["altId"] == "AETITLES=PACS_BELLEVAL"
    assert source["requestor"] is False
    assert source["network"] == {"address": "192.0.2.10", "type": "2"}
    assert destination["type"]["coding"][0]["code"] == "110152"
    assert destination["requestor"] is True


def test_patient_entity_reference_when_known_identifier_always() -> None:
    known = to_audit_event(SAMPLES["110104"](), resource_id="7", patient_id="p9")
    unknown = to_audit_event(SAMPLES["110104"](), resource_id="7")

    patient = entity(known, "1")
    assert patient["what"] == {
        "reference": "Patient/p9",
        "identifier": {
            "value": PATIENT_ID,
            "type": {
                "coding": [{"code": "2", "display": "Patient Number"}],
                "text": "Patient Number",
            },
        },
    }
    assert patient["type"] == {"system": ENTITY_TYPE_SYSTEM, "code": "1"}
    assert patient["role"] == {"system": OBJECT_ROLE_SYSTEM, "code": "1"}
    assert patient["name"] == PATIENT_NAME
    assert "reference" not in entity(unknown, "1")["what"]


def test_study_entity_identifier_and_description() -> None:
    event = to_audit_event(SAMPLES["110105"](), resource_id="1")

    study = entity(event, "3")
    assert study["what"]["identifier"]["value"] == STUDY_UID
    assert study["what"]["identifier"]["type"]["coding"][0] == {
        "system": DCM_SYSTEM,
        "code": "110180",
        "display": "Study Instance UID",
    }
    assert study["description"] == (
        "accession ACC-9; SOP class 1.2.840.10008.5.1.4.1.1.2: 120 instance(s)"
    )


def test_query_entity_carries_base64_query_and_details() -> None:
    event = to_audit_event(SAMPLES["110112"](), resource_id="1")

    query = entity(event, "3")
    assert base64.b64decode(query["query"]) == b"\x08\x00\x52\x00\x06\x00STUDY "
    assert "name" not in query
    assert query["detail"] == [
        {
            "type": "TransferSyntax",
            "valueBase64Binary": base64.b64encode(b"1.2.840.10008.1.2").decode(),
        }
    ]


def test_registration_object_refers_to_the_appointment() -> None:
    event = to_audit_event(SAMPLES["110111"](), resource_id="1")

    assert entity(event, "18")["what"]["reference"] == "Appointment/a1"


def test_source_observer_site_and_type() -> None:
    event = to_audit_event(SAMPLES["110113"](), resource_id="1")

    assert event["source"]["observer"]["identifier"]["value"] == "INTEROP_GW"
    assert event["source"]["site"] == "RCP-BELLEVAL"
    assert event["source"]["type"][0]["code"] == "4"


XXE = (
    b'<?xml version="1.0"?><!DOCTYPE AuditMessage '
    b'[<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<AuditMessage><EventIdentification EventActionCode="E" '
    b'EventDateTime="2025-03-21T10:00:00Z" EventOutcomeIndicator="0">'
    b'<EventID csd-code="110100" codeSystemName="DCM" originalText="A"/>'
    b"<EventOutcomeDescription>&x;</EventOutcomeDescription>"
    b"</EventIdentification></AuditMessage>"
)


def test_external_entity_in_text_not_resolved() -> None:
    event = to_audit_event(XXE, resource_id="1")

    assert "root:" not in str(event)
    assert event["type"]["code"] == "110100"


def test_external_entity_in_attribute_refused() -> None:
    xml = XXE.replace(b'originalText="A"', b'originalText="&x;"')

    with pytest.raises(ValueError, match="well-formed"):
        to_audit_event(xml, resource_id="1")


def test_not_an_audit_message_refused() -> None:
    with pytest.raises(ValueError, match="AuditMessage"):
        to_audit_event(b"<Other/>", resource_id="1")
