"""The dispatcher: work recorded first, claimed once, kept when the broker is down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from server import tasks
from server.config import load_settings
from server.models import Patient, Prefetch, PrefetchState, Registration
from server.runtime import Runtime
from tests.peers import free_port


def seed(rt: Runtime, due: datetime) -> None:
    with rt.db.session() as session:
        patient = Patient(id="p1")
        reg = Registration(
            id="r1", status="booked", patient=patient, discovery="pending"
        )
        session.add(reg)
        session.flush()
        from server.models import Candidate

        cand = Candidate(
            registration_id="r1",
            site_name="a",
            study_uid="1.2.3",
            patient_id_at_site="A1",
            modalities=["CT"],
            selected=True,
        )
        cand.prefetch = Prefetch(
            id="f1",
            registration_id="r1",
            site_name="a",
            study_uid="1.2.3",
            due_at=due,
            state=PrefetchState.SCHEDULED,
        )
        session.add(cand)


def states(rt: Runtime) -> tuple[str, str]:
    with rt.db.session() as session:
        reg = session.get(Registration, "r1")
        pre = session.get(Prefetch, "f1")
        assert reg is not None and pre is not None
        return reg.discovery, pre.state


def test_dispatch_due_sends_each_piece_of_work_once(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(tasks, "_send", lambda task, row: sent.append((task.name, row)))
    seed(rt, datetime.now(UTC) - timedelta(minutes=1))
    assert tasks.dispatch_due() == {"discoveries": 1, "prefetches": 1}
    assert tasks.dispatch_due() == {"discoveries": 0, "prefetches": 0}
    assert sent == [("spiders.discover", "r1"), ("spiders.prefetch", "f1")]
    assert states(rt) == ("queued", "queued")


def test_dispatch_due_leaves_future_prefetch_scheduled(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "_send", lambda task, row: None)
    seed(rt, datetime.now(UTC) + timedelta(hours=20))
    assert tasks.dispatch_due() == {"discoveries": 1, "prefetches": 0}
    assert states(rt) == ("queued", "scheduled")


def test_dispatch_due_broker_down_keeps_work_for_next_dispatch(
    tmp_path: Path,
) -> None:
    from server import runtime

    settings = load_settings(
        {
            "SPIDERS_DATA_DIR": str(tmp_path),
            "SPIDERS_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        }
    )
    rt = Runtime(settings)
    runtime.install(rt)
    tasks.configure(settings)
    try:
        seed(rt, datetime.now(UTC) - timedelta(minutes=1))
        tasks.dispatch_due()
        assert states(rt) == ("pending", "scheduled")
    finally:
        runtime.install(None)
        rt.db.dispose()
