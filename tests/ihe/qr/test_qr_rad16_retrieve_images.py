"""RAD-16 Retrieve Images: C-MOVE outcomes of field case C14.

A fake Move SCP (pynetdicom, written here) replays the scenarios of
``C14-cmove-status-scenarios.json``; its C-STORE sub-operations go to our own
Storage SCP over an archive, as they would to the cache.

pynetdicom lets a C-MOVE handler choose the final status, its Error Comment
and its identifier (Failed SOP Instance UID List). It computes the counters of
a final Failure or Warning itself: Failed is the failed sub-operations plus
those still remaining, Completed those whose C-STORE succeeded. Only a status
it does not know (0xB100) is sent with the handler's own counters. Pending
responses follow the real C-STORE sub-operations, one each.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from ihe.dicom.sop_classes import StudyRootQueryRetrieveInformationModelMove
from ihe.qr.rad16_retrieve_images import (
    MoveOutcome,
    RetrieveOutcome,
    classify,
    move_study,
)
from tests.ihe.dicom.dicom_support import (
    SECONDARY_CAPTURE,
    CacheServer,
    cache_server,
    make_dataset,
    open_archive,
)
from tests.peers import LOCALHOST, free_port

SCENARIOS_NAME = "C14-cmove-status-scenarios.json"
# tests/data/dicom when the case has been copied into the repository, else the
# shared cases folder beside the checkout.
SCENARIOS_FILES = (
    Path(__file__).parents[2] / "data" / "dicom" / SCENARIOS_NAME,
    Path(__file__).resolve().parents[3].parent / "shared" / "cases" / SCENARIOS_NAME,
)
SITE_AE = "PACS_NORD"
ABORT_LIMIT_S = 5.0

Handler = Callable[[Event], Iterator[Any]]


def _load() -> dict[str, Any]:
    for path in SCENARIOS_FILES:
        if path.exists():
            return dict(json.loads(path.read_text(encoding="utf-8")))
    reason = f"{SCENARIOS_NAME} not found in {[str(p) for p in SCENARIOS_FILES]}"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def c14() -> dict[str, Any]:
    return _load()


def scenario(c14: dict[str, Any], prefix: str) -> dict[str, Any]:
    [found] = [s for s in c14["scenarios"] if s["id"].startswith(prefix + "_")]

    return dict(found)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[CacheServer]:
    """Our Storage SCP: the Move Destination the fake site sends to."""
    archive, db = open_archive(tmp_path)
    try:
        with cache_server(archive, ae_title="INTEROP_GW") as server:
            yield server
    finally:
        db.dispose()


@pytest.fixture
def site() -> Iterator[Callable[[Handler], int]]:
    """Start a fake Move SCP running `handler`; return its port."""
    servers: list[ThreadedAssociationServer] = []

    def start(handler: Handler) -> int:
        ae = AE(ae_title=SITE_AE)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        ae.add_requested_context(SECONDARY_CAPTURE)
        port = free_port()
        server = ae.start_server(
            (LOCALHOST, port),
            block=False,
            evt_handlers=[(evt.EVT_C_MOVE, handler)],
        )
        assert server is not None
        servers.append(server)

        return port

    yield start
    for server in servers:
        server.shutdown()


def replay(c14: dict[str, Any], case: dict[str, Any], cache: CacheServer) -> Handler:
    """A C-MOVE handler that plays `case`: its stores, then its final response."""
    study_uid = c14["request"]["StudyInstanceUID"]
    final = case["responses"][-1]
    failed_uids = final.get("FailedSOPInstanceUIDList", [])
    stores = [
        make_dataset(uid, study_uid=study_uid, series_uid=f"{study_uid}.1")
        for uid in (f"{study_uid}.1.{n}" for n in range(1, 121))
        if uid not in failed_uids
    ][: case["stores_sent"]]
    # One sub-operation more than the stores, so that pynetdicom still takes
    # the final status from the handler; failed instances count as remaining.
    total = len(stores) + max(len(failed_uids), 1)

    def handle_move(event: Event) -> Iterator[Any]:
        yield LOCALHOST, cache.port
        yield total
        for ds in stores:
            yield 0xFF00, ds
        yield _final_status(final), _final_identifier(failed_uids)

    return handle_move


def _final_status(response: dict[str, Any]) -> Dataset:
    status = Dataset()
    status.Status = int(response["status"], 16)
    if "ErrorComment" in response:
        status.ErrorComment = response["ErrorComment"]
    status.NumberOfRemainingSuboperations = response["remaining"]
    for keyword, key in (
        ("NumberOfCompletedSuboperations", "completed"),
        ("NumberOfFailedSuboperations", "failed"),
        ("NumberOfWarningSuboperations", "warning"),
    ):
        if response[key] is not None:
            setattr(status, keyword, response[key])

    return status


def _final_identifier(failed_uids: list[str]) -> Dataset | None:
    if not failed_uids:
        return None
    ds = Dataset()
    ds.FailedSOPInstanceUIDList = failed_uids

    return ds


def move(port: int, c14: dict[str, Any], **kwargs: Any) -> MoveOutcome:
    return move_study(
        calling_ae="SPIDERS",
        ae_title=SITE_AE,
        host=LOCALHOST,
        port=port,
        study_uid=c14["request"]["StudyInstanceUID"],
        destination=c14["request"]["move_destination"],
        timeout=10.0,
        **kwargs,
    )


def test_move_study_m1_a801_destination_unknown_names_ae_and_status(
    c14: dict[str, Any], cache: CacheServer, site: Callable[[Handler], int]
) -> None:
    port = site(replay(c14, scenario(c14, "M1"), cache))

    result = move(port, c14)

    assert result.outcome == "move_destination_unknown"
    assert result.status == 0xA801
    assert result.error_comment is not None
    assert result.error_comment == "PACS_NORD does not know move destination INTEROP_GW"
    assert result.reason == (
        "the site does not know this cache's AE title: PACS_NORD does not know "
        "move destination INTEROP_GW (0xA801)"
    )
    assert cache.archive.count_instances(c14["request"]["StudyInstanceUID"]) == 0


def test_move_study_a801_without_counters_destination_unknown(
    c14: dict[str, Any], site: Callable[[Handler], int]
) -> None:
    # pynetdicom's own answer for an unknown destination: no counters at all.
    def unknown_destination(event: Event) -> Iterator[Any]:
        yield None, None

    port = site(unknown_destination)

    result = move(port, c14)

    assert (result.outcome, result.status) == ("move_destination_unknown", 0xA801)
    assert (result.completed, result.failed, result.warning) == (None, None, None)
    assert "INTEROP_GW" in result.reason
    assert "A801" in result.reason


def test_move_study_m2_peer_aborts_association_aborted_within_5_s(
    c14: dict[str, Any], site: Callable[[Handler], int]
) -> None:
    def abort(event: Event) -> Iterator[Any]:
        event.assoc.abort()
        yield None, None

    port = site(abort)
    started = time.monotonic()

    result = move(port, c14)

    assert time.monotonic() - started < ABORT_LIMIT_S
    assert result.outcome == "association_aborted"
    assert result.status is None


def test_move_study_m3_b000_partial_with_failed_uids(
    c14: dict[str, Any], cache: CacheServer, site: Callable[[Handler], int]
) -> None:
    case = scenario(c14, "M3")
    expected = case["expected"]
    port = site(replay(c14, case, cache))
    progress: list[tuple[int, int | None]] = []

    result = move(
        port, c14, on_progress=lambda done, left: progress.append((done, left))
    )

    assert result.outcome == expected["outcome"] == "partial"
    assert result.status == 0xB000
    assert (result.completed, result.failed, result.warning) == (
        expected["completed"],
        expected["failed"],
        expected["warning"],
    )
    assert result.failed_uids == expected["failed_sop_instance_uids"]
    assert progress[0] == (1, 119)
    assert progress[-1] == (118, 2)
    assert len(progress) == 118
    study_uid = c14["request"]["StudyInstanceUID"]
    assert cache.archive.count_instances(study_uid) == 118
    assert "2 instance(s)" in result.reason


def test_move_study_m5_b100_completed_with_warning_no_exception(
    c14: dict[str, Any], cache: CacheServer, site: Callable[[Handler], int]
) -> None:
    case = scenario(c14, "M5")
    port = site(replay(c14, case, cache))

    result = move(port, c14)

    assert result.outcome == case["expected"]["outcome"] == "completed_with_warning"
    assert result.status == 0xB100
    assert (result.completed, result.failed, result.warning) == (120, 0, 0)
    assert result.failed_uids == []
    assert result.reason.endswith("(0xB100)")
    assert cache.archive.count_instances(c14["request"]["StudyInstanceUID"]) == 120


def test_move_study_m6_c001_unable_to_process_with_error_comment(
    c14: dict[str, Any], cache: CacheServer, site: Callable[[Handler], int]
) -> None:
    case = scenario(c14, "M6")
    port = site(replay(c14, case, cache))

    result = move(port, c14)

    assert result.outcome == case["expected"]["reason"] == "unable_to_process"
    assert result.status == 0xC001
    assert result.error_comment == case["expected"]["error_comment_reported"]
    assert result.error_comment == "Unable to process"
    assert result.reason == (
        "the site could not process the retrieve: Unable to process (0xC001); if "
        "the site never sends anything, check that it knows this cache's AE "
        "title, host and port as a move destination"
    )


# pynetdicom 3.0.4 leaves the refused socket to the garbage collector.
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
def test_move_study_closed_port_association_aborted(c14: dict[str, Any]) -> None:
    result = move(free_port(), c14)

    assert result.outcome == "association_aborted"
    assert result.error_comment == (
        f"no association with {SITE_AE}: refused, unreachable or timed out"
    )


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (0x0000, "success"),
        (0xB000, "partial"),
        (0xB100, "completed_with_warning"),
        (0xA801, "move_destination_unknown"),
        (0xA701, "unable_to_process"),
        (0xA702, "unable_to_process"),
        (0xC001, "unable_to_process"),
        (0xFE00, "cancelled"),
    ],
)
def test_classify_final_status_outcome(code: int, outcome: str) -> None:
    assert classify(code) == outcome


NOTHING_SENT_HINT = (
    "; if the site never sends anything, check that it knows this cache's AE "
    "title, host and port as a move destination"
)


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        # Orthanc 1.10's answer to an unknown move destination.
        (
            RetrieveOutcome("unable_to_process", status=0xC000, completed=0),
            "the site could not process the retrieve (0xC000)" + NOTHING_SENT_HINT,
        ),
        (
            RetrieveOutcome("unable_to_process", status=0xA702),
            "the site could not process the retrieve (0xA702)" + NOTHING_SENT_HINT,
        ),
        (
            RetrieveOutcome("unable_to_process", status=0xC000, completed=3),
            "the site could not process the retrieve (0xC000)",
        ),
        # A C-GET has no move destination to check.
        (
            RetrieveOutcome(
                "unable_to_process", status=0xC000, completed=0, transport="c-get"
            ),
            "the site could not process the retrieve (0xC000)",
        ),
        (
            RetrieveOutcome("unable_to_process", http_status=503),
            "the site could not process the retrieve (HTTP 503)",
        ),
        (
            RetrieveOutcome("association_aborted", completed=0),
            "the association was aborted or timed out",
        ),
    ],
)
def test_retrieve_outcome_reason_nothing_sent_hint_only_after_dimse_failure(
    outcome: RetrieveOutcome, expected: str
) -> None:
    assert outcome.reason == expected
