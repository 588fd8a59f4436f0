"""The prefetch deadline of a case, and what happens when it is missed.

A registration's deadline is its meeting start minus
``SPIDERS_PREFETCH_DEADLINE_MARGIN`` (1 h by default): the time the board's
staff need every selected study in the cache to prepare the meeting. The
dispatcher checks each active registration once, when its deadline passes
(:func:`check_due`). A case then not ``ready`` (nor without studies to fetch)
is flagged late: the registration keeps the reason (which studies, what is
missing, why), each prefetch not ready is marked late, and a
``registration.late`` event is recorded for the feed and the webhook
(:mod:`server.workflow.events`).

A case registered after its deadline (or after its meeting) cannot be ready
in time: it is checked at the dispatcher's next pass, while its studies are
still being found and fetched, and flagged late at once with a reason that
says it was registered after the deadline. Its studies are retrieved at once
all the same.

Limitations
-----------
The check happens once: a study selected after the deadline, or a case that
becomes ready afterwards, does not change the flag (the state then shows
``ready`` next to it). Cases registered before their deadline whose meeting
started more than :data:`LOOKBACK` ago when first checked (made before this
check existed, or while no dispatcher ran) are marked checked without being
flagged.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from mappings.fhir_appointment import ACTIVE_STATUS
from server.config import Settings
from server.db import Database
from server.models import Prefetch, PrefetchState, Registration, utcnow
from server.workflow import events
from server.workflow.status import prefetch_json, registration_state

logger = logging.getLogger(__name__)

LOG_LATE = "registration late at its deadline"
LOOKBACK = timedelta(days=1)
NOT_LATE = frozenset({"ready", "no-studies"})
UID_TAIL = 12


def deadline(settings: Settings, registration: Registration) -> datetime | None:
    """When every selected study should be ready; None without a meeting."""
    if registration.meeting_start is None:
        return None
    margin = timedelta(hours=settings.prefetch_deadline_margin_hours)
    return registration.meeting_start - margin


def check_due(
    settings: Settings, db: Database, now: datetime | None = None
) -> list[str]:
    """Check the registrations whose deadline has passed; return those late."""
    now = now or utcnow()
    margin = timedelta(hours=settings.prefetch_deadline_margin_hours)
    with db.session() as session:
        due = session.scalars(
            select(Registration.id).where(
                Registration.late_checked_at.is_(None),
                Registration.meeting_start.is_not(None),
                Registration.meeting_start <= now + margin,
                Registration.status.in_(sorted(ACTIVE_STATUS)),
            )
        ).all()
    return [rid for rid in due if _check(settings, db, rid, now)]


def missing_studies(registration: Registration) -> list[Prefetch]:
    """The registration's prefetches that are not ready."""
    return [
        c.prefetch
        for c in registration.candidates
        if c.prefetch is not None and c.prefetch.state != PrefetchState.READY
    ]


def registered_late(registration: Registration, when: datetime) -> bool:
    """True for a case registered at or after its deadline `when`."""
    created = registration.created_at
    return created is not None and created >= when


def late_reason(
    registration: Registration, state: str, when: datetime, margin_hours: float
) -> str:
    """One paragraph for the coordinator: what is missing at the deadline, why."""
    at = when.isoformat(timespec="minutes")
    head = (
        f"registered after its deadline {at} "
        if registered_late(registration, when)
        else f"not ready at the deadline {at} "
    ) + f"(meeting minus {margin_hours:g} h), state {state}"
    parts = [head]
    if registration.discovery != "done":
        parts.append(f"discovery {registration.discovery}")
    parts += [
        f"site {q.site_name} could not be queried: {q.reason or 'no reason given'}"
        for q in registration.site_queries
        if q.status == "failed"
    ]
    missing = missing_studies(registration)
    total = sum(1 for c in registration.candidates if c.prefetch is not None)
    if missing:
        parts.append(f"{len(missing)} of {total} selected studies not ready")
    parts += [_study_line(p) for p in missing]
    return "; ".join(parts)


def _check(
    settings: Settings, db: Database, registration_id: str, now: datetime
) -> bool:
    """Check one registration, once across every dispatcher."""
    with db.session() as session:
        claimed = session.execute(
            update(Registration)
            .where(
                Registration.id == registration_id,
                Registration.late_checked_at.is_(None),
            )
            .values(late_checked_at=now)
        )
        if not getattr(claimed, "rowcount", 0):
            return False
        registration = session.get(Registration, registration_id)
        when = deadline(settings, registration) if registration else None
        if registration is None or when is None:
            return False
        long_past = (
            registration.meeting_start is not None
            and registration.meeting_start < now - LOOKBACK
        )
        if long_past and not registered_late(registration, when):
            return False
        state = registration_state(registration)
        if state in NOT_LATE:
            return False
        margin = settings.prefetch_deadline_margin_hours
        registration.late_reason = late_reason(registration, state, when, margin)
        missing = missing_studies(registration)
        for prefetch in missing:
            prefetch.late = True
        events.emit(
            session,
            events.REGISTRATION_LATE,
            registration.id,
            _payload(registration, state, when, missing),
        )
        logger.warning(
            LOG_LATE,
            extra={"registration": registration.id, "missing": len(missing)},
        )
        return True


def _payload(
    registration: Registration, state: str, when: datetime, missing: list[Prefetch]
) -> dict[str, Any]:
    return {
        "appointment": f"Appointment/{registration.id}",
        "board": registration.board.location_reference if registration.board else None,
        "meetingStart": registration.meeting_start.isoformat()
        if registration.meeting_start
        else None,
        "deadline": when.isoformat(),
        "state": state,
        "reason": registration.late_reason,
        "studies": [
            {
                "site": p.site_name,
                "studyInstanceUID": p.study_uid,
                **{
                    k: v
                    for k, v in prefetch_json(p).items()
                    if k
                    in (
                        "state",
                        "expectedInstances",
                        "receivedInstances",
                        "incompleteSeries",
                        "reason",
                    )
                },
            }
            for p in missing
        ],
    }


def _study_line(prefetch: Prefetch) -> str:
    shown = prefetch_json(prefetch)
    expected = shown["expectedInstances"]
    line = (
        f"site {prefetch.site_name} study ...{prefetch.study_uid[-UID_TAIL:]}: "
        f"{prefetch.state}, {shown['receivedInstances']} of "
        f"{expected if expected is not None else '?'} instance(s)"
    )
    incomplete = shown.get("incompleteSeries") or []
    if incomplete:
        line += f", {len(incomplete)} series incomplete"
    if prefetch.reason:
        line += f" ({prefetch.reason})"
    return line
