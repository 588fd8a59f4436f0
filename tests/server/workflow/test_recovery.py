"""Interrupted work is sent again; a coordinator can ask for a retry; a site
that could not be queried never reads as "nothing to fetch"."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from server import tasks
from server.models import (
    Board,
    Candidate,
    Patient,
    PatientIdentifier,
    Prefetch,
    PrefetchState,
    Registration,
    SiteQuery,
)
from server.runtime import Runtime
from server.workflow import selection
from server.workflow.status import registration_state
from tests.conftest import ALL_ROLES, token_for


def seed(rt: Runtime, prefetch_state: str, discovery: str = "done") -> None:
    with rt.db.session() as session:
        patient = Patient(id="p1", family_name="X")
        patient.identifiers.append(PatientIdentifier(system="2.999.1.1", value="A1"))
        reg = Registration(
            id="r1",
            status="booked",
            patient=patient,
            board=Board(location_reference="Location/rcp"),
            meeting_start=datetime.now(UTC) + timedelta(days=1),
            discovery=discovery,
        )
        cand = Candidate(
            site_name="a",
            study_uid="1.2.3",
            patient_id_at_site="A1",
            modalities=["CT"],
            selected=True,
            selected_by="rule",
            num_instances=10,
        )
        cand.prefetch = Prefetch(
            id="f1",
            registration_id="r1",
            site_name="a",
            study_uid="1.2.3",
            due_at=datetime.now(UTC),
            state=prefetch_state,
            attempts=3,
        )
        reg.candidates.append(cand)
        session.add(reg)


def state_of(rt: Runtime) -> tuple[str, str, str | None]:
    with rt.db.session() as session:
        reg = session.get(Registration, "r1")
        pre = session.get(Prefetch, "f1")
        assert reg is not None and pre is not None
        return reg.discovery, pre.state, pre.reason


def test_recover_interrupted_sends_running_work_again(rt: Runtime) -> None:
    seed(rt, PrefetchState.RUNNING, discovery="running")
    assert tasks.recover_interrupted() == {"prefetches": 1, "discoveries": 1}
    assert state_of(rt) == ("pending", "scheduled", "resumed after a restart")
    assert tasks.recover_interrupted() == {"prefetches": 0, "discoveries": 0}


def test_retry_endpoint_reschedules_failed_retrieves_and_queries_again(
    client: FlaskClient, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    monkeypatch.setattr(tasks, "_send", lambda task, row: sent.append(task.name))
    seed(rt, PrefetchState.PARTIAL)
    rsp = client.post("/api/registrations/r1/retry")
    assert rsp.status_code == 202
    assert rsp.get_json()["retry"] == {"discoveries": 1, "prefetches": 1}
    assert sorted(sent) == ["spiders.discover", "spiders.prefetch"]
    with rt.db.session() as session:
        pre = session.get(Prefetch, "f1")
        assert pre is not None and pre.attempts == 0


def test_retry_endpoint_unknown_registration_404(client: FlaskClient) -> None:
    assert client.post("/api/registrations/nope/retry").status_code == 404


def test_state_failed_site_without_studies_is_failed_not_no_studies() -> None:
    reg = Registration(status="booked", discovery="done")
    reg.site_queries = [SiteQuery(site_name="a", status="failed", reason="down")]
    assert registration_state(reg) == "failed"
    reg.site_queries = [SiteQuery(site_name="a", status="ok")]
    assert registration_state(reg) == "no-studies"


def test_state_ready_studies_with_a_failed_site_is_partial() -> None:
    reg = Registration(status="booked", discovery="done")
    cand = Candidate(
        site_name="a",
        study_uid="1.2",
        patient_id_at_site="A1",
        modalities=["CT"],
        selected=True,
    )
    cand.prefetch = Prefetch(state=PrefetchState.READY, due_at=datetime.now(UTC))
    reg.candidates = [cand]
    reg.site_queries = [
        SiteQuery(site_name="a", status="ok"),
        SiteQuery(site_name="b", status="failed"),
    ]
    assert registration_state(reg) == "partial"


def test_rule_leaves_a_persons_deselection_alone(rt: Runtime) -> None:
    reg = Registration(status="booked", discovery="done")
    cand = Candidate(
        id=1,
        site_name="a",
        study_uid="1.2",
        patient_id_at_site="A1",
        modalities=["CT"],
        study_date="20261101",
    )
    reg.candidates = [cand]
    selection.auto_select(rt.settings, reg)
    selection.change_selection(rt.settings, reg, [], by="user:dr")
    assert selection.auto_select(rt.settings, reg) == []
    assert not cand.selected


def test_same_appointment_sent_at_once_registers_one_case(
    app: Flask, rt: Runtime
) -> None:
    token = token_for(rt, *ALL_ROLES)
    headers = {"Authorization": f"Bearer {token}"}
    with rt.db.session() as session:
        patient = Patient(id="p1", family_name="X")
        patient.identifiers.append(PatientIdentifier(system="2.999.1.1", value="A1"))
        session.add(patient)
    body = json.dumps(
        {
            "resourceType": "Appointment",
            "identifier": [{"system": "urn:oid:2.999.20.1", "value": "RACE-1"}],
            "status": "booked",
            "start": "2030-01-01T10:00:00+01:00",
            "end": "2030-01-01T11:00:00+01:00",
            "participant": [
                {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
                {"actor": {"reference": "Location/new-board"}, "status": "accepted"},
            ],
        }
    )
    statuses: list[int] = []
    ids: set[Any] = set()
    barrier = threading.Barrier(8)

    def send() -> None:
        client = app.test_client()
        barrier.wait()
        rsp = client.post(
            "/fhir/Appointment",
            data=body,
            headers=headers,
            content_type="application/fhir+json",
        )
        statuses.append(rsp.status_code)
        ids.add(rsp.get_json().get("id"))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 7 + [201]
    assert len(ids) == 1
    with rt.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Registration)) == 1


def test_running_prefetch_reports_what_the_cache_already_holds(
    client: FlaskClient, rt: Runtime
) -> None:
    from server.models import CachedInstance

    seed(rt, PrefetchState.RUNNING)
    with rt.db.session() as session:
        for n in range(4):
            session.add(
                CachedInstance(
                    sop_instance_uid=f"1.2.3.{n}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    study_uid="1.2.3",
                    series_uid="1.2.3.9",
                    transfer_syntax="1.2.840.10008.1.2.1",
                    path=f"x/{n}.dcm",
                    size=1,
                )
            )
    body = client.get("/api/registrations/r1").get_json()
    prefetch = body["candidates"][0]["prefetch"]
    assert (prefetch["state"], prefetch["receivedInstances"]) == ("running", 4)


def test_study_being_retrieved_for_another_case_not_asked_twice(rt: Runtime) -> None:
    from server.workflow import prefetch as prefetch_workflow

    seed(rt, PrefetchState.RUNNING)
    with rt.db.session() as session:
        reg = Registration(
            id="r2", status="booked", patient_id="p1", board_id=None, discovery="done"
        )
        cand = Candidate(
            site_name="a",
            study_uid="1.2.3",
            patient_id_at_site="A1",
            modalities=["CT"],
            selected=True,
            selected_by="rule",
        )
        cand.prefetch = Prefetch(
            id="f2",
            registration_id="r2",
            site_name="a",
            study_uid="1.2.3",
            due_at=datetime.now(UTC),
            state=PrefetchState.QUEUED,
        )
        reg.candidates.append(cand)
        session.add(reg)
    assert not prefetch_workflow.claim(rt.db, "f2")
    with rt.db.session() as session:
        waiting = session.get(Prefetch, "f2")
        assert waiting is not None
        assert waiting.state == PrefetchState.SCHEDULED
        assert waiting.reason == "the study is being retrieved for another case"
        assert waiting.due_at > datetime.now(UTC)
        session.get(Prefetch, "f1").state = PrefetchState.READY  # type: ignore[union-attr]
        waiting.state = PrefetchState.QUEUED
    assert prefetch_workflow.claim(rt.db, "f2")


def test_study_already_cached_is_ready_without_a_retrieve(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.models import CachedInstance
    from server.workflow import prefetch as prefetch_workflow

    def no_retrieve(*_: object, **__: object) -> None:
        raise AssertionError("the study was asked for again")

    monkeypatch.setattr(prefetch_workflow, "_retrieve", no_retrieve)
    seed(rt, PrefetchState.QUEUED)
    with rt.db.session() as session:
        session.get(Prefetch, "f1").expected_instances = 3  # type: ignore[union-attr]
        for n in range(3):
            session.add(
                CachedInstance(
                    sop_instance_uid=f"1.2.3.{n}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    study_uid="1.2.3",
                    series_uid="1.2.3.9",
                    transfer_syntax="1.2.840.10008.1.2.1",
                    path=f"x/{n}.dcm",
                    size=1,
                )
            )
    assert prefetch_workflow.claim(rt.db, "f1")
    state = prefetch_workflow.run(rt.settings, rt.db, rt.archive, "f1")
    assert state == PrefetchState.READY


def test_dispatch_due_sends_a_prefetch_whose_worker_lease_expired(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(tasks, "_send", lambda task, row: sent.append((task.name, row)))
    seed(rt, PrefetchState.RUNNING)
    with rt.db.session() as session:
        running = session.get(Prefetch, "f1")
        assert running is not None
        running.worker = "gone-host:4242"
        running.lease_expires_at = datetime.now(UTC) - timedelta(seconds=1)
    assert tasks.dispatch_due() == {"discoveries": 0, "prefetches": 1}
    assert sent == [("spiders.prefetch", "f1")]
    assert state_of(rt) == ("done", "queued", "resumed: the worker running it stopped")
    assert tasks.dispatch_due() == {"discoveries": 0, "prefetches": 0}
