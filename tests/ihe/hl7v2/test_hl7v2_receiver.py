"""The receiving application over a real socket: storage, duplicates, refusals."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from ihe.hl7v2 import er7
from ihe.hl7v2.application import Context, Outcome
from ihe.hl7v2.receiver import ROUTES, Receiver
from server.models import Hl7Message, Patient
from server.runtime import Runtime
from tests.ihe.hl7v2.hl7v2_support import Client, ack_of, adt, listening

PID3 = "P100^^^CHU_X&2.999.9.1&ISO^PI"


def rows(rt: Runtime) -> list[Hl7Message]:
    with rt.db.session() as session:
        return list(session.scalars(select(Hl7Message).order_by(Hl7Message.id)))


def patients(rt: Runtime) -> int:
    with rt.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Patient)) or 0)


def test_receiver_resent_message_same_ack_not_processed_twice(rt: Runtime) -> None:
    message = adt("DUP-1", PID3)
    with listening(rt) as port:
        with Client(port) as client:
            client.send(message)
            first = client.read()
        with Client(port) as client:
            client.send(message)
            second = client.read()
    assert first == second
    assert ack_of(first).value("MSA-1") == "AA"
    (row,) = rows(rt)
    assert (row.outcome, row.ack_code, row.ack) == ("accepted", "AA", first)
    assert row.sender == "GAM|CHU_BELLEVAL"
    assert row.control_id == "DUP-1"
    assert row.raw == message
    with rt.db.session() as session:
        patient = session.scalar(select(Patient))
        assert patient is not None and patient.version == 1


def test_receiver_same_control_id_other_sender_processed(rt: Runtime) -> None:
    with listening(rt) as port, Client(port) as client:
        client.exchange(adt("SAME", PID3))
        other = client.exchange(adt("SAME", PID3, sender="GAM|CH_OTHER"))
    assert other.value("MSA-1") == "AA"
    assert len(rows(rt)) == 2


def test_receiver_message_committed_before_handler_and_ack(rt: Runtime) -> None:
    seen: list[tuple[str, bytes]] = []

    def handler(session: Session, msg: er7.Message, ctx: Context) -> Outcome:
        # Another connection to the database sees the message already stored.
        with rt.db.session() as other:
            row = other.scalar(select(Hl7Message))
            assert row is not None
            seen.append((row.outcome, row.raw))
        return Outcome("looked")

    receiver = Receiver(rt.db, rt.settings, {("ADT", "A28"): handler})
    message = adt("DURABLE-1", PID3)
    with listening(rt, receiver=receiver) as port, Client(port) as client:
        assert client.exchange(message).value("MSA-1") == "AA"
    assert seen == [("received", message)]
    assert rows(rt)[0].detail == "looked"


def test_receiver_handler_failure_answers_ae_207_recorded_connection_kept(
    rt: Runtime,
) -> None:
    def broken(session: Session, msg: er7.Message, ctx: Context) -> Outcome:
        session.add(Patient(family_name="ROLLED-BACK"))
        raise RuntimeError("bug")

    routes = {**ROUTES, ("ADT", "A28"): broken}
    receiver = Receiver(rt.db, rt.settings, routes)
    with listening(rt, receiver=receiver) as port, Client(port) as client:
        failed = client.exchange(adt("FAIL-1", PID3))
        after = client.exchange(adt("OK-1", PID3, event="A08"))
        again = client.exchange(adt("FAIL-1", PID3))
    assert (failed.value("MSA-1"), failed.value("ERR-3")) == ("AE", "207")
    assert again.value("MSA-1") == "AE"
    assert after.value("MSA-1") == "AA"
    failed_row, ok_row = rows(rt)
    assert failed_row.outcome == "error"
    assert failed_row.detail is not None and failed_row.detail.startswith("207")
    assert ok_row.outcome == "accepted"
    assert patients(rt) == 1


@pytest.mark.parametrize(
    ("message", "code", "error", "location"),
    [
        (b"garbage without header", "AR", "100", "MSH"),
        (b"MSH\rPID|1||A1^^^&2.999.1.1&ISO\r", "AR", "100", "MSH"),
        (b"MSH\n^~\\&\nSPIDERS\nPID|1\n", "AR", "100", "MSH"),
        (adt("T-1", PID3).replace(b"ADT^A28", b"XYZ^A01"), "AR", "200", "MSH^1^9^1^1"),
        (adt("T-2", PID3).replace(b"ADT^A28", b"ADT^A99"), "AR", "201", "MSH^1^9^1^2"),
        (adt("T-3", PID3).replace(b"|P|2.5|", b"|T|2.5|"), "AR", "202", "MSH^1^11"),
        (adt("T-4", PID3).replace(b"|2.5|", b"|2.1|"), "AR", "203", "MSH^1^12"),
        (adt("", PID3), "AE", "101", "MSH^1^10"),
        (adt("T-5", "^^^CHU_X^PI"), "AE", "101", "PID^1^3"),
        (adt("T-6", "P1^^^^PI"), "AE", "204", "PID^1^3^1^4"),
        (
            adt("T-7", PID3).replace(b"|19700101|F", b"|19700132|F"),
            "AE",
            "102",
            "PID^1^7",
        ),
        (
            adt("T-8", PID3).replace(b"|19700101|F", b"|19700101|X"),
            "AE",
            "103",
            "PID^1^8",
        ),
        (
            adt("T-9", PID3).replace(b"UNICODE UTF-8", b"EBCDIC"),
            "AE",
            "103",
            "MSH^1^18",
        ),
        (adt("T-10", PID3).replace(b"PID|", b"pid|"), "AE", "100", ""),
    ],
)
def test_receiver_bad_message_answered_with_err_connection_kept(
    rt: Runtime, message: bytes, code: str, error: str, location: str
) -> None:
    with listening(rt) as port, Client(port) as client:
        ack = client.exchange(message)
        after = client.exchange(adt("AFTER", PID3))
    assert ack.value("MSA-1") == code
    assert ack.value("ERR-3") == error
    err = ack.segment("ERR")
    assert err is not None and err.raw(2) == location
    assert after.value("MSA-1") == "AA"
    assert rows(rt)[0].outcome == ("rejected" if code == "AR" else "error")


def test_receiver_oversized_frame_answered_ar_not_stored(rt: Runtime) -> None:
    big = adt("BIG-1", PID3, extra="NTE|1||" + "x" * 20_000)
    with listening(rt, max_frame=8192) as port, Client(port) as client:
        ack = client.exchange(big)
        after = client.exchange(adt("AFTER", PID3))
    assert (ack.value("MSA-1"), ack.value("MSA-2")) == ("AR", "BIG-1")
    assert ack.value("ERR-3") == "207"
    assert after.value("MSA-1") == "AA"
    assert [r.control_id for r in rows(rt)] == ["AFTER"]


def test_receiver_store_unavailable_answers_ar_207(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver(rt.db, rt.settings)

    def down(*args: object, **kwargs: object) -> None:
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(receiver, "_store", down)
    with listening(rt, receiver=receiver) as port, Client(port) as client:
        ack = client.exchange(adt("DOWN-1", PID3))
    assert (ack.value("MSA-1"), ack.value("ERR-3")) == ("AR", "207")
    assert rows(rt) == []


def test_receiver_enhanced_mode_commit_ack_and_never(rt: Runtime) -> None:
    always = adt("ENH-1", PID3).replace(b"|2.5|||||", b"|2.5|||AL|NE|")
    never = adt("ENH-2", PID3).replace(b"|2.5|||||", b"|2.5|||NE|NE|")
    assert er7.parse_bytes(always, "ASCII").msh.value(15) == "AL"
    with listening(rt) as port, Client(port) as client:
        assert client.exchange(always).value("MSA-1") == "CA"
        client.send(never)
        assert client.silent(0.3)
        assert client.exchange(adt("ENH-3", PID3)).value("MSA-1") == "AA"
    assert [(r.outcome, r.ack_code) for r in rows(rt)] == [
        ("accepted", "CA"),
        ("accepted", "CA"),
        ("accepted", "AA"),
    ]


def test_receiver_ack_received_stored_and_not_answered(rt: Runtime) -> None:
    incoming = (
        b"MSH|^~\\&|GAM|CHU_X|SPIDERS|RCP|20250317||ACK^A28^ACK|A-1|P|2.5\rMSA|AA|X-1\r"
    )
    with listening(rt) as port, Client(port) as client:
        client.send(incoming)
        assert client.silent(0.3)
        assert client.exchange(adt("NEXT", PID3)).value("MSA-1") == "AA"
    assert rows(rt)[0].ack is None
