"""A study of several series is retrieved on several C-MOVE associations at once.

The first tests stand a fake in for the C-MOVE client and prove the sharing
out: how many requests, at once, for which series, and which site slots are
taken and given back. The last one retrieves a three-series study from a
real Orthanc on two associations and proves the cache complete.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from ihe.qr.rad16_retrieve_images import MoveOutcome
from server.config import Directory, Settings, Site
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
from server.workflow import prefetch, site_slots, transports
from server.workflow.transports import Share, shares
from tests.ihe.dicom.dicom_support import cache_server
from tests.peers import LOCALHOST, OrthancPeer
from tests.retrieve_support import RetrieveStudy, cached_syntaxes, make_study

SITE_NAME = "chu-sud"
STUDY = "2.25.200"
COUNTS = {"2.25.200.1": 5, "2.25.200.2": 4, "2.25.200.3": 3, "2.25.200.4": 2}


class FakeMove:
    """Stands for the C-MOVE client: records each request and caches what it
    names, every request waiting at a barrier for `parties` of them."""

    def __init__(self, rt: Runtime, parties: int) -> None:
        self.rt = rt
        self.barrier = threading.Barrier(parties, timeout=30)
        self.lock = threading.Lock()
        self.asked: list[list[str] | None] = []
        self.slots_held: list[int] = []

    def __call__(self, **kwargs: Any) -> MoveOutcome:
        series_uids = kwargs["series_uids"]
        with self.lock:
            self.asked.append(None if series_uids is None else list(series_uids))
        # Every request must be under way before any ends: they run at once.
        self.barrier.wait()
        with self.rt.db.session() as session:
            held = session.scalar(
                select(func.count())
                .select_from(SiteSlot)
                .where(SiteSlot.holder.is_not(None))
            )
        with self.lock:
            self.slots_held.append(int(held or 0))
            for uid in series_uids or sorted(COUNTS):
                _cache(self.rt, uid, COUNTS[uid])
        return MoveOutcome("success", status=0, completed=sum(COUNTS.values()))


@pytest.fixture
def site_series(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "_site_series", lambda *_: dict(COUNTS))


def test_shares_balanced_by_count_disjoint_and_whole() -> None:
    dealt = shares(2, sorted(COUNTS), {"2.25.200.9": ["a", "b"]}, COUNTS)
    # 5 and 4 first, 3 joins the 4, 2 the 5, and the list goes to the first
    # of the two shares left at 7.
    assert dealt == [
        Share(["2.25.200.1", "2.25.200.4"], {"2.25.200.9": ["a", "b"]}),
        Share(["2.25.200.2", "2.25.200.3"], {}),
    ]
    assert shares(4, ["2.25.200.1"]) == [Share(["2.25.200.1"], {})]


def test_parallel_for_bounded_by_setting_site_and_transport(rt: Runtime) -> None:
    settings = replace(rt.settings, retrieve_parallel=3)
    assert transports.parallel_for(settings, _site(max_associations=4), 4) == 3
    assert transports.parallel_for(settings, _site(max_associations=2), 4) == 2
    assert transports.parallel_for(settings, _site(max_associations=4), 1) == 1
    assert transports.parallel_for(settings, _site(retrieve="c-get"), 4) == 1


def test_run_four_series_two_slots_two_concurrent_series_moves(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, site_series: None
) -> None:
    fake = FakeMove(rt, parties=2)
    monkeypatch.setattr(transports, "move_study", fake)
    settings = _settings(rt, _site(max_associations=2))
    _seed(rt)
    assert prefetch.claim(rt.db, "f1")

    assert prefetch.run(settings, rt.db, rt.archive, "f1") == "ready"

    assert len(fake.asked) == 2
    first, second = (set(uids or ()) for uids in fake.asked)
    assert first and second and not first & second
    assert first | second == set(COUNTS)
    assert fake.slots_held == [2, 2]
    # Both slots given back, each use recorded for the prefetch and closed.
    assert _holders(rt) == []
    assert _uses(rt) == [("f1", 0, True), ("f1", 1, True)]


def test_run_no_free_extra_slot_one_study_level_move(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, site_series: None
) -> None:
    fake = FakeMove(rt, parties=1)
    monkeypatch.setattr(transports, "move_study", fake)
    settings = _settings(rt, _site(max_associations=2))
    _seed(rt)
    other = site_slots.acquire(rt.db, SITE_NAME, 2, seconds=60, holder="other:1")
    assert other is not None
    assert prefetch.claim(rt.db, "f1")

    assert prefetch.run(settings, rt.db, rt.archive, "f1") == "ready"

    assert fake.asked == [None]
    assert fake.slots_held == [2]
    assert _holders(rt) == ["other:1"]
    assert [use for use in _uses(rt) if use[0] == "f1"] == [("f1", 1, True)]


def test_retrieve_now_without_slot_held_takes_free_ones_and_releases(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, site_series: None
) -> None:
    fake = FakeMove(rt, parties=2)
    monkeypatch.setattr(transports, "move_study", fake)
    site = _site(max_associations=3)
    settings = _settings(rt, site)
    reports: list[tuple[int, int | None]] = []

    outcome = prefetch.retrieve_now(
        settings, rt.db, rt.archive, site, STUDY, lambda *r: reports.append(r)
    )

    assert (outcome.outcome, outcome.completed) == ("success", 28)
    assert sorted(len(uids or ()) for uids in fake.asked) == [2, 2]
    assert _holders(rt) == []
    assert _uses(rt) == [(None, 0, True), (None, 1, True)]


@pytest.mark.peer
def test_prefetch_three_series_orthanc_two_associations_complete(
    rt: Runtime, tmp_path_factory: pytest.TempPathFactory
) -> None:
    study = make_study(tmp_path_factory.mktemp("parallel-study"), seed=7444)
    with OrthancPeer("HOPITAL_S") as orthanc:
        assert orthanc.upload(study.files) == 7
        site = _site(ae_title="HOPITAL_S", port=orthanc.dicom_port, max_associations=2)
        settings = _settings(rt, site)
        _seed(rt, study.study_uid, expected=7)
        with cache_server(rt.archive, rt.settings.ae_title) as cache:
            orthanc.add_modality("spiders", rt.settings.ae_title, LOCALHOST, cache.port)
            assert prefetch.claim(rt.db, "f1")
            state = prefetch.run(settings, rt.db, rt.archive, "f1")
            summaries = [cache.next_summary() for _ in range(2)]

    assert state == "ready"
    assert cached_syntaxes(rt.archive, study.study_uid) == study.syntaxes
    # Series 1 (3 instances) on one association, series 2 and 3 on the other.
    assert sorted(s.studies[0].new for s in summaries) == [3, 4]
    assert {s.calling_ae for s in summaries} == {"HOPITAL_S"}
    assert _holders(rt) == []
    _assert_series_complete(rt, study)


def _assert_series_complete(rt: Runtime, study: RetrieveStudy) -> None:
    with rt.db.session() as session:
        done = session.get(Prefetch, "f1")
        assert done is not None
        assert {s.series_uid: (s.expected, s.received) for s in done.series} == {
            uid: (len(study.by_series[uid]),) * 2 for uid in study.series_uids
        }
        assert (done.attempts, done.reason) == (1, None)


def _site(**kwargs: Any) -> Site:
    values: dict[str, Any] = {
        "name": SITE_NAME,
        "ae_title": "CHU_SUD",
        "host": LOCALHOST,
        "port": 1,
        "patient_id_domain": "2.999.1.2",
        "timeout": 10,
    }
    values.update(kwargs)
    return Site(**values)


def _settings(rt: Runtime, site: Site) -> Settings:
    return replace(rt.settings, directory=Directory(sites=(site,)), retrieve_parallel=2)


def _seed(rt: Runtime, study: str = STUDY, expected: int = 14) -> None:
    with rt.db.session() as session:
        session.add(Patient(id="p1", family_name="X"))
        reg = Registration(
            id="r1",
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
            num_instances=expected,
        )
        cand.prefetch = Prefetch(
            id="f1",
            registration_id=reg.id,
            site_name=SITE_NAME,
            study_uid=study,
            due_at=datetime.now(UTC),
            state=PrefetchState.QUEUED,
            expected_instances=expected,
        )
        reg.candidates.append(cand)
        session.add(reg)


def _cache(rt: Runtime, series_uid: str, count: int) -> None:
    with rt.db.session() as session:
        for n in range(count):
            session.add(
                CachedInstance(
                    sop_instance_uid=f"{series_uid}.{n + 1}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    study_uid=STUDY,
                    series_uid=series_uid,
                    transfer_syntax="1.2.840.10008.1.2.1",
                    path=f"x/{series_uid}/{n + 1}.dcm",
                    size=1,
                )
            )


def _holders(rt: Runtime) -> list[str]:
    with rt.db.session() as session:
        return [
            str(holder)
            for holder in session.scalars(
                select(SiteSlot.holder)
                .where(SiteSlot.holder.is_not(None))
                .order_by(SiteSlot.slot_no)
            )
        ]


def _uses(rt: Runtime) -> list[tuple[str | None, int, bool]]:
    """(prefetch, slot, closed) of every slot use, in slot order."""
    with rt.db.session() as session:
        rows = session.execute(
            select(
                SiteSlotUse.prefetch_id, SiteSlotUse.slot_no, SiteSlotUse.ended_at
            ).order_by(SiteSlotUse.slot_no, SiteSlotUse.id)
        ).all()
    return [(p, int(slot), ended is not None) for p, slot, ended in rows]


@pytest.fixture(autouse=True)
def _no_threads_left() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not [t for t in left if t.name.startswith("spiders-")]
