"""Discovery's identity check: a returned study whose patient disagrees is flagged."""

from __future__ import annotations

from datetime import date

import pytest

from mappings.dicom_study import StudyFound
from server.models import Patient, Registration
from server.workflow.discovery import identity_warning


def found(name: str | None, birth: str | None) -> StudyFound:
    return StudyFound(
        "1.2.3", "A1", name, birth, "M", "20260101", None, None, ("CT",), None, 1, 10
    )


def registration() -> Registration:
    patient = Patient(
        family_name="Lévêque",
        given_names="Noël",
        birth_family_name="DE LA TOUR",
        birth_date=date(1958, 3, 14),
    )
    return Registration(patient=patient)


@pytest.mark.parametrize(
    "name",
    [
        "LEVEQUE^NOEL",
        "LÉVÊQUE^Noël",
        "leveque^noel^^^",
        "DE LA TOUR^Noël",
        "De-La-Tour^Noel",
        None,
    ],
)
def test_identity_warning_same_person_written_differently_no_warning(
    name: str | None,
) -> None:
    assert identity_warning(registration(), found(name, "19580314")) is None


def test_identity_warning_other_birth_date_flagged() -> None:
    assert identity_warning(registration(), found("LEVEQUE^NOEL", "19580315")) == (
        "birth date differs from the patient index"
    )


def test_identity_warning_other_family_name_flagged() -> None:
    assert identity_warning(registration(), found("LEFEVRE^NOEL", "19580314")) == (
        "family name differs from the patient index"
    )


@pytest.mark.parametrize(
    ("index", "pacs"),
    [("DESŒUVRES", "DESOEUVRES^MARIE"), ("ŁUKASZEWSKI", "LUKASZEWSKI^ANNA")],
)
def test_identity_warning_letters_latin1_cannot_store_no_warning(
    index: str, pacs: str
) -> None:
    reg = registration()
    reg.patient.family_name = index
    reg.patient.birth_family_name = None
    assert identity_warning(reg, found(pacs, "19580314")) is None
