"""Delivery of the audit outbox to the Audit Record Repositories (ITI-20).

:class:`OutboxSender` reads the records no configured repository has been
sent yet, in id order, wraps each in a syslog message
(:mod:`ihe.atna.iti20_record_audit_event`) and sends them, a batch at a time,
to every repository. A record is marked sent to a repository (one
``audit_delivery`` row) only once the transport reports the batch sent, and
marked delivered (``delivered_at``) once every configured repository has it.

When a repository cannot be reached, its batch stays in the outbox and the
repository is tried again after an exponential backoff (``backoff_base``
seconds, doubled at each failure, at most ``backoff_max``); records keep
accumulating meanwhile and leave in order once it answers again. One WARNING
is logged when an outage starts and one INFO line when it ends, never one
per record. Nothing here runs inside a clinical action: the records were
committed with their actions, and a failure to deliver stays here.

Several processes may share one database (the scaled mode): each repository
is leased to one sender at a time (an UPDATE guarded by the lease's owner and
expiry), so two processes never send the same record to the same repository
concurrently.

Delivery is at least once. A batch whose sending failed part-way is sent
again whole, so a repository can receive a record twice after an outage;
it never receives a record out of order within one sender, and never
misses one that TLS delivery reported sent.

Limitations
-----------
Order is the order of record ids, which on PostgreSQL can differ from commit
order: a record committed late with a lower id is sent when seen, after
higher ones. Over UDP a record is reported sent as soon as its datagram
leaves (see the transport module); a record larger than a UDP datagram is
skipped for that repository with a WARNING naming its id. The outbox is not
pruned.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ihe.atna.iti20_record_audit_event import (
    NILVALUE,
    Repository,
    Transport,
    syslog_message,
)
from server.db import Database
from server.models import AuditDelivery, AuditRecord, AuditRepository, utcnow

logger = logging.getLogger(__name__)

LOG_OUTAGE = "audit repository unreachable; records kept for a later attempt"
LOG_RECOVERED = "audit repository reachable again"
LOG_DELIVERED = "audit records delivered"
LOG_TOO_LARGE = "audit record too large for the transport; skipped"

BATCH_SIZE = 200
MAX_BATCHES_PER_RUN = 25
BACKOFF_BASE = 2.0
BACKOFF_MAX = 60.0
LEASE_SECONDS = 60.0
INTERVAL = 2.0
_HOSTNAME = re.compile(r"[\x21-\x7e]{1,255}")


@dataclass(frozen=True)
class Destination:
    """One repository and the transport that reaches it."""

    repository: Repository
    transport: Transport


class OutboxSender:
    """Sends undelivered audit records to every configured repository.

    Parameters
    ----------
    db : Database
        Where the outbox lives.
    destinations : sequence of Destination
        The repositories; with none, :meth:`run_once` does nothing and the
        records stay in the outbox.
    hostname : str, optional
        Syslog HOSTNAME; this machine's name by default.
    procid : str, optional
        Syslog PROCID; this process's id by default.
    batch_size : int
        Records per connection.
    backoff_base, backoff_max : float
        Seconds before the first retry, and the most between two tries.
    clock : callable, optional
        Returns the current time (tests).
    """

    def __init__(
        self,
        db: Database,
        destinations: Sequence[Destination],
        *,
        hostname: str | None = None,
        procid: str | None = None,
        batch_size: int = BATCH_SIZE,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.destinations = tuple(destinations)
        self.hostname = _syslog_hostname(hostname or socket.gethostname())
        self.procid = procid or str(os.getpid())
        self.batch_size = batch_size
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.clock = clock
        self.owner = f"{self.hostname}:{self.procid}:{uuid.uuid4().hex[:8]}"
        self._urls = [d.repository.url for d in self.destinations]
        self._lock = threading.Lock()

    def run_once(self) -> dict[str, int]:
        """Send what is due to each repository; never raises.

        Returns
        -------
        dict of str to int
            Records sent per repository URL during this call.
        """
        sent: dict[str, int] = {}
        with self._lock:
            for destination in self.destinations:
                url = destination.repository.url
                try:
                    sent[url] = self._deliver(destination)
                except Exception:
                    logger.exception(
                        "audit delivery failed; trying again", extra={"repository": url}
                    )
                    sent[url] = 0

        return sent

    def run(self, stop: threading.Event, interval: float = INTERVAL) -> None:
        """Call :meth:`run_once` every `interval` seconds until `stop` is set."""
        while not stop.wait(interval):
            self.run_once()
        self.release()

    def release(self) -> None:
        """Give up this sender's leases, for another process to take over."""
        try:
            with self.db.session() as session:
                session.execute(
                    update(AuditRepository)
                    .where(AuditRepository.lease_owner == self.owner)
                    .values(lease_owner=None, lease_until=None)
                )
        except Exception:
            logger.exception("audit repository leases not released")

    def pending(self) -> int:
        """How many records some configured repository still lacks."""
        if not self.destinations:
            return 0
        with self.db.session() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(AuditRecord)
                    .where(AuditRecord.delivered_at.is_(None))
                )
                or 0
            )

    def _deliver(self, destination: Destination) -> int:
        url = destination.repository.url
        self._ensure_state(url)
        if not self._claim(url):
            return 0
        total = 0
        for _ in range(MAX_BATCHES_PER_RUN):
            batch = self._next_batch(url)
            if not batch:
                break
            try:
                self._send(destination, batch)
            except OSError as exc:
                self._failed(url, batch, exc)
                return total
            self._succeeded(url, batch)
            total += len(batch)
        if total:
            self._recovered(url, total)

        return total

    def _ensure_state(self, url: str) -> None:
        with self.db.session() as session:
            if session.get(AuditRepository, url) is not None:
                return
        try:
            with self.db.session() as session:
                session.add(AuditRepository(url=url))
        except IntegrityError:
            # Another process added it first.
            return

    def _claim(self, url: str) -> bool:
        now = self.clock()
        with self.db.session() as session:
            result = session.execute(
                update(AuditRepository)
                .where(
                    AuditRepository.url == url,
                    or_(
                        AuditRepository.lease_owner.is_(None),
                        AuditRepository.lease_owner == self.owner,
                        AuditRepository.lease_until < now,
                    ),
                    or_(
                        AuditRepository.next_attempt_at.is_(None),
                        AuditRepository.next_attempt_at <= now,
                    ),
                )
                .values(
                    lease_owner=self.owner,
                    lease_until=now + timedelta(seconds=LEASE_SECONDS),
                )
            )
            return bool(getattr(result, "rowcount", 0))

    def _next_batch(self, url: str) -> list[tuple[int, str]]:
        sent = exists().where(
            and_(
                AuditDelivery.record_id == AuditRecord.id,
                AuditDelivery.repository == url,
            )
        )
        with self.db.session() as session:
            rows = session.execute(
                select(AuditRecord.id, AuditRecord.xml)
                .where(AuditRecord.delivered_at.is_(None), ~sent)
                .order_by(AuditRecord.id)
                .limit(self.batch_size)
            ).all()

        return [(row[0], row[1]) for row in rows]

    def _send(self, destination: Destination, batch: list[tuple[int, str]]) -> None:
        limit = destination.transport.max_message_size
        messages = []
        for record_id, xml in batch:
            message = syslog_message(
                xml.encode("utf-8"), hostname=self.hostname, procid=self.procid
            )
            if limit is not None and len(message) > limit:
                logger.warning(
                    LOG_TOO_LARGE,
                    extra={
                        "repository": destination.repository.url,
                        "record": record_id,
                        "size": len(message),
                    },
                )
                continue
            messages.append(message)
        if messages:
            destination.transport.send(messages)

    def _succeeded(self, url: str, batch: list[tuple[int, str]]) -> None:
        now = self.clock()
        ids = [record_id for record_id, _ in batch]
        with self.db.session() as session:
            session.execute(
                insert(AuditDelivery),
                [
                    {"record_id": record_id, "repository": url, "delivered_at": now}
                    for record_id in ids
                ],
            )
            self._count_attempt(session, ids)
            self._mark_delivered(session, ids, now)
            session.execute(
                update(AuditRepository)
                .where(AuditRepository.url == url)
                .values(
                    delivered=AuditRepository.delivered + len(ids),
                    last_delivered_at=now,
                    lease_until=now + timedelta(seconds=LEASE_SECONDS),
                )
            )
        logger.debug(LOG_DELIVERED, extra={"repository": url, "count": len(ids)})

    def _mark_delivered(self, session: Session, ids: list[int], now: datetime) -> None:
        everywhere = (
            select(func.count())
            .select_from(AuditDelivery)
            .where(
                AuditDelivery.record_id == AuditRecord.id,
                AuditDelivery.repository.in_(self._urls),
            )
            .scalar_subquery()
        )
        session.execute(
            update(AuditRecord)
            .where(AuditRecord.id.in_(ids), everywhere >= len(self._urls))
            .values(delivered_at=now)
        )

    def _failed(self, url: str, batch: list[tuple[int, str]], exc: OSError) -> None:
        now = self.clock()
        with self.db.session() as session:
            state = session.get(AuditRepository, url)
            assert state is not None
            first = state.failures == 0
            state.failures += 1
            delay = min(self.backoff_base * 2 ** (state.failures - 1), self.backoff_max)
            state.next_attempt_at = now + timedelta(seconds=delay)
            state.failing_since = state.failing_since or now
            state.last_error = f"{type(exc).__name__}: {exc}"
            state.lease_owner, state.lease_until = None, None
            self._count_attempt(session, [record_id for record_id, _ in batch])
            error = state.last_error
        if first:
            logger.warning(
                LOG_OUTAGE, extra={"repository": url, "error": error, "retry_in": delay}
            )

    def _recovered(self, url: str, delivered: int) -> None:
        with self.db.session() as session:
            state = session.get(AuditRepository, url)
            if state is None or state.failures == 0:
                return
            since = state.failing_since
            state.failures, state.failing_since = 0, None
            state.next_attempt_at, state.last_error = None, None
        outage = None if since is None else (self.clock() - since).total_seconds()
        logger.info(
            LOG_RECOVERED,
            extra={"repository": url, "delivered": delivered, "outage_s": outage},
        )

    @staticmethod
    def _count_attempt(session: Session, ids: list[int]) -> None:
        session.execute(
            update(AuditRecord)
            .where(AuditRecord.id.in_(ids))
            .values(attempts=AuditRecord.attempts + 1)
        )


def _syslog_hostname(name: str) -> str:
    # RFC 5424 HOSTNAME: 1-255 printable US-ASCII characters, else NILVALUE.
    return name if _HOSTNAME.fullmatch(name) else NILVALUE
