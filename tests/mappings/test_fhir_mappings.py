"""FHIR Patient and Appointment mappings, including field cases C20a, C21, C22."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mappings.fhir_appointment import parse_appointment
from mappings.fhir_patient import parse_patient, to_dicom_patient, to_pid_fields
from mappings.identifiers import INS_NIR, Identifier, system_to_authority, to_cx
from server.errors import InvalidResource
from tests.conftest import load_json

C20A = "fhir/C20a-appointment-instant-without-timezone-dst-day.json"
C21 = "fhir/C21-appointment-noshow-with-cancelation-reason.json"
C22 = "fhir/C22-patient-primitive-extensions-without-value.json"


def booked() -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "status": "booked",
        "start": "2025-04-02T14:30:00+02:00",
        "end": "2025-04-02T16:30:00+02:00",
        "participant": [
            {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
            {
                "actor": {"reference": "Location/rcp-1", "display": "RCP"},
                "status": "accepted",
            },
        ],
    }


def test_parse_patient_c22_masked_birth_date_maps_to_empty_values() -> None:
    record = parse_patient(load_json(C22))
    assert record.birth_date is None
    assert record.family == "FAURE"
    assert record.given == ("Hélène",)
    pid = to_pid_fields(record)
    assert pid["PID-7"] == ""
    assert pid["PID-5"] == "FAURE^Hélène"
    assert (
        pid["PID-3"].split("~")[0] == "279089912300175^^^&1.2.250.1.213.1.4.8&ISO^INS"
    )
    ds = to_dicom_patient(record, primary_authority="2.999.1.1")
    assert ds.PatientBirthDate == ""
    assert ds["PatientBirthDate"].is_empty
    assert ds.PatientID == "40000148"
    other = ds.OtherPatientIDsSequence[0]
    assert other.PatientID == "279089912300175"
    qualifier = other.IssuerOfPatientIDQualifiersSequence[0]
    assert qualifier.UniversalEntityID == INS_NIR
    assert qualifier.UniversalEntityIDType == "ISO"


def test_parse_patient_without_identifier_is_refused() -> None:
    body = {"resourceType": "Patient", "name": [{"family": "X"}]}
    with pytest.raises(InvalidResource) as caught:
        parse_patient(body)
    assert caught.value.issues[0][0] == "Patient.identifier"


def test_parse_patient_unknown_element_is_refused_with_its_path() -> None:
    body = load_json(C22)
    body["favouriteColour"] = "blue"
    with pytest.raises(InvalidResource) as caught:
        parse_patient(body)
    assert ("Patient.favouriteColour", "Extra inputs are not permitted") in (
        caught.value.issues
    )


def test_identifier_urn_oid_system_maps_to_hl7_universal_id() -> None:
    assert system_to_authority("urn:oid:1.2.250.1.213.1.4.8") == INS_NIR
    assert system_to_authority("https://example.org/ids") == "https://example.org/ids"
    assert (
        to_cx(Identifier("2.999.1.1", "A1", "PI", "CHU")) == "A1^^^CHU&2.999.1.1&ISO^PI"
    )


def test_parse_appointment_c20a_instants_without_zone_refused_on_start_and_end() -> (
    None
):
    with pytest.raises(InvalidResource) as caught:
        parse_appointment(load_json(C20A))
    expressions = [expr for expr, _ in caught.value.issues]
    assert "Appointment.start" in expressions
    assert "Appointment.end" in expressions


def test_parse_appointment_c21_noshow_with_cancelation_reason_accepted() -> None:
    request = parse_appointment(load_json(C21))
    assert request.status == "noshow"
    assert request.patient.resource_id == "pat-4000147"
    assert request.location_reference is None


def test_parse_appointment_booked_gives_meeting_patient_and_board() -> None:
    request = parse_appointment(booked())
    assert request.start is not None
    assert request.start.isoformat() == "2025-04-02T14:30:00+02:00"
    assert request.patient.resource_id == "p1"
    assert request.location_reference == "Location/rcp-1"


@pytest.mark.parametrize(
    ("change", "expression"),
    [
        ({"status": "planned"}, "Appointment.status"),
        ({"end": None}, "Appointment.start"),
        ({"start": None, "end": None}, "Appointment.start"),
        ({"cancelationReason": {"text": "x"}}, "Appointment.cancelationReason"),
        ({"end": "2025-04-02T10:00:00+02:00"}, "Appointment.end"),
        (
            {
                "participant": [
                    {"actor": {"reference": "Location/x"}, "status": "accepted"}
                ]
            },
            "Appointment.participant",
        ),
        (
            {"participant": [{"actor": {"reference": "Patient/p"}, "status": "maybe"}]},
            "Appointment.participant[0].status",
        ),
    ],
)
def test_parse_appointment_rule_broken_names_the_element(
    change: dict[str, Any], expression: str
) -> None:
    body = copy.deepcopy(booked())
    for key, value in change.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = value
    with pytest.raises(InvalidResource) as caught:
        parse_appointment(body)
    assert expression in [expr for expr, _ in caught.value.issues]


def test_parse_appointment_patient_by_identifier() -> None:
    body = booked()
    body["participant"][0]["actor"] = {
        "type": "Patient",
        "identifier": {"system": "urn:oid:2.999.1.1", "value": "A1"},
    }
    request = parse_appointment(body)
    assert request.patient.identifier == Identifier("2.999.1.1", "A1")


@pytest.mark.parametrize("body", [None, [], "x", {"resourceType": "Patient"}])
def test_parse_appointment_not_an_appointment_refused(body: Any) -> None:
    with pytest.raises(InvalidResource):
        parse_appointment(body)


def _reliable_patient(
    *codes: str, place: dict[str, object] | None = None
) -> dict[str, object]:
    extension: list[dict[str, object]] = [
        {
            "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/"
            "fr-core-identity-reliability",
            "extension": [
                {"url": "identityStatus", "valueCoding": {"code": code}}
                for code in codes
            ],
        }
    ]
    if place is not None:
        extension.append(
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                "valueAddress": place,
            }
        )
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.999.1.1", "value": "A1"}],
        "extension": extension,
    }


def test_parse_patient_fr_core_reliability_status_and_attributes() -> None:
    record = parse_patient(_reliable_patient("VALI", "HOMA"))
    assert (record.identity_status, record.identity_attributes) == ("VALI", ("HOMA",))


def test_parse_patient_two_statuses_refused() -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_patient(_reliable_patient("VALI", "PROV"))
    assert "two identity statuses" in str(caught.value)


def test_parse_patient_unknown_reliability_code_refused() -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_patient(_reliable_patient("SURE"))
    assert "'SURE'" in str(caught.value)


def test_parse_patient_birth_place_insee_code_preferred_to_text() -> None:
    insee = {
        "extension": [
            {
                "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/"
                "fr-core-address-insee-code",
                "valueCoding": {"code": "35238"},
            }
        ],
        "text": "Rennes",
    }
    assert parse_patient(_reliable_patient("PROV", place=insee)).birth_place == "35238"
    text_only = {"city": "Rennes"}
    assert parse_patient(_reliable_patient("PROV", place=text_only)).birth_place == (
        "Rennes"
    )
