"""SIU and ORM/OMI over MLLP: a PID that disagrees with the patient index is refused.

The patient of PID-3 is indexed as BERNARD Luc, male, born 1955-03-12 (used
name MARTIN-BERNARD, given names "Luc Jean-Marie"). A message whose name, birth
date or sex disagrees is answered AE, ERR-3 207 with ERR-5 904 (the French
CI-SIS application code for identity traits that do not match), ERR-2 the
first field that disagrees, and changes nothing; the variations identity
vigilance tolerates for studies are accepted.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from ihe.hl7v2 import er7
from server.models import Hl7Message, Registration
from server.runtime import Runtime
from tests.ihe.hl7v2.hl7v2_support import Client, adt, listening, siu

PID3 = "A700^^^SITE_A&1.2.250.1.999.7&ISO^PI"
INDEXED = "MARTIN-BERNARD^Luc^Jean-Marie^^^^D~BERNARD^Luc^Jean-Marie^^^^L"
SIU_PID = "DUPONT^Marie^^^MME^^L||19700101|F"
AGREES = "BERNARD^Luc^^^M^^L||19550312|M"


def with_pid(message: bytes, pid: str) -> bytes:
    """`message` (from the ``siu`` helper) with PID-5 to PID-8 replaced."""
    return message.replace(SIU_PID.encode(), pid.encode("utf-8"))


def s12(control_id: str, pid: str, appointment: str = "RDV9001") -> bytes:
    message = siu(control_id, "S12", appointment, PID3, "20250402143000")
    return with_pid(message, pid)


def omi(control_id: str, pid: str) -> bytes:
    segments = [
        "MSH|^~\\&|RIS|CHU_BELLEVAL|SPIDERS|SPIDERS|20250317||OMI^O23^OMI_O23|"
        f"{control_id}|P|2.5.1|||||FRA|UNICODE UTF-8",
        f"PID|1||{PID3}||{pid}",
        "ORC|NW|CMD-1^DPI|ACN101^RIS",
        "OBR|1|CMD-1^DPI|ACN101^RIS|SCTHO^Scanner thoracique^L",
        "IPC|ACN101^^1.2.250.1.999.27^ISO|RP1|1.2.250.1.999.4.5.2.1.101|SPS1|CT",
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def refusal(ack: er7.Message) -> tuple[str, str, str, str, str]:
    """MSA-1, ERR-2, ERR-3.1, ERR-5.1 and ERR-5.3 of an ACK."""
    err = ack.segment("ERR")
    assert err is not None
    return (
        ack.value("MSA-1"),
        err.raw(2),
        ack.value("ERR-3"),
        ack.value("ERR-5"),
        ack.value("ERR-5.3"),
    )


def registrations(rt: Runtime) -> list[Registration]:
    with rt.db.session() as session:
        return list(session.scalars(select(Registration)))


@pytest.fixture
def client(rt: Runtime) -> Iterator[Client]:
    with listening(rt) as port, Client(port) as connection:
        fed = connection.exchange(
            adt("ADT-1", PID3, name=INDEXED, birth_date="19550312", sex="M")
        )
        assert fed.value("MSA-1") == "AA"
        yield connection


def test_swf_s12_other_patients_demographics_refused_ae_207_904(
    rt: Runtime, client: Client
) -> None:
    ack = client.exchange(s12("SIU-1", SIU_PID))
    assert refusal(ack) == ("AE", "PID^1^5^1^1", "207", "904", "HL70533")
    assert ack.value("MSA-2") == "SIU-1"
    text = ack.value("ERR-8")
    for field in ("PID-5.1", "PID-7", "PID-8"):
        assert field in text
    # "Marie" is one of the given names "Luc Jean-Marie": no disagreement there.
    assert "PID-5.2" not in text
    assert "DUPONT" not in text and "BERNARD" not in text
    assert registrations(rt) == []
    with rt.db.session() as session:
        row = session.scalar(select(Hl7Message).where(Hl7Message.control_id == "SIU-1"))
        assert row is not None
        assert (row.outcome, row.ack_code) == ("error", "AE")
        assert row.detail is not None and row.detail.startswith("207 ")


@pytest.mark.parametrize(
    ("pid", "location"),
    [
        ("DUPONT^Luc^^^M^^L||19550312|M", "PID^1^5^1^1"),
        ("BERNARD^Marc^^^M^^L||19550312|M", "PID^1^5^1^2"),
        ("BERNARD^Luc^^^M^^L~DUPONT^Luc^^^^^D||19550312|M", "PID^1^5^2^1"),
        ("BERNARD^Luc^^^M^^L||19550313|M", "PID^1^7"),
        ("BERNARD^Luc^^^M^^L||19550312|F", "PID^1^8"),
    ],
    ids=["family", "given", "second-repetition", "birth-date", "sex"],
)
def test_swf_s12_one_field_disagrees_refused_at_that_field(
    rt: Runtime, client: Client, pid: str, location: str
) -> None:
    ack = client.exchange(s12("SIU-2", pid))
    assert refusal(ack) == ("AE", location, "207", "904", "HL70533")
    assert registrations(rt) == []


@pytest.mark.parametrize(
    "pid",
    [
        AGREES,
        "bernard^luc^^^^^L||19550312|M",  # case
        "BÉRNARD^LÜC^^^^^L||19550312|M",  # accents
        "MARTIN BERNARD^Luc^^^^^D||19550312|M",  # separators of the used name
        "MARTIN^Luc^^^^^D||19550312|M",  # one part of a composite name
        "BERNARD^J^^^^^L||19550312|M",  # an initial
        "BERNARD^Jean-Marie^^^^^L||19550312|M",  # one of the given names
        "DE BERNARD^Luc^^^^^L||19550312|M",  # a leading particle
        "BERNARD^Luc^^^^^L||19550312|U",  # sex unknown
        "^^^^^^||19550312|M",  # no name
        "BERNARD^Luc^^^^^L||",  # no birth date, no sex
    ],
    ids=[
        "same",
        "case",
        "accents",
        "separators",
        "composite-part",
        "initial",
        "one-given-name",
        "particle",
        "sex-unknown",
        "no-name",
        "no-date-no-sex",
    ],
)
def test_swf_s12_tolerated_variation_accepted(
    rt: Runtime, client: Client, pid: str
) -> None:
    ack = client.exchange(s12("SIU-3", pid))
    assert (ack.value("MSA-1"), ack.segment("ERR")) == ("AA", None)
    assert len(registrations(rt)) == 1


def test_swf_s13_and_s15_disagreeing_pid_refused_registration_unchanged(
    rt: Runtime, client: Client
) -> None:
    booked = client.exchange(s12("SIU-4", AGREES))
    later = siu("SIU-5", "S13", "RDV9001", PID3, "20250409143000")
    moved = client.exchange(with_pid(later, SIU_PID))
    cancelled = client.exchange(
        with_pid(siu("SIU-6", "S15", "RDV9001", PID3, "20250402143000"), SIU_PID)
    )
    assert booked.value("MSA-1") == "AA"
    assert refusal(moved) == ("AE", "PID^1^5^1^1", "207", "904", "HL70533")
    assert refusal(cancelled)[:3] == ("AE", "PID^1^5^1^1", "207")
    (reg,) = registrations(rt)
    assert reg.status == "booked"
    assert reg.meeting_start is not None
    assert reg.meeting_start.day == 2


def test_swf_omi_disagreeing_pid_refused_nothing_attached(
    rt: Runtime, client: Client
) -> None:
    client.exchange(s12("SIU-7", AGREES))
    refused = client.exchange(omi("OMI-1", "BERNARD^Luc^^^^^L||19550312|F"))
    accepted = client.exchange(omi("OMI-2", "BERNARD^Luc^^^^^L||19550312|M"))
    assert refusal(refused) == ("AE", "PID^1^8", "207", "904", "HL70533")
    assert accepted.value("MSA-1") == "AA"
    with rt.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Registration)) == 1
        reg = session.scalar(select(Registration))
        assert reg is not None
        assert reg.hints["accessionNumbers"] == ["ACN101"]


def test_swf_orm_for_unindexed_patient_still_acknowledged_aa(
    rt: Runtime, client: Client
) -> None:
    other = omi("OMI-3", SIU_PID).replace(b"A700^^^", b"Z999^^^")
    ack = client.exchange(other)
    assert (ack.value("MSA-1"), ack.segment("ERR")) == ("AA", None)


REFUSED_TAIL = (
    "from the patient index for the patient PID-3 names; nothing was changed: "
    "correct the message, or update the patient (ADT) first"
)


@pytest.mark.parametrize(
    ("pid", "subject"),
    [
        ("DUPONT^Luc^^^M^^L||19550312|M", "The family name (PID-5.1) of PID differs"),
        (
            "BERNARD^Marc^^^M^^L||19550312|M",
            "The given names (PID-5.2, PID-5.3) of PID differ",
        ),
        ("BERNARD^Luc^^^M^^L||19550313|M", "The birth date (PID-7) of PID differs"),
        ("BERNARD^Luc^^^M^^L||19550312|F", "The sex (PID-8) of PID differs"),
        (
            "BERNARD^Luc^^^M^^L||19550313|F",
            "The birth date (PID-7) and the sex (PID-8) of PID differ",
        ),
        (
            SIU_PID,
            "The family name (PID-5.1), the birth date (PID-7) and the sex (PID-8) "
            "of PID differ",
        ),
    ],
    ids=["family", "given", "birth-date", "sex", "two-fields", "three-fields"],
)
def test_swf_s12_refusal_text_verb_agrees_with_the_fields(
    rt: Runtime, client: Client, pid: str, subject: str
) -> None:
    ack = client.exchange(s12("SIU-4", pid))
    assert ack.value("MSA-1") == "AE"
    assert ack.value("ERR-8") == f"{subject} {REFUSED_TAIL}"
    assert ack.value("MSA-3") == f"{subject} {REFUSED_TAIL}"
