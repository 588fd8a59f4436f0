"""Receiver hardening over MLLP: reused keys, long keys, MSH-2, bad values, framing.

Each case is sent over a real socket to a listener on SQLite, and the value
cases also on PostgreSQL, where a NUL byte or an over-long value would fail
in the database: both must answer the same ACK.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ihe.hl7v2 import er7, mllp
from server.config import load_settings
from server.models import Hl7Message, Patient, PatientIdentifier, Registration
from server.runtime import Runtime
from tests.ihe.hl7v2.hl7v2_support import Client, ack_of, adt, listening, siu

PID3 = "A700^^^SITE_A&1.2.250.1.999.7&ISO^PI"
BERNARD = {"name": "BERNARD^Luc^^^^^L", "birth_date": "19550312", "sex": "M"}
BERNARD_PID = b"BERNARD^Luc^^^M^^L||19550312|M"
SIU_PID = b"DUPONT^Marie^^^MME^^L||19700101|F"


def outcome(ack: er7.Message) -> tuple[str, str, str]:
    """MSA-1, ERR-2 (as written) and ERR-3.1 of an ACK."""
    err = ack.segment("ERR")
    return (
        ack.value("MSA-1"),
        err.raw(2) if err is not None else "",
        ack.value("ERR-3"),
    )


def rows(rt: Runtime) -> list[Hl7Message]:
    with rt.db.session() as session:
        return list(session.scalars(select(Hl7Message).order_by(Hl7Message.id)))


def bernard_siu(control_id: str, event: str = "S12") -> bytes:
    """An SIU for the patient of PID3 whose PID agrees with the index."""
    message = siu(control_id, event, "RDV8001", PID3, "20250402143000")
    return message.replace(SIU_PID, BERNARD_PID)


@pytest.fixture
def client(rt: Runtime) -> Iterator[Client]:
    with listening(rt) as port, Client(port) as connection:
        fed = connection.exchange(adt("ADT-A700", PID3, **BERNARD))
        assert fed.value("MSA-1") == "AA"
        yield connection


@pytest.fixture(params=["sqlite", "postgresql"])
def any_rt(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    """A runtime on SQLite, then on PostgreSQL."""
    env = {"SPIDERS_DATA_DIR": str(tmp_path / "var")}
    if request.param == "postgresql":
        env["SPIDERS_DATABASE_URL"] = request.getfixturevalue("pg_url")
    instance = Runtime(load_settings(env))
    yield instance
    instance.db.dispose()


# Defect: a reused MSH-10 with other content was answered with the old ACK.


def test_receiver_reused_control_id_other_content_refused_ae_205(
    rt: Runtime, client: Client
) -> None:
    booked = client.exchange(bernard_siu("SIU-1"))
    cancel = client.exchange(bernard_siu("SIU-1", "S15"))
    assert booked.value("MSA-1") == "AA"
    assert outcome(cancel) == ("AE", "MSH^1^10", "205")
    assert cancel.value("MSA-2") == "SIU-1"
    assert cancel.value("ERR-3.2") == "Duplicate key identifier"
    with rt.db.session() as session:
        reg = session.scalar(select(Registration))
        assert reg is not None and reg.status == "booked"
    (row,) = [r for r in rows(rt) if r.control_id == "SIU-1"]
    assert (row.message_type, row.ack_code) == ("SIU^S12", "AA")
    assert row.raw == bernard_siu("SIU-1")


def test_receiver_resend_with_new_msh7_and_terminators_gets_same_ack(
    rt: Runtime, client: Client
) -> None:
    first = bernard_siu("SIU-2")
    client.send(first)
    answer = client.read()
    again = first.replace(b"|20250317081500|", b"|20250317093000|") + b"\r\n \r"
    client.send(again)
    assert client.read() == answer
    assert ack_of(answer).value("MSA-1") == "AA"
    with rt.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Registration)) == 1
    assert [r.control_id for r in rows(rt)] == ["ADT-A700", "SIU-2"]


# Defect: over-long MSH-10 or sender fields were cut, so distinct keys collided.


def test_receiver_control_id_above_199_refused_ae_102_not_stored(
    rt: Runtime, client: Client
) -> None:
    long_a, long_b = "X" * 199 + "A", "X" * 199 + "B"
    first = client.exchange(adt(long_a, PID3, event="A08", **BERNARD))
    second = client.exchange(adt(long_b, PID3, event="A08", **BERNARD))
    fits = client.exchange(adt("Y" * 199, PID3, event="A08", **BERNARD))
    assert outcome(first) == ("AE", "MSH^1^10", "102")
    assert outcome(second) == ("AE", "MSH^1^10", "102")
    assert outcome(fits) == ("AA", "", "")
    assert [r.control_id for r in rows(rt)] == ["ADT-A700", "Y" * 199]


@pytest.mark.parametrize(
    ("field", "sender"), [(3, "G" * 228 + "|F"), (4, "GAM|" + "F" * 228)]
)
def test_receiver_sender_field_above_227_refused_ae_102(
    rt: Runtime, client: Client, field: int, sender: str
) -> None:
    ack = client.exchange(adt("LONG-SENDER", PID3, sender=sender, **BERNARD))
    assert outcome(ack) == ("AE", f"MSH^1^{field}", "102")
    assert [r.control_id for r in rows(rt)] == ["ADT-A700"]


# Defect: MSH-2 with two encoding characters was read, the & kept in a domain.


def test_receiver_msh2_two_characters_rejected_ar_102_nothing_indexed(
    rt: Runtime,
) -> None:
    message = adt("MSH2-1", "B1^^^SITE_A&1.2.250.1.999.7&ISO^PI").replace(
        b"MSH|^~\\&|", b"MSH|^~|"
    )
    with listening(rt) as port, Client(port) as client:
        ack = client.exchange(message)
    assert outcome(ack) == ("AR", "MSH^1^2", "102")
    with rt.db.session() as session:
        assert session.scalars(select(PatientIdentifier.system)).all() == []


def test_receiver_msh2_five_characters_before_v27_rejected_ar_102(
    rt: Runtime,
) -> None:
    message = adt("MSH2-2", PID3).replace(b"MSH|^~\\&|", b"MSH|^~\\&#|")
    with listening(rt) as port, Client(port) as client:
        ack = client.exchange(message)
        v27 = client.exchange(
            adt("MSH2-3", PID3)
            .replace(b"MSH|^~\\&|", b"MSH|^~\\&#|")
            .replace(b"|P|2.5|", b"|P|2.7|")
        )
    assert outcome(ack) == ("AR", "MSH^1^2", "102")
    assert outcome(v27) == ("AA", "", "")


# Defect: bad values failed in the database (207) instead of being refused (102).


@pytest.mark.parametrize(
    ("message", "location"),
    [
        pytest.param(
            siu("SIU-OFF", "S12", "RDV8002", PID3, "20250402143000+2500"),
            "SCH^1^11^1^4",
            id="utc-offset-+2500",
        ),
        pytest.param(
            adt("NUL-1", PID3, name="BER\x00NARD^Luc^^^^^L"),
            "PID^1^5",
            id="nul-byte-in-name",
        ),
        pytest.param(
            adt("NUL-2", PID3, name="BER\\X00\\NARD^Luc^^^^^L"),
            "PID^1^5",
            id="escaped-nul-in-name",
        ),
        pytest.param(
            adt("LONG-NAME", PID3, name="N" * 400 + "^Luc^^^^^L"),
            "PID^1^5^1^1",
            id="400-character-name",
        ),
        pytest.param(
            adt("LONG-ID", "9" * 300 + "^^^SITE_A&1.2.250.1.999.7&ISO^PI"),
            "PID^1^3^1^1",
            id="300-character-identifier",
        ),
        pytest.param(
            adt("LONG-DOMAIN", "B1^^^" + "S" * 129 + "^PI"),
            "PID^1^3^1^4^1",
            id="129-character-authority",
        ),
        pytest.param(
            siu("SIU-LONGKEY", "S12", "R" * 129, PID3, "20250402143000"),
            "SCH^1^2^1^1",
            id="129-character-appointment-id",
        ),
    ],
)
def test_receiver_bad_value_refused_ae_102_on_every_database(
    any_rt: Runtime, message: bytes, location: str
) -> None:
    with listening(any_rt) as port, Client(port) as client:
        fed = client.exchange(adt("ADT-A700", PID3, **BERNARD))
        ack = client.exchange(message.replace(SIU_PID, BERNARD_PID))
    assert fed.value("MSA-1") == "AA"
    assert outcome(ack) == ("AE", location, "102")
    (row,) = [r for r in rows(any_rt) if r.control_id != "ADT-A700"]
    assert (row.outcome, row.ack_code) == ("error", "AE")
    assert row.detail is not None and row.detail.startswith("102 ")
    with any_rt.db.session() as session:
        names = session.scalars(select(Patient.family_name)).all()
        assert names == ["BERNARD"]
        assert session.scalar(select(func.count()).select_from(Registration)) == 0


def test_receiver_nul_byte_in_msh10_refused_ae_102_not_stored(
    any_rt: Runtime,
) -> None:
    with listening(any_rt) as port, Client(port) as client:
        ack = client.exchange(adt("NUL\x00KEY", PID3))
    assert outcome(ack) == ("AE", "MSH^1^10", "102")
    assert rows(any_rt) == []


# Defect: a frame ending 0x1C without 0x0D hung until the client timed out.


def test_listener_frame_ending_without_cr_answered_after_short_wait(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ihe.hl7v2.listener")
    message = adt("NOCR-1", PID3, **BERNARD)
    with listening(rt) as port, Client(port) as client:
        started = time.monotonic()
        client.sock.sendall(mllp.START_BLOCK + message + mllp.END_BLOCK)
        ack = ack_of(client.read(timeout=5))
        waited = time.monotonic() - started
        # 0x1C then straight into the next frame: both answered, in order.
        client.sock.sendall(
            mllp.START_BLOCK
            + adt("NOCR-2", PID3, event="A08", **BERNARD)
            + mllp.END_BLOCK
            + mllp.frame(adt("NOCR-3", PID3, event="A08", **BERNARD))
        )
        acks = [ack_of(client.read(timeout=5)) for _ in range(2)]
    assert (ack.value("MSA-1"), ack.value("MSA-2")) == ("AA", "NOCR-1")
    assert waited < 3
    assert [(a.value("MSA-1"), a.value("MSA-2")) for a in acks] == [
        ("AA", "NOCR-2"),
        ("AA", "NOCR-3"),
    ]
    warned = [r for r in caplog.records if "without 0x0D" in r.getMessage()]
    assert warned and all(r.levelno == logging.WARNING for r in warned)
