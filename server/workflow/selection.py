"""Which candidate studies are fetched: the automatic rule and a person's choice.

The rule selects studies of the configured modalities
(``SPIDERS_AUTO_SELECT_MODALITIES``) dated within the last
``SPIDERS_AUTO_SELECT_MONTHS`` months; studies with an identity warning are
never selected automatically until a person confirms them
(:mod:`server.workflow.vigilance`), and a flagged study nobody has confirmed,
or one that was rejected, cannot be selected by hand either. A clinician may
change the selection until the retrieve of a study has started.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date, datetime, timedelta

from server.config import Settings
from server.errors import Conflict, InvalidResource
from server.models import Candidate, Prefetch, PrefetchState, Registration, utcnow
from server.workflow.vigilance import Review, selectable

logger = logging.getLogger(__name__)

RULE = "rule"
MAX_REPORTED = 20  # unknown ids named in an error, so it stays readable


def auto_select(
    settings: Settings, registration: Registration, today: date | None = None
) -> list[Candidate]:
    """Mark the candidates the rule selects; returns them."""
    if settings.auto_select_months <= 0:
        return []
    today = today or utcnow().date()
    oldest = _months_before(today, settings.auto_select_months).strftime("%Y%m%d")
    wanted = set(settings.auto_select_modalities)
    chosen: list[Candidate] = []
    seen_uids: set[str] = set()
    for candidate in registration.candidates:
        if not selectable(candidate) or candidate.study_uid in seen_uids:
            continue
        if candidate.selected_by is not None:  # already decided, by rule or person
            if candidate.selected:
                seen_uids.add(candidate.study_uid)
            continue
        if not (set(candidate.modalities) & wanted):
            continue
        if not candidate.study_date or candidate.study_date < oldest:
            continue
        candidate.selected = True
        candidate.selected_by = RULE
        seen_uids.add(candidate.study_uid)
        chosen.append(candidate)
    return chosen


def due_time(settings: Settings, registration: Registration) -> datetime:
    """When the retrieves must start: the meeting minus the lead, or now."""
    now = utcnow()
    if registration.meeting_start is None:
        return now
    due = registration.meeting_start - timedelta(hours=settings.prefetch_lead_hours)
    return max(now, due)


def schedule(settings: Settings, registration: Registration) -> list[Prefetch]:
    """Create the prefetches of selected candidates that have none yet."""
    due = due_time(settings, registration)
    created = []
    for candidate in registration.candidates:
        if candidate.selected and candidate.prefetch is None:
            candidate.prefetch = Prefetch(
                registration_id=registration.id,
                site_name=candidate.site_name,
                study_uid=candidate.study_uid,
                state=PrefetchState.SCHEDULED,
                due_at=due,
                expected_instances=candidate.num_instances,
            )
            created.append(candidate.prefetch)
    return created


def change_selection(
    settings: Settings,
    registration: Registration,
    candidate_ids: Iterable[int],
    by: str,
) -> list[Prefetch]:
    """Make exactly `candidate_ids` the selection of `registration`.

    Raises
    ------
    InvalidResource
        An id is not a candidate of this registration.
    Conflict
        A study to deselect is already being retrieved or fetched.
    """
    wanted = set(candidate_ids)
    known = {c.id for c in registration.candidates}
    unknown = sorted(wanted - known)
    if unknown:
        shown = unknown[:MAX_REPORTED]
        more = (
            f" and {len(unknown) - len(shown)} more"
            if len(unknown) > len(shown)
            else ""
        )
        raise InvalidResource(
            f"not candidates of this registration: {shown}{more}",
            [("selection", f"unknown candidate id {i}") for i in shown],
        )
    blocked = [
        c
        for c in registration.candidates
        if c.id in wanted and not c.selected and not selectable(c)
    ]
    if blocked:
        rejected = [c.id for c in blocked if c.review == Review.REJECTED]
        pending = [c.id for c in blocked if c.review != Review.REJECTED]
        parts = []
        if pending:
            parts.append(
                f"candidates {pending[:MAX_REPORTED]} carry an identity warning "
                "not yet reviewed: confirm them first"
            )
        if rejected:
            parts.append(
                f"candidates {rejected[:MAX_REPORTED]} were rejected as another "
                "patient's studies and cannot be selected"
            )
        raise InvalidResource(
            "; ".join(parts),
            [("selection", f"candidate {i} needs an identity review") for i in pending]
            + [
                ("selection", f"candidate {i} was rejected at identity review")
                for i in rejected
            ],
        )
    for candidate in registration.candidates:
        if candidate.id in wanted or not candidate.selected:
            continue
        prefetch = candidate.prefetch
        if prefetch is not None and prefetch.state != PrefetchState.SCHEDULED:
            raise Conflict(
                f"candidate {candidate.id} cannot be deselected: its retrieve is "
                f"{prefetch.state}"
            )
    for candidate in registration.candidates:
        if candidate.id in wanted:
            if not candidate.selected:
                candidate.selected, candidate.selected_by = True, by
        elif candidate.selected:
            # selected_by keeps who decided, so a later rule pass leaves it out.
            candidate.selected, candidate.selected_by = False, by
            candidate.prefetch = None
    logger.info(
        "selection changed",
        extra={"registration": registration.id, "selected": len(wanted)},
    )
    return schedule(settings, registration)


def _months_before(day: date, months: int) -> date:
    month_index = day.year * 12 + (day.month - 1) - months
    year, month = divmod(month_index, 12)
    for candidate_day in (day.day, 28):
        try:
            return date(year, month + 1, candidate_day)
        except ValueError:
            continue
    return date(year, month + 1, 1)
