"""Identity vigilance: a returned study whose patient disagrees is flagged."""

from __future__ import annotations

from datetime import date

import pytest

from mappings.dicom_study import StudyFound
from server.models import Patient, Registration
from server.workflow.vigilance import (
    family_names_match,
    given_names_match,
    identity_warning,
)


def found(name: str | None, birth: str | None, sex: str | None = "M") -> StudyFound:
    return StudyFound(
        "1.2.3", "A1", name, birth, sex, "20260101", None, None, ("CT",), None, 1, 10
    )


def registration() -> Registration:
    patient = Patient(
        family_name="Lévêque",
        given_names="Noël",
        birth_family_name="DE LA TOUR",
        birth_date=date(1958, 3, 14),
        sex="M",
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
    [("DESŒUVRES", "DESOEUVRES^NOEL"), ("ŁUKASZEWSKI", "LUKASZEWSKI^NOEL")],
)
def test_identity_warning_letters_latin1_cannot_store_no_warning(
    index: str, pacs: str
) -> None:
    reg = registration()
    reg.patient.family_name = index
    reg.patient.birth_family_name = None
    assert identity_warning(reg, found(pacs, "19580314")) is None


@pytest.mark.parametrize(
    ("site", "index"),
    [
        ("DUPONT MARTIN", "DUPONT-MARTIN"),
        ("DUPONT", "DUPONT-MARTIN"),
        ("DUPONT-MARTIN", "DUPONT"),
        ("DUPONT--MARTIN", "DUPONT MARTIN"),
        ("LEGOFF", "LE GOFF"),
        ("Le Goff", "LE GOFF"),
        ("LA TOUR", "DE LA TOUR"),
        ("DELATOUR", "DE LA TOUR"),
        ("D'ARC", "DARC"),
    ],
)
def test_family_names_match_composite_and_particles(site: str, index: str) -> None:
    assert family_names_match(site, index)


@pytest.mark.parametrize(
    ("site", "index"),
    [("MARTIN", "MARTINEZ"), ("DUPONT", "DUPOND"), ("LE GOFF", "LE GALL")],
)
def test_family_names_match_other_names_differ(site: str, index: str) -> None:
    assert not family_names_match(site, index)


@pytest.mark.parametrize(
    ("site", "index", "same"),
    [
        ("JEAN-PIERRE", "Jean", True),
        ("J", "Jean Pierre", True),
        ("MARIE CLAIRE", "Claire", True),
        ("PAUL", "Pierre", False),
    ],
)
def test_given_names_match_shared_name_or_initial(
    site: str, index: str, same: bool
) -> None:
    assert given_names_match(site, index) is same


def test_identity_warning_other_sex_flagged() -> None:
    assert identity_warning(registration(), found("LEVEQUE^NOEL", "19580314", "F")) == (
        "sex differs from the patient index"
    )


@pytest.mark.parametrize("sex", ["O", "", None, "M "])
def test_identity_warning_unknown_or_padded_sex_no_warning(sex: str | None) -> None:
    assert (
        identity_warning(registration(), found("LEVEQUE^NOEL", "19580314", sex)) is None
    )


def test_identity_warning_twin_other_given_name_flagged() -> None:
    assert identity_warning(registration(), found("LEVEQUE^PAUL", "19580314")) == (
        "given name differs from the patient index"
    )


def test_identity_warning_every_reason_listed() -> None:
    assert identity_warning(registration(), found("MARTIN^PAUL", "19600101", "F")) == (
        "birth date differs from the patient index; "
        "sex differs from the patient index; "
        "family name differs from the patient index; "
        "given name differs from the patient index"
    )


def test_identity_warning_ideographic_group_ignored() -> None:
    assert (
        identity_warning(
            registration(), found("LEVEQUE^NOEL=レヴェック^ノエル", "19580314")
        )
        is None
    )
