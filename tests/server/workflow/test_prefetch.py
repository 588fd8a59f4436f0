"""How a prefetch concludes: the cache's count decides, retries only what may pass."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ihe.qr.rad16_retrieve_images import MoveOutcome
from server.models import Prefetch, PrefetchState
from server.workflow.prefetch import MAX_ATTEMPTS, conclude


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
        error_comment="SITE does not know move destination X (A801)",
    )
    assert conclude(p, outcome, 0) == PrefetchState.FAILED
    assert "A801" in (p.reason or "")


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
