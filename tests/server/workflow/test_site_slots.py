"""Site association slots as database leases: contention, expiry, renewal."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from server.models import SiteSlot, SiteSlotUse
from server.runtime import Runtime
from server.workflow import site_slots

T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)


def test_acquire_capacity_two_third_holder_refused(rt: Runtime) -> None:
    first = site_slots.acquire(rt.db, "a", 2, seconds=30, holder="w1", now=T0)
    second = site_slots.acquire(rt.db, "a", 2, seconds=30, holder="w2", now=T0)
    assert first is not None and second is not None
    assert (first.slot_no, second.slot_no) == (0, 1)
    assert site_slots.acquire(rt.db, "a", 2, seconds=30, holder="w3", now=T0) is None
    # Another site's slots are its own.
    assert site_slots.acquire(rt.db, "b", 1, seconds=30, holder="w3", now=T0)


def test_release_frees_the_slot_for_the_next_holder(rt: Runtime) -> None:
    lease = site_slots.acquire(rt.db, "a", 1, seconds=30, holder="w1", now=T0)
    assert lease is not None
    assert site_slots.release(rt.db, lease, now=T0 + timedelta(seconds=5))
    again = site_slots.acquire(rt.db, "a", 1, seconds=30, holder="w2", now=T0)
    assert again is not None and again.holder == "w2"


def test_expired_lease_taken_over_and_old_holder_refused(rt: Runtime) -> None:
    old = site_slots.acquire(rt.db, "a", 1, seconds=30, holder="w1", now=T0)
    assert old is not None
    # Still valid 29 s later: not taken.
    at_29 = T0 + timedelta(seconds=29)
    assert site_slots.acquire(rt.db, "a", 1, seconds=30, holder="w2", now=at_29) is None
    # The holder renews at 20 s, so the lease now runs until 50 s.
    assert site_slots.renew(rt.db, old, 30, now=T0 + timedelta(seconds=20))
    at_45 = T0 + timedelta(seconds=45)
    assert site_slots.acquire(rt.db, "a", 1, seconds=30, holder="w2", now=at_45) is None
    # It stops renewing; after 50 s the slot is free for another worker.
    at_51 = T0 + timedelta(seconds=51)
    new = site_slots.acquire(rt.db, "a", 1, seconds=30, holder="w2", now=at_51)
    assert new is not None and new.slot_no == 0
    assert not site_slots.renew(rt.db, old, 30, now=at_51)
    assert not site_slots.release(rt.db, old, now=at_51)
    with rt.db.session() as session:
        slot = session.get(SiteSlot, ("a", 0))
        assert slot is not None and slot.holder == "w2"
        uses = session.scalars(select(SiteSlotUse).order_by(SiteSlotUse.id)).all()
        assert [(u.holder, u.started_at, u.ended_at, u.expired) for u in uses] == [
            ("w1", T0, at_51, True),
            ("w2", at_51, None, False),
        ]


def test_acquire_racing_threads_never_exceed_capacity(rt: Runtime) -> None:
    got: list[site_slots.Lease] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def contend(n: int) -> None:
        start.wait()
        lease = site_slots.acquire(rt.db, "a", 2, seconds=30, holder=f"w{n}")
        if lease is not None:
            with lock:
                got.append(lease)

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(lease.slot_no for lease in got) == [0, 1]


def test_kept_alive_renews_until_the_block_ends(rt: Runtime) -> None:
    calls: list[bool] = []

    def renewal() -> bool:
        calls.append(True)
        return len(calls) < 3

    with site_slots.kept_alive([renewal], interval=0.05) as lost:
        assert lost.wait(2)
    count = len(calls)
    assert count >= 3
    threading.Event().wait(0.2)
    assert len(calls) == count
