"""RAD-48 over MLLP: SIU messages create and change registrations (C20 included)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B.appointment import Appointment
from flask.testing import FlaskClient
from sqlalchemy import select

from ihe.hl7v2 import er7
from ihe.hl7v2.receiver import Receiver
from server.models import Candidate, Prefetch, PrefetchState, Registration, utcnow
from server.runtime import Runtime
from tests.ihe.hl7v2.hl7v2_support import Client, adt, listening, siu

PARIS = ZoneInfo("Europe/Paris")
PID3 = "40000140^^^CHU_BELLEVAL&2.999.1.9&ISO^PI"


def err_location(ack: er7.Message) -> str:
    err = ack.segment("ERR")
    assert err is not None
    return err.raw(2)


def registration(rt: Runtime, appointment: str = "RDV5001") -> Registration:
    with rt.db.session() as session:
        found = session.scalar(
            select(Registration).where(Registration.identifier_value == appointment)
        )
        assert found is not None
        return found


def prefetches(rt: Runtime, registration_id: str) -> dict[str, PrefetchState]:
    with rt.db.session() as session:
        rows = session.scalars(
            select(Prefetch).where(Prefetch.registration_id == registration_id)
        )
        return {p.study_uid: PrefetchState(p.state) for p in rows}


def add_prefetches(rt: Runtime, registration_id: str) -> None:
    """One scheduled, one queued and one running retrieve for the registration."""
    with rt.db.session() as session:
        for n, state in enumerate(
            [PrefetchState.SCHEDULED, PrefetchState.QUEUED, PrefetchState.RUNNING]
        ):
            uid = f"2.999.48.{n}"
            candidate = Candidate(
                registration_id=registration_id,
                site_name="site",
                study_uid=uid,
                patient_id_at_site="X",
                selected=True,
            )
            candidate.prefetch = Prefetch(
                registration_id=registration_id,
                site_name="site",
                study_uid=uid,
                state=state,
                due_at=utcnow() + timedelta(days=30),
            )
            session.add(candidate)


@pytest.fixture
def dispatched(rt: Runtime) -> list[int]:
    return []


@pytest.fixture
def port(rt: Runtime, dispatched: list[int]) -> object:
    receiver = Receiver(rt.db, rt.settings, on_committed=lambda: dispatched.append(1))
    with listening(rt, receiver=receiver) as listening_port:
        with Client(listening_port) as client:
            assert client.exchange(adt("ADT-1", PID3)).value("MSA-1") == "AA"
        yield listening_port


def test_rad48_s12_creates_registration_like_fhir_and_dispatches(
    rt: Runtime, port: int, dispatched: list[int], client: FlaskClient
) -> None:
    with Client(port) as mllp:
        ack = mllp.exchange(siu("S12-1", "S12", "RDV5001", PID3, "20250402143000"))
        assert ack.value("MSA-1") == "AA"
        # The dispatch runs once the ACK is sent, in the listener's thread.
        deadline = time.monotonic() + 5
        while not dispatched and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dispatched == [1]
        again = mllp.exchange(siu("S12-2", "S12", "RDV5001", PID3, "20250402143000"))
        assert again.value("MSA-1") == "AA"
        mllp.exchange(adt("ADT-2", PID3, event="A08"))
    assert dispatched == [1]
    reg = registration(rt)
    assert reg.status == "booked"
    assert reg.discovery == "pending"
    assert reg.meeting_start == datetime(2025, 4, 2, 14, 30, tzinfo=PARIS)
    assert reg.meeting_end == datetime(2025, 4, 2, 15, 30, tzinfo=PARIS)
    assert reg.identifier_system == "RDV_APP"
    resource = client.get(f"/fhir/Appointment/{reg.id}").get_json()
    assert resource["start"] == "2025-04-02T14:30:00+02:00"
    assert (
        resource["participant"][0]["actor"]["reference"] == f"Patient/{reg.patient_id}"
    )
    Appointment.model_validate({k: v for k, v in resource.items() if k != "meta"})
    (listed,) = client.get("/api/registrations").get_json()
    assert listed["board"] == "Location?identifier=CHU_BELLEVAL|RCP-ONCO"
    assert datetime.fromisoformat(listed["meetingStart"]) == reg.meeting_start


def test_rad48_s13_reschedules_meeting_and_due_retrieves(
    rt: Runtime, port: int
) -> None:
    later = (datetime.now(PARIS) + timedelta(days=60)).replace(
        hour=10, minute=0, second=0, microsecond=0
    )
    with Client(port) as mllp:
        mllp.exchange(siu("S12-3", "S12", "RDV5001", PID3, "20250402143000"))
        reg = registration(rt)
        add_prefetches(rt, reg.id)
        ack = mllp.exchange(
            siu("S13-1", "S13", "RDV5001", PID3, later.strftime("%Y%m%d%H%M%S"))
        )
    assert ack.value("MSA-1") == "AA"
    moved = registration(rt)
    assert moved.meeting_start == later
    assert moved.version == reg.version + 1
    with rt.db.session() as session:
        due = {
            p.state: p.due_at
            for p in session.scalars(
                select(Prefetch).where(Prefetch.registration_id == reg.id)
            )
        }
    assert due[PrefetchState.SCHEDULED] == later - timedelta(hours=24)
    assert due[PrefetchState.QUEUED] != later - timedelta(hours=24)


@pytest.mark.parametrize(
    ("event", "status"),
    [("S15", "cancelled"), ("S17", "entered-in-error"), ("S26", "noshow")],
)
def test_rad48_cancel_events_set_status_and_cancel_retrieves_not_started(
    rt: Runtime, port: int, event: str, status: str
) -> None:
    with Client(port) as mllp:
        mllp.exchange(siu("S12-4", "S12", "RDV5001", PID3, "20250402143000"))
        reg = registration(rt)
        add_prefetches(rt, reg.id)
        ack = mllp.exchange(siu(f"{event}-1", event, "RDV5001", PID3, "20250402143000"))
    assert ack.value("MSA-1") == "AA"
    cancelled = registration(rt)
    assert cancelled.status == status
    assert cancelled.discovery == "none"
    assert cancelled.resource["status"] == status
    assert prefetches(rt, reg.id) == {
        "2.999.48.0": PrefetchState.CANCELLED,
        "2.999.48.1": PrefetchState.CANCELLED,
        "2.999.48.2": PrefetchState.RUNNING,
    }


def test_rad48_unknown_appointment_answered_ae_204_at_sch2(port: int) -> None:
    with Client(port) as mllp:
        ack = mllp.exchange(siu("S15-9", "S15", "RDV9999", PID3, "20250402143000"))
    assert ack.value("MSA-1") == "AE"
    assert ack.segment("ERR").raw(2) == "SCH^1^2"  # type: ignore[union-attr]
    assert ack.value("ERR-3") == "204"


def test_rad48_unknown_patient_answered_ae_204_at_pid3(port: int) -> None:
    with Client(port) as mllp:
        ack = mllp.exchange(
            siu("S12-9", "S12", "RDV5002", "999^^^CHU_X^PI", "20250402143000")
        )
    assert (ack.value("MSA-1"), ack.value("ERR-3")) == ("AE", "204")
    assert ack.segment("ERR").raw(2) == "PID^1^3"  # type: ignore[union-attr]


def test_rad48_s12_same_key_other_meeting_refused_ae_205(
    rt: Runtime, port: int
) -> None:
    with Client(port) as mllp:
        mllp.exchange(siu("S12-5", "S12", "RDV5001", PID3, "20250402143000"))
        ack = mllp.exchange(siu("S12-6", "S12", "RDV5001", PID3, "20250403143000"))
    assert (ack.value("MSA-1"), ack.value("ERR-3")) == ("AE", "205")
    assert registration(rt).meeting_start == datetime(2025, 4, 2, 14, 30, tzinfo=PARIS)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("20250402143000", "2025-04-02T14:30:00+02:00"),
        ("20250330100000", "2025-03-30T10:00:00+02:00"),
        ("20251026023000+0100", "2025-10-26T02:30:00+01:00"),
        ("20250115083000", "2025-01-15T08:30:00+01:00"),
    ],
)
def test_c20_siu_local_time_read_in_paris_with_explicit_offset(
    rt: Runtime, port: int, client: FlaskClient, written: str, expected: str
) -> None:
    with Client(port) as mllp:
        ack = mllp.exchange(siu("C20-1", "S12", "RDV5001", PID3, written))
    assert ack.value("MSA-1") == "AA"
    reg = registration(rt)
    assert reg.meeting_start == datetime.fromisoformat(expected)
    assert client.get(f"/fhir/Appointment/{reg.id}").get_json()["start"] == expected


@pytest.mark.parametrize("written", ["20251026023000", "20250330023000"])
def test_c20_siu_ambiguous_or_skipped_local_time_refused_ae(
    rt: Runtime, port: int, written: str
) -> None:
    with Client(port) as mllp:
        ack = mllp.exchange(siu("C20-2", "S12", "RDV5003", PID3, written))
    assert (ack.value("MSA-1"), ack.value("ERR-3")) == ("AE", "102")
    assert ack.segment("ERR").raw(2) == "SCH^1^11^1^4"  # type: ignore[union-attr]
    with rt.db.session() as session:
        assert session.scalar(select(Registration)) is None


def test_rad48_each_event_is_audited_as_a_procedure_record(
    rt: Runtime, port: int
) -> None:
    from sqlalchemy import select

    from server.models import AuditRecord

    with Client(port) as mllp:
        for control, event, when in (
            ("A-1", "S12", "20250402143000"),
            ("A-2", "S14", "20250402153000"),
            ("A-3", "S15", "20250402153000"),
        ):
            ack = mllp.exchange(siu(control, event, "RDV5001", PID3, when))
            assert ack.value("MSA-1") == "AA"
    reg = registration(rt)
    with rt.db.session() as session:
        rows = session.scalars(
            select(AuditRecord)
            .where(AuditRecord.event_id == "110111")
            .order_by(AuditRecord.id)
        ).all()
        assert [r.event_action for r in rows] == ["C", "U", "D"]
        assert all(r.registration_id == reg.id for r in rows)
