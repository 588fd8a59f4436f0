"""Per-site association slots shared by every worker, held as database leases.

A site accepts at most ``max_associations`` associations from SPIDERS at once
(sites file), whichever worker or host opens them. The ``site_slot`` table has
one row per slot of each site; a worker takes a free slot with an UPDATE
guarded by "no holder, or a lease already expired", so two workers never hold
the same slot, on SQLite as on PostgreSQL. The holder renews its lease while it
talks to the site (:func:`kept_alive`) and releases it when done. A worker that
dies stops renewing: its slot is free again once the lease expires
(``SPIDERS_WORKER_LEASE_SECONDS``).

A retrieve that can use more than one association (a study of several
series, :mod:`server.workflow.transports`) takes further slots with
:func:`spare`: only slots free at that moment, never waiting for one.

Every lease is also written to ``site_slot_use`` (who, for which prefetch,
from when to when), so an operator can see how a site was used.

Limitations
-----------
A lease that expires while its holder still runs (the database unreachable
for longer than the lease) lets another worker take the slot: for that while
the site may see one association more than allowed. The late holder notices at
its next renewal and logs a warning; it does not abort its association. When a
holder stops without releasing, its use is closed at the moment another worker
takes the slot over, not at the moment it stopped. Slots above a lowered
``max_associations`` are left unused.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from server.db import Database
from server.models import SiteSlot, SiteSlotUse, utcnow

logger = logging.getLogger(__name__)

LOG_SLOT_TAKEN_OVER = "site slot taken over from an expired lease"
LOG_RENEWAL_REFUSED = "lease renewal refused: another worker holds it now"
LOG_RENEWAL_FAILED = "lease renewal failed"


@dataclass(frozen=True)
class Lease:
    """A slot held by this worker; `use_id` tells this lease from later ones."""

    site_name: str
    slot_no: int
    holder: str
    use_id: int
    prefetch_id: str | None = None


def worker_id() -> str:
    """This worker's name in leases: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def acquire(
    db: Database,
    site_name: str,
    capacity: int,
    *,
    seconds: float,
    holder: str | None = None,
    prefetch_id: str | None = None,
    now: datetime | None = None,
) -> Lease | None:
    """Take a free slot of `site_name` for `seconds`; ``None`` if all are held.

    Parameters
    ----------
    capacity : int
        The site's ``max_associations``: slots 0 to capacity - 1 are used.
    holder : str, optional
        Who holds it (default :func:`worker_id`).
    """
    holder = holder or worker_id()
    now = now or utcnow()
    _ensure_slots(db, site_name, capacity)
    for slot_no in range(capacity):
        lease = _take(db, site_name, slot_no, holder, prefetch_id, now, seconds)
        if lease is not None:
            return lease
    return None


def renew(
    db: Database, lease: Lease, seconds: float, now: datetime | None = None
) -> bool:
    """Extend `lease` by `seconds` from now; False when it is no longer ours."""
    now = now or utcnow()
    with db.session() as session:
        result = session.execute(
            update(SiteSlot)
            .where(_ours(lease))
            .values(expires_at=now + timedelta(seconds=seconds))
        )
        return bool(getattr(result, "rowcount", 0))


def release(db: Database, lease: Lease, now: datetime | None = None) -> bool:
    """Give the slot back; False when another worker had taken it over."""
    now = now or utcnow()
    with db.session() as session:
        result = session.execute(
            update(SiteSlot)
            .where(_ours(lease))
            .values(holder=None, prefetch_id=None, expires_at=None)
        )
        session.execute(
            update(SiteSlotUse)
            .where(SiteSlotUse.id == lease.use_id, SiteSlotUse.ended_at.is_(None))
            .values(ended_at=now)
        )
        return bool(getattr(result, "rowcount", 0))


