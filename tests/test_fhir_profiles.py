"""The published FHIR examples stay valid and in step with the server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mappings.fhir_appointment import parse_appointment
from mappings.fhir_patient import parse_patient
from server.http.fhir import capability_statement
from tests.fhir_schema import assert_valid_fhir

PROFILES = Path(__file__).parent.parent / "fhir-profiles"


@pytest.mark.parametrize("path", sorted(PROFILES.glob("*.json")), ids=lambda p: p.name)
def test_profile_file_valid_against_r4_schema(path: Path) -> None:
    assert_valid_fhir(json.loads(path.read_text(encoding="utf-8")))


def test_capability_statement_file_equals_served_one() -> None:
    path = PROFILES / "CapabilityStatement-spiders.json"
    assert json.loads(path.read_text(encoding="utf-8")) == capability_statement()


def test_examples_accepted_by_the_mappings() -> None:
    patient = json.loads((PROFILES / "Patient-example-identity-feed.json").read_text())
    assert len(parse_patient(patient).identifiers) == 3
    appt = json.loads((PROFILES / "Appointment-example-registration.json").read_text())
    assert parse_appointment(appt).status == "booked"
