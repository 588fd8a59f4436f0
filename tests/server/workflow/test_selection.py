"""The automatic selection rule, the prefetch due time and a person's selection."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from flask.testing import FlaskClient

from server.config import load_settings
from server.errors import Conflict, InvalidResource
from server.models import (
    Board,
    Candidate,
    Patient,
    PatientIdentifier,
    PrefetchState,
    Registration,
)
from server.runtime import Runtime
from server.workflow import selection

TODAY = date(2026, 12, 3)


def candidate(
    cid: int,
    modalities: list[str],
    study_date: str,
    warning: str | None = None,
    uid: str | None = None,
) -> Candidate:
    return Candidate(
        id=cid,
        site_name="a",
        study_uid=uid or f"1.2.{cid}",
        patient_id_at_site="A1",
        modalities=modalities,
        study_date=study_date,
        num_instances=10,
        warning=warning,
    )


def registration(*candidates: Candidate, start: datetime | None = None) -> Registration:
    reg = Registration(
        id="r1", status="booked", patient_id="p1", meeting_start=start, discovery="done"
    )
    reg.candidates = list(candidates)
    return reg


def test_auto_select_takes_recent_studies_of_configured_modalities() -> None:
    reg = registration(
        candidate(1, ["CT"], "20261101"),
        candidate(2, ["MR", "SR"], "20250101"),
        candidate(3, ["CR"], "20261120"),
        candidate(4, ["CT"], "20241202"),  # one day too old for 24 months
        candidate(5, ["PT"], "20241203"),  # exactly 24 months: kept
        candidate(6, ["CT"], "20261120", warning="birth date differs"),
        candidate(7, ["CT"], None),
    )
    chosen = selection.auto_select(load_settings({}), reg, today=TODAY)
    assert [c.id for c in chosen] == [1, 2, 5]
    assert all(c.selected_by == "rule" for c in chosen)


def test_auto_select_same_study_at_two_sites_selected_once() -> None:
    reg = registration(
        candidate(1, ["CT"], "20261101", uid="1.2.9"),
        candidate(2, ["CT"], "20261101", uid="1.2.9"),
    )
    assert [
        c.id for c in selection.auto_select(load_settings({}), reg, today=TODAY)
    ] == [1]


def test_auto_select_months_zero_turns_rule_off() -> None:
    settings = load_settings({"SPIDERS_AUTO_SELECT_MONTHS": "0"})
    reg = registration(candidate(1, ["CT"], "20261101"))
    assert selection.auto_select(settings, reg, today=TODAY) == []
    assert not reg.candidates[0].selected


def test_due_time_is_meeting_minus_lead_or_now() -> None:
    settings = load_settings({"SPIDERS_PREFETCH_LEAD": "24h"})
    far = datetime.now(UTC) + timedelta(days=10)
    assert selection.due_time(settings, registration(start=far)) == far - timedelta(
        hours=24
    )
    soon = datetime.now(UTC) + timedelta(hours=2)
    due = selection.due_time(settings, registration(start=soon))
    assert abs((due - datetime.now(UTC)).total_seconds()) < 5


def test_change_selection_replaces_scheduled_prefetches() -> None:
    settings = load_settings({})
    reg = registration(
        candidate(1, ["CT"], "20261101"),
        candidate(2, ["CR"], "20261101"),
        start=datetime.now(UTC) + timedelta(days=5),
    )
    selection.auto_select(settings, reg, today=TODAY)
    selection.schedule(settings, reg)
    assert reg.candidates[0].prefetch is not None
    created = selection.change_selection(settings, reg, [2], by="api:test")
    assert [p.study_uid for p in created] == ["1.2.2"]
    assert reg.candidates[0].prefetch is None
    assert not reg.candidates[0].selected
    assert reg.candidates[1].selected_by == "api:test"


def test_change_selection_started_retrieve_cannot_be_deselected() -> None:
    settings = load_settings({})
    reg = registration(candidate(1, ["CT"], "20261101"))
    selection.auto_select(settings, reg, today=TODAY)
    selection.schedule(settings, reg)
    prefetch = reg.candidates[0].prefetch
    assert prefetch is not None
    prefetch.state = PrefetchState.RUNNING
    with pytest.raises(Conflict, match="running"):
        selection.change_selection(settings, reg, [], by="api:test")
    assert reg.candidates[0].selected


def test_change_selection_unknown_candidate_refused() -> None:
    reg = registration(candidate(1, ["CT"], "20261101"))
    with pytest.raises(InvalidResource, match=r"\[99\]"):
        selection.change_selection(load_settings({}), reg, [99], by="api:test")


def seed(rt: Runtime) -> None:
    with rt.db.session() as session:
        patient = Patient(id="p1", family_name="X")
        patient.identifiers.append(PatientIdentifier(system="2.999.1.1", value="A1"))
        session.add(patient)
        board = Board(location_reference="Location/rcp")
        reg = Registration(
            id="r1",
            status="booked",
            patient=patient,
            board=board,
            meeting_start=datetime.now(UTC) + timedelta(days=5),
            discovery="done",
        )
        reg.candidates = [
            candidate(1, ["CT"], "20261101"),
            candidate(2, ["US"], "20261101"),
        ]
        session.add(reg)
        selection.auto_select(rt.settings, reg)
        selection.schedule(rt.settings, reg)


def put(client: FlaskClient, body: object) -> object:
    return client.put(
        "/api/registrations/r1/selection",
        data=json.dumps(body),
        content_type="application/json",
    )


def test_api_selection_change_before_due_time(client: FlaskClient, rt: Runtime) -> None:
    seed(rt)
    rsp = put(client, {"candidates": [2]})
    assert rsp.status_code == 200
    body = rsp.get_json()
    assert [(c["id"], c["selected"]) for c in body["candidates"]] == [
        (1, False),
        (2, True),
    ]
    assert body["candidates"][1]["prefetch"]["state"] == "scheduled"
    assert body["state"] == "prefetching"


def test_api_selection_bad_body_400(client: FlaskClient, rt: Runtime) -> None:
    seed(rt)
    for body in ({"candidates": "1"}, {"candidates": [True]}, [1], None):
        rsp = put(client, body)
        assert rsp.status_code == 400
        assert rsp.get_json()["resourceType"] == "OperationOutcome"


def test_api_selection_after_start_409(client: FlaskClient, rt: Runtime) -> None:
    seed(rt)
    with rt.db.session() as session:
        cand = session.get(Candidate, 1)
        assert cand is not None and cand.prefetch is not None
        cand.prefetch.state = PrefetchState.READY
    rsp = put(client, {"candidates": [2]})
    assert rsp.status_code == 409
    assert "ready" in rsp.get_json()["issue"][0]["diagnostics"]
