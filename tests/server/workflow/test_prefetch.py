"""How a prefetch concludes: the cache's count decides, retries only what may pass."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from ihe.qr.rad16_retrieve_images import MoveOutcome
from server.config import (
    Directory,
    MaintenanceWindow,
    Settings,
    Site,
    load_settings,
)
from server.errors import AssociationFailed, ConfigurationError
from server.models import (
    CachedInstance,
    Candidate,
    Patient,
    Prefetch,
    PrefetchState,
    Registration,
    SiteSlot,
    SiteSlotUse,
)
from server.runtime import Runtime
from server.workflow import prefetch as prefetch_workflow
from server.workflow import site_slots
from server.workflow.prefetch import MAX_ATTEMPTS, conclude, incomplete_series


def prefetch(expected: int | None, attempts: int = 1) -> Prefetch:
    return Prefetch(
        id="x",
        registration_id="r",
        site_name="a",
        study_uid="1.2",
        due_at=datetime.now(UTC),
        expected_instances=expected,
        attempts=attempts,
        received_instances=0,
    )


def test_conclude_all_instances_in_cache_is_ready_whatever_the_status() -> None:
    p = prefetch(120)
    assert conclude(p, MoveOutcome("unable_to_process", status=0xC001), 120) == "ready"
    assert p.reason is None


def test_conclude_success_status_with_instances_missing_is_never_ready() -> None:
    # Field case C14 M4: 0x0000 without counters, 95 of 120 arrived.
    p = prefetch(120, attempts=MAX_ATTEMPTS)
    state = conclude(p, MoveOutcome("success", status=0x0000), 95)
    assert state == PrefetchState.PARTIAL
    assert p.reason == "95 of 120 instance(s) received"


def test_conclude_move_destination_unknown_fails_without_retry() -> None:
    p = prefetch(120)
    outcome = MoveOutcome(
        "move_destination_unknown",
        status=0xA801,
        error_comment="SITE does not know move destination X",
    )
    assert conclude(p, outcome, 0) == PrefetchState.FAILED
    assert p.reason == (
        "0 of 120 instance(s) received; the site does not know this cache's AE "
        "title: SITE does not know move destination X (0xA801)"
    )


@pytest.mark.parametrize(
    "kind", ["association_aborted", "unable_to_process", "partial"]
)
def test_conclude_transient_failure_retried_with_backoff(kind: str) -> None:
    p = prefetch(120, attempts=1)
    assert conclude(p, MoveOutcome(kind), 10) == PrefetchState.SCHEDULED
    assert (p.due_at - datetime.now(UTC)).total_seconds() > 15
    assert (p.reason or "").startswith("retry 2 in 20 s")
    p2 = prefetch(120, attempts=2)
    conclude(p2, MoveOutcome(kind), 10)
    assert (p2.reason or "").startswith("retry 3 in 40 s")


def test_conclude_last_attempt_reports_partial_with_counts() -> None:
    p = prefetch(120, attempts=MAX_ATTEMPTS)
    state = conclude(p, MoveOutcome("partial", status=0xB000, failed=2), 118)
    assert state == PrefetchState.PARTIAL
    assert p.reason == (
        "118 of 120 instance(s) received; the site could not send "
        "2 instance(s) (0xB000)"
    )


def test_conclude_no_count_from_site_uses_move_counter() -> None:
    p = prefetch(None)
    assert conclude(p, MoveOutcome("success", status=0, completed=30), 30) == "ready"
    assert p.expected_instances == 30


def test_conclude_no_count_at_all_cannot_be_ready() -> None:
    p = prefetch(None, attempts=MAX_ATTEMPTS)
    assert conclude(p, MoveOutcome("success", status=0), 12) == PrefetchState.PARTIAL
    assert p.reason == "12 instance(s) received; the site announced no count"


# Series-level completeness, maintenance windows, slots and leases, in run().

SITE_NAME = "chu-nord"
STUDY = "2.25.100"
SERIES = ("2.25.100.1", "2.25.100.2", "2.25.100.3")


def _site(**kwargs: object) -> Site:
    values: dict[str, object] = {
        "name": SITE_NAME,
        "ae_title": "CHU_NORD",
        "host": "127.0.0.1",
        "port": 1,
        "patient_id_domain": "2.999.1.1",
    }
    values.update(kwargs)
    return Site(**values)  # type: ignore[arg-type]


def _with_site(rt: Runtime, site: Site) -> Settings:
    return replace(rt.settings, directory=Directory(sites=(site,)))


def _seed(rt: Runtime, prefetch_id: str = "f1", study: str = STUDY) -> None:
    with rt.db.session() as session:
        if session.get(Patient, "p1") is None:
            session.add(Patient(id="p1", family_name="X"))
        reg = Registration(
            id=f"r-{prefetch_id}",
            status="booked",
            patient_id="p1",
            meeting_start=datetime.now(UTC) + timedelta(hours=3),
            discovery="done",
        )
        cand = Candidate(
            site_name=SITE_NAME,
            study_uid=study,
            patient_id_at_site="A1",
            modalities=["CT"],
            selected=True,
            selected_by="rule",
            num_instances=9,
        )
        cand.prefetch = Prefetch(
            id=prefetch_id,
            registration_id=reg.id,
            site_name=SITE_NAME,
            study_uid=study,
            due_at=datetime.now(UTC),
            state=PrefetchState.QUEUED,
            expected_instances=9,
        )
        reg.candidates.append(cand)
        session.add(reg)


def _cache(rt: Runtime, series_uid: str, count: int, study: str = STUDY) -> None:
    _cache_uids(rt, series_uid, [f"{series_uid}.{n + 1}" for n in range(count)], study)


def _cache_uids(
    rt: Runtime, series_uid: str, sop_uids: list[str], study: str = STUDY
) -> None:
    with rt.db.session() as session:
        for sop_uid in sop_uids:
            session.add(
                CachedInstance(
                    sop_instance_uid=sop_uid,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    study_uid=study,
                    series_uid=series_uid,
                    transfer_syntax="1.2.840.10008.1.2.1",
                    path=f"x/{series_uid}/{sop_uid}.dcm",
                    size=1,
                )
            )


class FakeTransport:
    """Stands for the site: series counts, and what a retrieve delivers."""

    def __init__(self, rt: Runtime, counts: dict[str, int] | None) -> None:
        self.rt = rt
        self.counts = counts
        self.asked: list[list[str] | None] = []
        self.asked_instances: list[dict[str, list[str]] | None] = []
        self.listed: list[list[str]] = []
        self.deliver: dict[str, int] = {}
        self.outcome = MoveOutcome("success", status=0)
        # The site's SOP Instance UIDs of each series, as _cache names them.
        self.instances = {
            uid: [f"{uid}.{n + 1}" for n in range(count)]
            for uid, count in (counts or {}).items()
        }
        self.unreachable = False

    def series(self, settings: Settings, site: Site, study_uid: str) -> Any:
        if self.unreachable:
            raise AssociationFailed(
                "no association with CHU_NORD: refused, unreachable or timed out"
            )
        return self.counts

    def list_instances(
        self, settings: Settings, site: Site, study_uid: str, series_uids: list[str]
    ) -> dict[str, list[str]]:
        self.listed.append(list(series_uids))
        return {
            uid: self.instances[uid] for uid in series_uids if uid in self.instances
        }

    def retrieve(
        self,
        settings: Settings,
        archive: object,
        site: Site,
        study_uid: str,
        series_uids: list[str] | None = None,
        instance_uids: dict[str, list[str]] | None = None,
        **sharing: object,
    ) -> MoveOutcome:
        self.asked.append(series_uids)
        self.asked_instances.append(
            None if instance_uids is None else dict(instance_uids)
        )
        for uid, count in self.deliver.items():
            _cache(self.rt, uid, count)
        self.deliver = {}
        for uid, sops in (instance_uids or {}).items():
            _cache_uids(self.rt, uid, sops)
        return self.outcome


@pytest.fixture
def transport(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> FakeTransport:
    fake = FakeTransport(rt, {SERIES[0]: 2, SERIES[1]: 3, SERIES[2]: 4})
    monkeypatch.setattr(prefetch_workflow, "_site_series", fake.series)
    monkeypatch.setattr(prefetch_workflow, "_site_instances", fake.list_instances)
    monkeypatch.setattr(prefetch_workflow, "_retrieve", fake.retrieve)
    return fake


def _state(rt: Runtime, prefetch_id: str = "f1") -> Prefetch:
    with rt.db.session() as session:
        found = session.get(Prefetch, prefetch_id)
        assert found is not None
        found.series  # noqa: B018 - loaded before the session closes
        return found


def test_incomplete_series_lists_only_series_short_of_the_site_count() -> None:
    expected = {"1.1": 2, "1.2": 3, "1.3": 4}
    assert incomplete_series(expected, {"1.1": 2, "1.2": 1, "9.9": 7}) == [
        "1.2",
        "1.3",
    ]
    assert incomplete_series(expected, {"1.1": 5, "1.2": 3, "1.3": 4}) == []


def test_run_every_series_complete_is_ready_with_series_counts(
    rt: Runtime, transport: FakeTransport
) -> None:
    _seed(rt)
    transport.deliver = {SERIES[0]: 2, SERIES[1]: 3, SERIES[2]: 4}
    settings = _with_site(rt, _site())
    assert prefetch_workflow.claim(rt.db, "f1")
    assert prefetch_workflow.run(settings, rt.db, rt.archive, "f1") == "ready"
    assert transport.asked == [None]  # nothing held: the whole study
    done = _state(rt)
    assert (done.expected_instances, done.received_instances) == (9, 9)
    assert [(s.series_uid, s.expected, s.received) for s in done.series] == [
        (SERIES[0], 2, 2),
        (SERIES[1], 3, 3),
        (SERIES[2], 4, 4),
    ]


@pytest.mark.parametrize("change", ["deselected", "flagged"])
def test_run_candidate_deselected_or_flagged_since_is_not_fetched(
    rt: Runtime, transport: FakeTransport, change: str
) -> None:
    _seed(rt)
    with rt.db.session() as session:
        (cand,) = session.scalars(select(Candidate)).all()
        if change == "deselected":
            cand.selected = False
        else:
            cand.warning = "birth date differs from the patient index"
    settings = _with_site(rt, _site())
    assert prefetch_workflow.claim(rt.db, "f1")
    assert prefetch_workflow.run(settings, rt.db, rt.archive, "f1") == "cancelled"
    assert transport.asked == []
    assert _state(rt).reason == "not retrieved: deselected or awaiting identity review"


@pytest.mark.parametrize("where", ["cache", "another case"])
def test_run_study_uid_of_another_patient_flagged_not_fetched(
    rt: Runtime, transport: FakeTransport, where: str
) -> None:
    from server import site_directory
    from server.models import PatientIdentifier
    from server.workflow.vigilance import UID_COLLISION, needs_review

    site = _site()
    site_directory.sync(rt.db, Directory(sites=(site,)))
    with rt.db.session() as session:
        other = Patient(id="p2", family_name="Y")
        other.identifiers.append(PatientIdentifier(system="2.999.1.1", value="Z9"))
        session.add(other)
    _seed(rt)
    if where == "cache":
        with rt.db.session() as session:
            session.add(
                CachedInstance(
                    sop_instance_uid="2.25.999.1",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    study_uid=STUDY,
                    series_uid="2.25.999",
                    transfer_syntax="1.2.840.10008.1.2.1",
                    path="x/y.dcm",
                    size=1,
                    source_ae="CHU_NORD",
                    patient_id="Z9",
                )
            )
    else:
        _seed(rt, "f2")
        with rt.db.session() as session:
            reg = session.get(Registration, "r-f2")
            assert reg is not None
            reg.patient_id = "p2"
            f2 = session.get(Prefetch, "f2")
            assert f2 is not None
            f2.state = PrefetchState.QUEUED
    settings = _with_site(rt, site)
    assert prefetch_workflow.claim(rt.db, "f1")
    assert prefetch_workflow.run(settings, rt.db, rt.archive, "f1") == "failed"
    assert transport.asked == []
    assert _state(rt).reason == UID_COLLISION
    with rt.db.session() as session:
        cand = session.scalars(
            select(Candidate).where(Candidate.registration_id == "r-f1")
        ).one()
        assert (cand.selected, cand.warning, needs_review(cand)) == (
            False,
            UID_COLLISION,
            True,
        )
        if where == "another case":
            # The other patient's case is told too, its retrieve not started.
            theirs = session.scalars(
                select(Candidate).where(Candidate.registration_id == "r-f2")
            ).one()
            assert (theirs.warning, theirs.prefetch.state) == (
                UID_COLLISION,
                PrefetchState.CANCELLED,
            )
        from server.errors import Conflict
        from server.workflow.vigilance import review

        with pytest.raises(Conflict, match="the site must correct the UID"):
            review(cand, decision="confirm", by="user:x")
        review(cand, decision="reject", by="user:x")


def test_run_same_patient_cached_from_another_site_counts_as_held(
    rt: Runtime, transport: FakeTransport
) -> None:
    from server import site_directory
    from server.models import PatientIdentifier

    here, there = (
        _site(),
        _site(name="chu-sud", ae_title="CHU_SUD", patient_id_domain="2.999.1.2"),
    )
    site_directory.sync(rt.db, Directory(sites=(here, there)))
    _seed(rt)
    with rt.db.session() as session:
        patient = session.get(Patient, "p1")
        assert patient is not None
        patient.identifiers.append(PatientIdentifier(system="2.999.1.2", value="S1"))
        for n, (series, count) in enumerate(zip(SERIES, (2, 3, 4), strict=True)):
            for k in range(count):
                session.add(
                    CachedInstance(
                        sop_instance_uid=f"{series}.{k + 1}",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                        study_uid=STUDY,
                        series_uid=series,
                        transfer_syntax="1.2.840.10008.1.2.1",
                        path=f"x/{n}/{k}.dcm",
                        size=1,
                        source_ae="CHU_SUD",
                        patient_id="S1",
                    )
                )
    settings = _with_site(rt, here)
    assert prefetch_workflow.claim(rt.db, "f1")
    assert prefetch_workflow.run(settings, rt.db, rt.archive, "f1") == "ready"
    assert transport.asked == []


def test_run_retry_asks_only_for_the_series_still_incomplete(
    rt: Runtime, transport: FakeTransport
) -> None:
    _seed(rt)
    settings = _with_site(rt, _site())
    # First attempt: the association drops after series 1 and part of series 2.
    transport.deliver = {SERIES[0]: 2}
    transport.outcome = MoveOutcome("association_aborted")
    assert prefetch_workflow.claim(rt.db, "f1")
    assert prefetch_workflow.run(settings, rt.db, rt.archive, "f1") == "scheduled"
    first = _state(rt)
    assert first.reason == ("retry 2 in 20 s: the association was aborted or timed out")
    assert [s.received for s in first.series] == [2, 0, 0]
    # Second attempt: only series 2 and 3 are asked for.
    with rt.db.session() as session:
        session.get(Prefetch, "f1").state = PrefetchState.QUEUED  # type: ignore[union-attr]
    transport.deliver = {SERIES[1]: 3, SERIES[2]: 4}
    transport.outcome = MoveOutcome("success", status=0)
    assert prefetch_workflow.claim(rt.db, "f1")
    assert prefetch_workflow.run(settings, rt.db, rt.archive, "f1") == "ready"
    assert transport.asked == [None, [SERIES[1], SERIES[2]]]


def test_run_series_complete_at_the_site_count_not_asked_at_all(
    rt: Runtime, transport: FakeTransport
) -> None:
    _seed(rt)
    _cache(rt, SERIES[0], 2)
    _cache(rt, SERIES[1], 3)
    _cache(rt, SERIES[2], 4)
    with rt.db.session() as session:
        # Discovery's study count was wrong (higher): the series counts decide.
        session.get(Prefetch, "f1").expected_instances = 12  # type: ignore[union-attr]
    assert prefetch_workflow.claim(rt.db, "f1")
    settings = _with_site(rt, _site())
    assert prefetch_workflow.run(settings, rt.db, rt.archive, "f1") == "ready"
    assert transport.asked == []
    assert _state(rt).expected_instances == 9


def test_run_series_missing_at_last_attempt_partial_names_series(
    rt: Runtime, transport: FakeTransport
) -> None:
    _seed(rt)
    with rt.db.session() as session:
        session.get(Prefetch, "f1").attempts = MAX_ATTEMPTS - 1  # type: ignore[union-attr]
    transport.deliver = {SERIES[0]: 2, SERIES[1]: 3, SERIES[2]: 3}
    transport.outcome = MoveOutcome("partial", status=0xB000, failed=1)
    assert prefetch_workflow.claim(rt.db, "f1")
    settings = _with_site(rt, _site())
    assert prefetch_workflow.run(settings, rt.db, rt.archive, "f1") == "partial"
    assert _state(rt).reason == (
        "8 of 9 instance(s) received (1 of 3 series incomplete); "
        "the site could not send 1 instance(s) (0xB000)"
    )


def test_run_site_without_series_counts_falls_back_to_study_count(
    rt: Runtime, transport: FakeTransport
) -> None:
    transport.counts = None
    _seed(rt)
    transport.deliver = {SERIES[0]: 9}
    assert prefetch_workflow.claim(rt.db, "f1")
    settings = _with_site(rt, _site())
    assert prefetch_workflow.run(settings, rt.db, rt.archive, "f1") == "ready"
    assert transport.asked == [None]
    assert _state(rt).series == []


def test_run_site_in_maintenance_deferred_to_the_window_end(
    rt: Runtime, transport: FakeTransport
) -> None:
    _seed(rt)
    now = datetime.now(UTC)
    start = (now - timedelta(minutes=30)).strftime("%H:%M")
    end = (now + timedelta(minutes=90)).strftime("%H:%M")
    site = _site(
        timezone="UTC",
        maintenance=(
            MaintenanceWindow(
                days=frozenset(range(1, 8)),
                start=time.fromisoformat(start),
                end=time.fromisoformat(end),
            ),
        ),
    )
    assert prefetch_workflow.claim(rt.db, "f1")
    state = prefetch_workflow.run(_with_site(rt, site), rt.db, rt.archive, "f1")
    assert state == "scheduled"
    assert transport.asked == []
    waiting = _state(rt)
    window_end = (now + timedelta(minutes=90)).replace(second=0, microsecond=0)
    assert waiting.due_at == window_end
    assert waiting.reason == (
        f"site {SITE_NAME} is in a maintenance window until "
        f"{window_end.isoformat(timespec='minutes')}"
    )
    assert waiting.attempts == 0  # the site was not asked anything


def test_maintenance_end_window_past_midnight_in_site_time() -> None:
    site = _site(
        timezone="Europe/Paris",
        maintenance=(
            MaintenanceWindow(days=frozenset({7}), start=time(23, 0), end=time(1, 30)),
        ),
    )
    # Sunday 2025-03-02 23:15 in Paris (UTC+1) is 22:15 UTC.
    moment = datetime(2025, 3, 2, 22, 15, 20, tzinfo=UTC)
    assert site.in_maintenance(moment)
    assert prefetch_workflow.maintenance_end(site, moment) == datetime(
        2025, 3, 3, 0, 30, tzinfo=UTC
    )


def test_run_every_slot_of_the_site_held_waits_without_an_attempt(
    rt: Runtime, transport: FakeTransport
) -> None:
    _seed(rt)
    held = site_slots.acquire(rt.db, SITE_NAME, 1, seconds=60, holder="other:1")
    assert held is not None
    assert prefetch_workflow.claim(rt.db, "f1")
    before = datetime.now(UTC)
    state = prefetch_workflow.run(
        _with_site(rt, _site(max_associations=1)), rt.db, rt.archive, "f1"
    )
    assert state == "scheduled"
    assert transport.asked == []
    waiting = _state(rt)
    assert waiting.reason == (
        f"all 1 association(s) with site {SITE_NAME} are in use; waiting for one"
    )
    assert waiting.attempts == 0
    assert 0 < (waiting.due_at - before).total_seconds() <= 4


def test_run_releases_its_slot_and_records_the_lease(
    rt: Runtime, transport: FakeTransport
) -> None:
    _seed(rt)
    transport.deliver = {SERIES[0]: 2, SERIES[1]: 3, SERIES[2]: 4}
    assert prefetch_workflow.claim(rt.db, "f1")
    settings = _with_site(rt, _site(max_associations=1))
    assert prefetch_workflow.run(settings, rt.db, rt.archive, "f1") == "ready"
    with rt.db.session() as session:
        slot = session.get(SiteSlot, (SITE_NAME, 0))
        uses = session.scalars(select(SiteSlotUse)).all()
        assert slot is not None and slot.holder is None
        assert [(u.prefetch_id, u.holder, u.expired) for u in uses] == [
            ("f1", site_slots.worker_id(), False)
        ]
        assert uses[0].ended_at is not None


def test_requeue_abandoned_only_expired_leases(rt: Runtime) -> None:
    _seed(rt, "f1", "2.25.1")
    _seed(rt, "f2", "2.25.2")
    assert prefetch_workflow.claim(rt.db, "f1", lease_seconds=60)
    assert prefetch_workflow.claim(rt.db, "f2", lease_seconds=60)
    later = datetime.now(UTC) + timedelta(seconds=61)
    with rt.db.session() as session:
        # f2's worker renewed its lease meanwhile.
        session.get(Prefetch, "f2").lease_expires_at = later + timedelta(  # type: ignore[union-attr]
            seconds=30
        )
    assert prefetch_workflow.requeue_abandoned(rt.db, now=later) == ["f1"]
    assert prefetch_workflow.requeue_abandoned(rt.db, now=later) == []
    resumed = _state(rt, "f1")
    assert (resumed.state, resumed.worker, resumed.reason) == (
        "queued",
        None,
        "resumed: the worker running it stopped",
    )
    assert _state(rt, "f2").state == "running"


def test_run_result_of_a_worker_whose_prefetch_was_resumed_is_dropped(
    rt: Runtime, transport: FakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(rt)
    assert prefetch_workflow.claim(rt.db, "f1")

    def slow_retrieve(*args: Any, **kwargs: Any) -> MoveOutcome:
        # Meanwhile the dispatcher found the lease expired and another worker
        # took the prefetch.
        with rt.db.session() as session:
            taken = session.get(Prefetch, "f1")
            assert taken is not None
            taken.worker, taken.attempts = "elsewhere:9", 2
        return MoveOutcome("association_aborted")

    monkeypatch.setattr(prefetch_workflow, "_retrieve", slow_retrieve)
    settings = _with_site(rt, _site())
    assert prefetch_workflow.run(settings, rt.db, rt.archive, "f1") == "running"
    kept = _state(rt)
    assert (kept.state, kept.worker, kept.reason) == ("running", "elsewhere:9", None)


def test_run_partly_cached_series_asks_only_its_missing_instances(
    rt: Runtime, transport: FakeTransport
) -> None:
    _seed(rt)
    _cache(rt, SERIES[0], 2)  # complete
    _cache_uids(rt, SERIES[1], [f"{SERIES[1]}.2"])  # 1 of 3
    # SERIES[2]: nothing cached.
    assert prefetch_workflow.claim(rt.db, "f1")
    transport.deliver = {SERIES[2]: 4}
    settings = _with_site(rt, _site())
    assert prefetch_workflow.run(settings, rt.db, rt.archive, "f1") == "ready"
    assert transport.listed == [[SERIES[1]]]
    assert transport.asked == [[SERIES[2]]]
    assert transport.asked_instances == [
        {SERIES[1]: [f"{SERIES[1]}.1", f"{SERIES[1]}.3"]}
    ]
    done = _state(rt)
    assert [(s.series_uid, s.received) for s in done.series] == [
        (SERIES[0], 2),
        (SERIES[1], 3),
        (SERIES[2], 4),
    ]


def test_run_only_partly_cached_series_no_series_asked_whole(
    rt: Runtime, transport: FakeTransport
) -> None:
    _seed(rt)
    _cache(rt, SERIES[0], 1)
    _cache(rt, SERIES[1], 3)
    _cache(rt, SERIES[2], 2)
    assert prefetch_workflow.claim(rt.db, "f1")
    settings = _with_site(rt, _site())
    assert prefetch_workflow.run(settings, rt.db, rt.archive, "f1") == "ready"
    assert transport.listed == [[SERIES[0], SERIES[2]]]
    assert transport.asked == [None]
    assert transport.asked_instances == [
        {
            SERIES[0]: [f"{SERIES[0]}.2"],
            SERIES[2]: [f"{SERIES[2]}.3", f"{SERIES[2]}.4"],
        }
    ]


def test_run_site_listing_fewer_instances_than_it_counts_gets_series_whole(
    rt: Runtime, transport: FakeTransport
) -> None:
    _seed(rt)
    _cache(rt, SERIES[0], 2)
    _cache(rt, SERIES[1], 3)
    _cache(rt, SERIES[2], 1)
    # A capped answer: 2 of the 4 instances the site counts.
    transport.instances[SERIES[2]] = [f"{SERIES[2]}.1", f"{SERIES[2]}.2"]
    assert prefetch_workflow.claim(rt.db, "f1")
    settings = _with_site(rt, _site())
    # The fake site sends nothing: the count still decides.
    assert prefetch_workflow.run(settings, rt.db, rt.archive, "f1") == "partial"
    assert transport.asked == [[SERIES[2]]]
    assert transport.asked_instances == [None]
    assert _state(rt).reason == "6 of 9 instance(s) received (1 of 3 series incomplete)"


def test_run_site_unable_to_list_a_series_gets_it_whole(
    rt: Runtime, transport: FakeTransport
) -> None:
    _seed(rt)
    _cache(rt, SERIES[0], 1)
    _cache(rt, SERIES[1], 3)
    _cache(rt, SERIES[2], 4)
    del transport.instances[SERIES[0]]
    assert prefetch_workflow.claim(rt.db, "f1")
    settings = _with_site(rt, _site())
    prefetch_workflow.run(settings, rt.db, rt.archive, "f1")
    assert (transport.asked, transport.asked_instances) == ([[SERIES[0]]], [None])


def test_run_site_not_answering_the_series_query_not_asked_to_send(
    rt: Runtime, transport: FakeTransport
) -> None:
    _seed(rt)
    transport.unreachable = True
    assert prefetch_workflow.claim(rt.db, "f1")
    settings = replace(_with_site(rt, _site()), retry_base_seconds=1.0)
    assert prefetch_workflow.run(settings, rt.db, rt.archive, "f1") == "scheduled"
    assert transport.asked == []
    waiting = _state(rt)
    assert waiting.reason == (
        "retry 2 in 1 s: the association was aborted or timed out: "
        "no association with CHU_NORD: refused, unreachable or timed out"
    )
    assert 0 < (waiting.due_at - datetime.now(UTC)).total_seconds() <= 1


def test_conclude_retry_base_from_settings_doubles_each_attempt() -> None:
    p = prefetch(120, attempts=2)
    conclude(p, MoveOutcome("association_aborted"), 0, retry_base=1.5)
    assert p.reason == "retry 3 in 3 s: the association was aborted or timed out"


def test_cached_uids_only_the_series_asked() -> None:
    assert prefetch_workflow.cached_uids(None, STUDY, []) == {}  # type: ignore[arg-type]


def test_cached_uids_by_series(rt: Runtime) -> None:
    _cache(rt, SERIES[0], 2)
    _cache(rt, SERIES[1], 1)
    assert prefetch_workflow.cached_uids(rt.db, STUDY, [SERIES[0]]) == {
        SERIES[0]: {f"{SERIES[0]}.1", f"{SERIES[0]}.2"}
    }


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 20.0), ("1", 1.0), ("0.5", 0.5)]
)
def test_load_settings_retry_base_seconds(value: str | None, expected: float) -> None:
    env = {} if value is None else {"SPIDERS_RETRY_BASE_SECONDS": value}
    assert load_settings(env).retry_base_seconds == expected


@pytest.mark.parametrize("value", ["0", "-1", "nan", "90000", "soon"])
def test_load_settings_retry_base_seconds_refused(value: str) -> None:
    with pytest.raises(ConfigurationError, match="SPIDERS_RETRY_BASE_SECONDS"):
        load_settings({"SPIDERS_RETRY_BASE_SECONDS": value})