@contextmanager
def spare(
    db: Database,
    site_name: str,
    capacity: int,
    wanted: int,
    *,
    seconds: float,
    prefetch_id: str | None = None,
) -> Iterator[list[Lease]]:
    """Take up to `wanted` free slots of `site_name` for the block, never waiting.

    The leases taken (maybe none) are yielded, renewed every third of
    `seconds` while the block runs, and released after it, whatever happens.
    """
    leases: list[Lease] = []
    try:
        while len(leases) < wanted:
            lease = acquire(
                db, site_name, capacity, seconds=seconds, prefetch_id=prefetch_id
            )
            if lease is None:
                break
            leases.append(lease)
        if not leases:
            yield leases
            return
        renewals: list[Callable[[], bool]] = [
            partial(renew, db, lease, seconds) for lease in leases
        ]
        with kept_alive(renewals, interval=seconds / 3):
            yield leases
    finally:
        for lease in leases:
            release(db, lease)


@contextmanager
def kept_alive(
    renewals: list[Callable[[], bool]], interval: float
) -> Iterator[threading.Event]:
    """Call every renewal each `interval` seconds in a thread while the block runs.

    A renewal answering False (the lease is someone else's now) or failing on
    the database is logged as a warning; the block is not interrupted. The
    event yielded is set when a renewal was refused.
    """
    stop, lost = threading.Event(), threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            for renewal in renewals:
                try:
                    if not renewal():
                        lost.set()
                        logger.warning(LOG_RENEWAL_REFUSED)
                except SQLAlchemyError as exc:
                    logger.warning(
                        LOG_RENEWAL_FAILED, extra={"error": type(exc).__name__}
                    )

    thread = threading.Thread(target=beat, name="spiders-lease", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join()


def _ours(lease: Lease) -> ColumnElement[bool]:
    """The WHERE clause matching `lease`'s slot while this lease holds it."""
    return and_(
        SiteSlot.site_name == lease.site_name,
        SiteSlot.slot_no == lease.slot_no,
        SiteSlot.holder == lease.holder,
        SiteSlot.use_id == lease.use_id,
    )


def _take(
    db: Database,
    site_name: str,
    slot_no: int,
    holder: str,
    prefetch_id: str | None,
    now: datetime,
    seconds: float,
) -> Lease | None:
    """Claim one slot with a guarded UPDATE, and record the new use."""
    with db.session() as session:
        result = session.execute(
            update(SiteSlot)
            .where(
                SiteSlot.site_name == site_name,
                SiteSlot.slot_no == slot_no,
                or_(SiteSlot.holder.is_(None), SiteSlot.expires_at < now),
            )
            .values(
                holder=holder,
                prefetch_id=prefetch_id,
                expires_at=now + timedelta(seconds=seconds),
            )
        )
        if not getattr(result, "rowcount", 0):
            return None
        # The slot row is ours (and locked) now: close the use of a holder
        # that stopped without releasing it.
        expired = session.execute(
            update(SiteSlotUse)
            .where(
                SiteSlotUse.site_name == site_name,
                SiteSlotUse.slot_no == slot_no,
                SiteSlotUse.ended_at.is_(None),
            )
            .values(ended_at=now, expired=True)
        )
        if getattr(expired, "rowcount", 0):
            logger.warning(
                LOG_SLOT_TAKEN_OVER, extra={"site": site_name, "slot": slot_no}
            )
        use = SiteSlotUse(
            site_name=site_name,
            slot_no=slot_no,
            holder=holder,
            prefetch_id=prefetch_id,
            started_at=now,
        )
        session.add(use)
        session.flush()
        session.execute(
            update(SiteSlot)
            .where(SiteSlot.site_name == site_name, SiteSlot.slot_no == slot_no)
            .values(use_id=use.id)
        )
        return Lease(site_name, slot_no, holder, use.id, prefetch_id)


def _ensure_slots(db: Database, site_name: str, capacity: int) -> None:
    """Create the slot rows a site lacks; a row another worker just created
    is as good as ours."""
    with db.session() as session:
        present = set(
            session.scalars(
                select(SiteSlot.slot_no).where(SiteSlot.site_name == site_name)
            ).all()
        )
    for slot_no in range(capacity):
        if slot_no in present:
            continue
        try:
            with db.session() as session:
                session.add(SiteSlot(site_name=site_name, slot_no=slot_no))
        except IntegrityError:
            continue
