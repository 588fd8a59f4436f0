"""Prefetch: retrieve one selected study into the cache and prove it complete.

A study is ``ready`` only when the cache holds at least as many instances of it
as the site announced (NumberOfStudyRelatedInstances from discovery, or the
C-MOVE's completed counter when the site gave no count). Whatever the site's
final status says, the count in the cache decides.

Failures that may pass (aborted association, a site unable to process, some
sub-operations failed) are retried with exponential backoff, up to
:data:`MAX_ATTEMPTS`; a site that does not know our AE title (0xA801) is
reported at once and not retried, since only its administrator can fix it.

Limitations
-----------
C-MOVE only. A retry asks for the whole study again; instances already
cached are received again and replace their copy.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, aliased

from ihe.dicom.archive import Archive
from ihe.qr.rad16_retrieve_images import MoveOutcome, move_study
from server import audit
from server.config import Settings
from server.db import Database
from server.errors import ConfigurationError
from server.models import Prefetch, PrefetchState, utcnow
from server.peers import site_tls

logger = logging.getLogger(__name__)

LOG_PREFETCH_DONE = "prefetch finished"
MAX_ATTEMPTS = 3
RETRY_BASE_SECONDS = 20
RETRYABLE = frozenset({"association_aborted", "unable_to_process", "partial"})
WAIT_FOR_TWIN_SECONDS = 5


def claim(db: Database, prefetch_id: str) -> bool:
    """Move a queued prefetch to running; False if another worker has it.

    A study already being retrieved for another registration is not asked for
    twice at once: this prefetch goes back to ``scheduled`` for
    :data:`WAIT_FOR_TWIN_SECONDS`, and then usually finds the study cached.
    """
    twin = aliased(Prefetch)
    running_twin = (
        select(twin.id)
        .where(
            twin.study_uid == Prefetch.study_uid,
            twin.state == PrefetchState.RUNNING,
            twin.id != Prefetch.id,
        )
        .exists()
    )
    with db.session() as session:
        result = session.execute(
            update(Prefetch)
            .where(
                Prefetch.id == prefetch_id,
                Prefetch.state == PrefetchState.QUEUED,
                ~running_twin,
            )
            .values(
                state=PrefetchState.RUNNING,
                started_at=utcnow(),
                attempts=Prefetch.attempts + 1,
            )
        )
        if getattr(result, "rowcount", 0):
            return True
        session.execute(
            update(Prefetch)
            .where(Prefetch.id == prefetch_id, Prefetch.state == PrefetchState.QUEUED)
            .values(
                state=PrefetchState.SCHEDULED,
                due_at=utcnow() + timedelta(seconds=WAIT_FOR_TWIN_SECONDS),
                reason="the study is being retrieved for another case",
            )
        )
        return False


def run(settings: Settings, db: Database, archive: Archive, prefetch_id: str) -> str:
    """Retrieve the study of a claimed prefetch; returns the final state."""
    with db.session() as session:
        prefetch = session.get(Prefetch, prefetch_id)
        if prefetch is None:
            return "missing"
        site_name, study_uid = prefetch.site_name, prefetch.study_uid
        expected = prefetch.expected_instances
    held = archive.count_instances(study_uid)
    if expected and held >= expected:
        # Already cached (for another case, or by an earlier attempt).
        with db.session() as session:
            prefetch = session.get(Prefetch, prefetch_id)
            if prefetch is None:
                return "missing"
            outcome = MoveOutcome("success", error_comment="already in the cache")
            state = conclude(prefetch, outcome, held)
            _log_done(prefetch, outcome)
        return state
    try:
        site = settings.directory.site(site_name)
    except ConfigurationError as exc:
        outcome = MoveOutcome("unable_to_process", error_comment=str(exc))
    else:
        audit.prefetch_begins(db, settings, prefetch_id, site)
        outcome = move_study(
            calling_ae=settings.ae_title,
            ae_title=site.ae_title,
            host=site.host,
            port=site.port,
            study_uid=study_uid,
            destination=settings.ae_title,
            timeout=site.timeout,
            tls=site_tls(site),
        )
    received = archive.count_instances(study_uid)
    with db.session() as session:
        prefetch = session.get(Prefetch, prefetch_id)
        if prefetch is None:
            return "missing"
        state = conclude(prefetch, outcome, received)
        _log_done(prefetch, outcome)
    return state


def conclude(prefetch: Prefetch, outcome: MoveOutcome, received: int) -> str:
    """Set the prefetch's state from the site's outcome and the cache's count."""
    expected = prefetch.expected_instances
    if expected is None and outcome.completed:
        expected = prefetch.expected_instances = outcome.completed
    prefetch.received_instances = received
    prefetch.dimse_status = outcome.status
    prefetch.finished_at = utcnow()
    if expected is not None and received >= expected and expected > 0:
        prefetch.state, prefetch.reason = PrefetchState.READY, None
    elif outcome.outcome in RETRYABLE and prefetch.attempts < MAX_ATTEMPTS:
        delay = RETRY_BASE_SECONDS * 2 ** (prefetch.attempts - 1)
        prefetch.state = PrefetchState.SCHEDULED
        prefetch.due_at = utcnow() + timedelta(seconds=delay)
        prefetch.reason = (
            f"retry {prefetch.attempts + 1} in {delay} s: {outcome.reason}"
        )
    else:
        prefetch.state = PrefetchState.PARTIAL if received else PrefetchState.FAILED
        prefetch.reason = _reason(outcome, received, expected)
    return str(prefetch.state)


def _reason(outcome: MoveOutcome, received: int, expected: int | None) -> str:
    if expected is None:
        count = f"{received} instance(s) received; the site announced no count"
    else:
        count = f"{received} of {expected} instance(s) received"
    if outcome.outcome == "success":
        return count
    return f"{count}; {outcome.reason}"


def _log_done(prefetch: Prefetch, outcome: MoveOutcome) -> None:
    logger.info(
        LOG_PREFETCH_DONE,
        extra={
            "prefetch": prefetch.id,
            "site": prefetch.site_name,
            "state": prefetch.state,
            "received": prefetch.received_instances,
            "expected": prefetch.expected_instances,
            "outcome": outcome.outcome,
            "attempt": prefetch.attempts,
        },
    )


def cancel_for(session: Session, registration_id: str) -> int:
    """Cancel the scheduled or queued prefetches of a registration."""
    result = session.execute(
        update(Prefetch)
        .where(
            Prefetch.registration_id == registration_id,
            Prefetch.state.in_([PrefetchState.SCHEDULED, PrefetchState.QUEUED]),
        )
        .values(
            state=PrefetchState.CANCELLED,
            finished_at=utcnow(),
            reason="the registration was cancelled",
        )
    )
    return int(getattr(result, "rowcount", 0))
