"""Late cases: checked once at the deadline, reason kept, event recorded and shown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from server.models import (
    Board,
    Candidate,
    Event,
    Patient,
    PatientIdentifier,
    Prefetch,
    PrefetchSeries,
    PrefetchState,
    Registration,
    SiteQuery,
)
from server.runtime import Runtime
from server.workflow import deadlines

MEETING = datetime(2025, 3, 4, 14, 0, tzinfo=UTC)
DEADLINE = MEETING - timedelta(hours=1)
STUDY_OK = "2.25.7001"
STUDY_PARTIAL = "2.25.123456789012345"


def seed(
    rt: Runtime,
    status: str = "booked",
    partial: bool = True,
    created: datetime = MEETING - timedelta(days=7),
) -> None:
    with rt.db.session() as session:
        patient = Patient(id="p1", family_name="X")
        patient.identifiers.append(PatientIdentifier(system="2.999.1.1", value="A1"))
        reg = Registration(
            id="r1",
            status=status,
            patient=patient,
            board=Board(location_reference="Location/rcp-thorax"),
            meeting_start=MEETING,
            discovery="done",
            created_at=created,
        )
        reg.site_queries = [
            SiteQuery(site_name="chu-nord", status="ok", studies_found=1),
            SiteQuery(site_name="clinique-sud", status="ok", studies_found=1),
        ]
        for site, uid, state in (
            ("chu-nord", STUDY_OK, PrefetchState.READY),
            (
                "clinique-sud",
                STUDY_PARTIAL,
                PrefetchState.PARTIAL if partial else PrefetchState.READY,
            ),
        ):
            cand = Candidate(
                site_name=site,
                study_uid=uid,
                patient_id_at_site="A1",
                modalities=["CT"],
                selected=True,
                selected_by="rule",
            )
            cand.prefetch = Prefetch(
                id=f"f-{site}",
                registration_id="r1",
                site_name=site,
                study_uid=uid,
                due_at=MEETING - timedelta(hours=24),
                state=state,
                expected_instances=9,
                received_instances=9 if state == PrefetchState.READY else 5,
                reason=None
                if state == PrefetchState.READY
                else "5 of 9 instance(s) received (1 of 2 series incomplete); "
                "the association was aborted or timed out",
            )
            cand.prefetch.series = [
                PrefetchSeries(series_uid=f"{uid}.1", expected=5, received=5),
                PrefetchSeries(
                    series_uid=f"{uid}.2",
                    expected=4,
                    received=4 if state == PrefetchState.READY else 0,
                ),
            ]
            reg.candidates.append(cand)
        session.add(reg)


REASON = (
    "not ready at the deadline 2025-03-04T13:00+00:00 (meeting minus 1 h), "
    "state partial; 1 of 2 selected studies not ready; site clinique-sud study "
    "...456789012345: partial, 5 of 9 instance(s), 1 series incomplete (5 of 9 "
    "instance(s) received (1 of 2 series incomplete); the association was "
    "aborted or timed out)"
)


def test_deadline_is_meeting_minus_margin(rt: Runtime) -> None:
    reg = Registration(meeting_start=MEETING)
    assert deadlines.deadline(rt.settings, reg) == DEADLINE
    assert deadlines.deadline(rt.settings, Registration()) is None


def test_check_due_before_the_deadline_checks_nothing(rt: Runtime) -> None:
    seed(rt)
    before = DEADLINE - timedelta(seconds=1)
    assert deadlines.check_due(rt.settings, rt.db, now=before) == []
    with rt.db.session() as session:
        reg = session.get(Registration, "r1")
        assert reg is not None and reg.late_checked_at is None


def test_check_due_missing_study_flags_late_once_with_event(rt: Runtime) -> None:
    seed(rt)
    at = DEADLINE + timedelta(seconds=2)
    assert deadlines.check_due(rt.settings, rt.db, now=at) == ["r1"]
    assert deadlines.check_due(rt.settings, rt.db, now=at) == []
    with rt.db.session() as session:
        reg = session.get(Registration, "r1")
        assert reg is not None
        assert reg.late_checked_at == at
        assert reg.late_reason == REASON
        late = {c.prefetch.id: c.prefetch.late for c in reg.candidates if c.prefetch}
        assert late == {"f-chu-nord": False, "f-clinique-sud": True}
        (event,) = session.query(Event).all()
        assert (event.kind, event.registration_id) == ("registration.late", "r1")
        assert event.payload == {
            "appointment": "Appointment/r1",
            "board": "Location/rcp-thorax",
            "meetingStart": "2025-03-04T14:00:00+00:00",
            "deadline": "2025-03-04T13:00:00+00:00",
            "state": "partial",
            "reason": REASON,
            "studies": [
                {
                    "site": "clinique-sud",
                    "studyInstanceUID": STUDY_PARTIAL,
                    "state": "partial",
                    "expectedInstances": 9,
                    "receivedInstances": 5,
                    "incompleteSeries": [f"{STUDY_PARTIAL}.2"],
                    "reason": "5 of 9 instance(s) received (1 of 2 series "
                    "incomplete); the association was aborted or timed out",
                }
            ],
        }


def test_check_due_every_study_ready_not_late(rt: Runtime) -> None:
    seed(rt, partial=False)
    assert deadlines.check_due(rt.settings, rt.db, now=DEADLINE) == []
    with rt.db.session() as session:
        reg = session.get(Registration, "r1")
        assert reg is not None
        assert (reg.late_checked_at, reg.late_reason) == (DEADLINE, None)
        assert session.query(Event).count() == 0


@pytest.mark.parametrize("status", ["cancelled", "noshow"])
def test_check_due_inactive_registration_never_late(rt: Runtime, status: str) -> None:
    seed(rt, status=status)
    assert deadlines.check_due(rt.settings, rt.db, now=MEETING) == []


def test_check_due_meeting_long_past_marked_checked_without_event(
    rt: Runtime,
) -> None:
    seed(rt)
    at = MEETING + timedelta(days=2)
    assert deadlines.check_due(rt.settings, rt.db, now=at) == []
    with rt.db.session() as session:
        assert session.query(Event).count() == 0


@pytest.mark.parametrize("after", [timedelta(minutes=30), timedelta(days=3)])
def test_case_registered_after_its_deadline_is_late_at_once(
    rt: Runtime, after: timedelta
) -> None:
    created = DEADLINE + after
    seed(rt, created=created)
    with rt.db.session() as session:
        reg = session.get(Registration, "r1")
        assert reg is not None
        reg.discovery = "running"
    now = created + timedelta(seconds=5)
    assert deadlines.check_due(rt.settings, rt.db, now=now) == ["r1"]
    with rt.db.session() as session:
        reg = session.get(Registration, "r1")
        assert reg is not None and reg.late_reason is not None
        assert reg.late_reason.startswith(
            "registered after its deadline 2025-03-04T13:00+00:00 (meeting minus "
            "1 h), state discovering; discovery running; 1 of 2 selected studies not "
            "ready; site clinique-sud study ...456789012345: partial"
        )
        (event,) = session.query(Event).all()
        assert event.payload["reason"] == reg.late_reason


def test_api_shows_late_reason_deadline_and_event_feed(
    rt: Runtime, client: FlaskClient
) -> None:
    seed(rt)
    deadlines.check_due(rt.settings, rt.db, now=DEADLINE + timedelta(seconds=2))
    body = client.get("/api/registrations/r1").get_json()
    assert body["deadline"] == "2025-03-04T13:00:00+00:00"
    assert body["late"] == REASON
    partial = next(c for c in body["candidates"] if c["site"] == "clinique-sud")
    assert partial["prefetch"]["late"] is True
    assert partial["prefetch"]["incompleteSeries"] == [f"{STUDY_PARTIAL}.2"]
    feed = client.get("/api/events?since=0").get_json()
    assert [e["kind"] for e in feed["events"]] == ["registration.late"]
    assert feed["events"][0]["registration"] == "r1"
    assert feed["events"][0]["reason"] == REASON
    assert feed["next"] == feed["events"][0]["id"]
    after = client.get(f"/api/events?since={feed['next']}").get_json()
    assert after == {"events": [], "next": feed["next"]}
    task = client.get("/fhir/Task/f-clinique-sud").get_json()
    assert task["note"] == [
        {"text": "late: not in the cache at the registration's deadline"}
    ]


@pytest.mark.parametrize("since", ["-1", "abc", "1e3", "²"])
def test_api_events_bad_since_is_400(client: FlaskClient, since: str) -> None:
    rsp = client.get("/api/events", query_string={"since": since})
    assert rsp.status_code == 400
    assert rsp.get_json()["resourceType"] == "OperationOutcome"


def test_cli_status_prints_the_late_reason(rt: Runtime) -> None:
    from server.cli import main

    seed(rt)
    deadlines.check_due(rt.settings, rt.db, now=DEADLINE + timedelta(seconds=2))
    result = CliRunner().invoke(
        main,
        ["status"],
        env={"SPIDERS_DATA_DIR": str(rt.settings.data_dir), "COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert f"  late: {REASON}" in result.output.splitlines()
    assert "partial (late)" in result.output


def test_cli_status_case_ready_after_being_late(rt: Runtime) -> None:
    from server.cli import main

    seed(rt, partial=False)
    with rt.db.session() as session:
        reg = session.get(Registration, "r1")
        assert reg is not None
        reg.late_reason = REASON
    result = CliRunner().invoke(
        main,
        ["status"],
        env={"SPIDERS_DATA_DIR": str(rt.settings.data_dir), "COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].endswith("  ready (was late)")
