"""Notifications for users: a durable event feed and an optional webhook.

An event (today only ``registration.late``) is a row of the ``event`` table,
written in the same transaction as what it reports. Users read them in order
from ``GET /api/events?since=<id>``: the ids only grow, so a reader keeps the
last id it saw and asks for what came after.

With ``SPIDERS_NOTIFY_URL`` set, each event is also POSTed there as JSON (the
same object the feed serves), in id order. A receiver that is down or answers
other than 2xx gets the event again later, with a delay doubling from
:data:`RETRY_BASE_SECONDS` up to :data:`RETRY_MAX_SECONDS`; later events wait
behind it so the receiver sees them in order. Delivery is at least once: a
receiver may see an event twice (after a time-out, or when two front servers
share the database) and can drop repeats by ``id``.

Limitations
-----------
The webhook request carries no credentials or signature; put the receiver on
a closed network or behind a proxy that adds them. Events are never purged.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

import requests
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server.db import Database
from server.models import Event, utcnow

logger = logging.getLogger(__name__)

LOG_EVENT = "event recorded"
LOG_DELIVERED = "notification delivered"
LOG_DELIVERY_FAILED = "notification delivery failed, will retry"
REGISTRATION_LATE = "registration.late"
RETRY_BASE_SECONDS = 5
RETRY_MAX_SECONDS = 600
# While one process posts an event, others leave it alone this long.
CLAIM_SECONDS = 60
DELIVERY_TIMEOUT = 10.0
BATCH = 50
MAX_FEED = 500

_delivering = threading.Lock()


def emit(
    session: Session, kind: str, registration_id: str | None, payload: dict[str, Any]
) -> Event:
    """Record an event in `session`'s transaction."""
    event = Event(
        kind=kind,
        registration_id=registration_id,
        payload=payload,
        next_attempt_at=utcnow(),
    )
    session.add(event)
    session.flush()
    logger.info(
        LOG_EVENT,
        extra={"event": event.id, "kind": kind, "registration": registration_id},
    )
    return event


def event_json(event: Event) -> dict[str, Any]:
    """An event as the feed and the webhook show it."""
    return {
        "id": event.id,
        "kind": event.kind,
        "time": event.created_at.isoformat(),
        "registration": event.registration_id,
        **event.payload,
    }


def feed(session: Session, since: int = 0, limit: int = 100) -> list[Event]:
    """Events with an id above `since`, oldest first, at most `limit`."""
    limit = max(1, min(limit, MAX_FEED))
    return list(
        session.scalars(
            select(Event).where(Event.id > since).order_by(Event.id).limit(limit)
        ).all()
    )


def deliver_due(db: Database, url: str, now: datetime | None = None) -> int:
    """POST the undelivered events whose time has come to `url`, in order.

    Returns how many were delivered; stops at the first failure.
    """
    now = now or utcnow()
    with db.session() as session:
        first = session.scalars(
            select(Event)
            .where(Event.delivered_at.is_(None))
            .order_by(Event.id)
            .limit(BATCH)
        ).all()
        pending = [(e.id, e.next_attempt_at) for e in first]
    delivered = 0
    for event_id, due in pending:
        if due > now or not _claim(db, event_id, now):
            break
        if not _post(db, url, event_id, now):
            break
        delivered += 1
    return delivered


def deliver_in_background(db: Database, url: str | None) -> bool:
    """Start :func:`deliver_due` in a thread unless one already runs here."""
    if not url or not _delivering.acquire(blocking=False):
        return False

    def work() -> None:
        try:
            deliver_due(db, url)
        except Exception:
            logger.exception("notification delivery crashed")
        finally:
            _delivering.release()

    threading.Thread(target=work, name="spiders-notify", daemon=True).start()
    return True


def retry_delay(attempts: int) -> int:
    """Seconds before the next try after `attempts` failed ones."""
    return int(min(RETRY_BASE_SECONDS * 2 ** max(attempts - 1, 0), RETRY_MAX_SECONDS))


def _claim(db: Database, event_id: int, now: datetime) -> bool:
    with db.session() as session:
        result = session.execute(
            update(Event)
            .where(
                Event.id == event_id,
                Event.delivered_at.is_(None),
                Event.next_attempt_at <= now,
            )
            .values(
                attempts=Event.attempts + 1,
                next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS),
            )
        )
        return bool(getattr(result, "rowcount", 0))


def _post(db: Database, url: str, event_id: int, now: datetime) -> bool:
    with db.session() as session:
        event = session.get(Event, event_id)
        if event is None:
            return False
        body = event_json(event)
        attempts = event.attempts
    error: str | None = None
    try:
        rsp = requests.post(url, json=body, timeout=DELIVERY_TIMEOUT)
        if not 200 <= rsp.status_code < 300:
            error = f"the receiver answered HTTP {rsp.status_code}"
    except requests.RequestException as exc:
        error = f"the receiver could not be reached ({type(exc).__name__})"
    with db.session() as session:
        event = session.get(Event, event_id)
        if event is None:
            return False
        if error is None:
            event.delivered_at, event.last_error = utcnow(), None
            logger.info(LOG_DELIVERED, extra={"event": event_id})
            return True
        delay = retry_delay(attempts)
        event.last_error = error
        event.next_attempt_at = now + timedelta(seconds=delay)
        logger.warning(
            LOG_DELIVERY_FAILED,
            extra={"event": event_id, "attempt": attempts, "retry_in": delay},
        )
        return False
