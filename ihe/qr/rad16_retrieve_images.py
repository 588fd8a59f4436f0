"""RAD-16 Retrieve Images: Study Root C-MOVE from a producing site (SCU side).

The site sends the study's instances on a separate association to the cache's
Storage SCP (the Move Destination). This module reads the C-MOVE responses
and classifies the outcome; whether the study is complete is decided by the
caller, by counting what the cache actually holds, since a final status of
0x0000 proves nothing when the counters are missing.

A retrieve names the whole study (STUDY level), or only what is missing of
it: some series whole (SERIES level: the Study Instance UID and a list of
Series Instance UIDs) and some instances of a partly received series (IMAGE
level: the study's and the series' UIDs and a list of SOP Instance UIDs).
PS3.4 C.4.2.2.1 lets the unique key of the retrieve level hold a list of
UIDs, the levels above a single one; so each partly received series is one
IMAGE-level request, and all the requests of a retrieve go on one
association, one after the other. A list is cut into requests of at most
:data:`MAX_UIDS_PER_REQUEST` UIDs, which keeps the identifier within the
64 KiB a UI value may hold in Explicit VR. Orthanc 1.10 honours such lists
at both levels, for C-MOVE and C-GET.

:class:`RetrieveOutcome` is the vocabulary of every retrieve transport: the
C-GET client (:mod:`ihe.qr.rad16_retrieve_images_cget`) and the WADO-RS client
(:mod:`ihe.dicomweb.rad107_wado_rs_retrieve`) answer with it too, and list in
``studies`` what they stored themselves, for the audit trail.

Outcomes (PS3.4 C.4.2.1.4, PS3.18 10.4.3, and what PACS really send):

============================  ===============================================
``success``                   0x0000
``partial``                   0xB000: some sub-operations failed or warned
``completed_with_warning``    another 0xBxxx warning some vendors send
``move_destination_unknown``  0xA801: the site does not know our AE title
``association_aborted``       abort, rejection or time-out before a final status
``unable_to_process``         0xCxxx, or any other failure status
``cancelled``                 0xFE00
``not_authorised``            HTTP 401 or 403: the site refused our credentials
``not_found``                 HTTP 404: the site holds nothing under that UID
============================  ===============================================

Of the requests of one retrieve, the outcome reported is the worst one
(:data:`SEVERITY`), with the counters summed; the requests stop after an
abort, a cancel or an unknown move destination, since the next ones would
fare the same.

Vendor quirk: Orthanc 1.10 answers a move destination it does not know with
0xC000 and no Error Comment, nothing in the response telling this case from
any other failure; it is classified ``unable_to_process`` and retried like
one, and only the site's own log names the cause. dcmtk's ``dcmqrscp``
answers 0xA801 as the standard says.

Limitations
-----------
No C-MOVE-CANCEL is sent on shutdown; the outcome does not yet distinguish a
site down from a site that refused the association. A site that ignores the
list of UIDs of an IMAGE-level request and sends a whole series, or nothing,
is not detected here: the cache's count after the retrieve decides.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom.association import Association

from ihe.dicom.sop_classes import StudyRootQueryRetrieveInformationModelMove
from ihe.dicom.storage_scp import StudyDelivery
from ihe.qr.association import associate, refused_text, released

logger = logging.getLogger(__name__)

LOG_MOVE_DONE = "C-MOVE finished"
SOP_CLASS = str(StudyRootQueryRetrieveInformationModelMove)
# Pending statuses of C-FIND, C-MOVE and C-GET (PS3.4 C.4.1, C.4.2, C.4.3):
# the operation continues.
PENDING = (0xFF00, 0xFF01)
# Seconds a retrieve waits at least for the site's next response: a site may
# take minutes between two while it sends.
MIN_DIMSE_TIMEOUT = 600.0
# UIDs named in one request: 500 UIDs of 64 characters and their separators
# stay under the 65,534 bytes of an Explicit VR UI value.
MAX_UIDS_PER_REQUEST = 500
# Outcomes from the worst to the best, to report several requests as one.
SEVERITY = (
    "move_destination_unknown",
    "not_authorised",
    "association_aborted",
    "cancelled",
    "unable_to_process",
    "not_found",
    "partial",
    "completed_with_warning",
    "success",
)
# After these, the remaining requests of a retrieve are not sent.
FINAL = frozenset(
    {"move_destination_unknown", "not_authorised", "association_aborted", "cancelled"}
)


@dataclass
class RetrieveOutcome:
    """What the site said about one retrieve (C-MOVE, C-GET or WADO-RS).

    Attributes
    ----------
    status : int or None
        The final DIMSE status (C-MOVE, C-GET).
    http_status : int or None
        The HTTP status of the answer (WADO-RS).
    studies : list of StudyDelivery
        What the retrieving client stored itself (C-GET, WADO-RS), per study;
        empty for C-MOVE, where the cache's Storage SCP reports deliveries.
    transport : str
        ``c-move`` or ``c-get``: the move-destination hint of :attr:`reason`
        applies to C-MOVE only.
    """

    outcome: str
    status: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None
    failed_uids: list[str] = field(default_factory=list)
    error_comment: str | None = None
    studies: list[StudyDelivery] = field(default_factory=list)
    http_status: int | None = None
    transport: str = "c-move"

    @property
    def reason(self) -> str:
        """One line for the coordinator, with the status code when known."""
        code = ""
        if self.status is not None:
            code = f" (0x{self.status:04X})"
        elif self.http_status is not None:
            code = f" (HTTP {self.http_status})"
        text = {
            "success": "the site reported success",
            "partial": f"the site could not send {self.failed or 0} instance(s)",
            "completed_with_warning": "the site completed with a warning",
            "move_destination_unknown": "the site does not know this cache's AE title",
            "association_aborted": "the association was aborted or timed out",
            "unable_to_process": "the site could not process the retrieve",
            "cancelled": "the retrieve was cancelled",
            "not_authorised": "not authorised by the site",
            "not_found": "the site holds nothing under this UID",
        }.get(self.outcome, self.outcome)
        if self.error_comment:
            text += f": {self.error_comment}"
        text += code
        # Orthanc 1.10, among others, answers a C-MOVE to an unknown
        # destination with 0xC000 rather than 0xA801.
        if (
            self.transport == "c-move"
            and self.outcome == "unable_to_process"
            and self.status is not None
            and self.completed in (None, 0)
        ):
            text += (
                "; if the site never sends anything, check that it knows this "
                "cache's AE title, host and port as a move destination"
            )
        return text


# The name this class had when C-MOVE was the only transport.
MoveOutcome = RetrieveOutcome


def retrieve_identifier(
    study_uid: str, series_uids: Sequence[str] | None = None
) -> Dataset:
    """The Study Root C-MOVE / C-GET identifier (PS3.4 C.4.2.2.1, C.4.3.2.1).

    STUDY level for the whole study; SERIES level, with the list of Series
    Instance UIDs, when `series_uids` is given.
    """
    identifier = Dataset()
    if series_uids:
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = list(series_uids)
    else:
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study_uid
    return identifier


def retrieve_identifiers(
    study_uid: str,
    series_uids: Sequence[str] | None = None,
    instance_uids: Mapping[str, Sequence[str]] | None = None,
) -> list[Dataset]:
    """The identifiers of one retrieve, in the order they are sent.

    Parameters
    ----------
    series_uids : sequence of str, optional
        Series wanted whole: SERIES-level identifiers.
    instance_uids : mapping, optional
        Series Instance UID to the SOP Instance UIDs wanted of that series:
        IMAGE-level identifiers, one series each.

    Returns
    -------
    list of Dataset
        One STUDY-level identifier when neither is given; otherwise the
        SERIES-level ones, then the IMAGE-level ones, each naming at most
        :data:`MAX_UIDS_PER_REQUEST` UIDs.
    """
    identifiers = [
        retrieve_identifier(study_uid, chunk)
        for chunk in _chunks(list(dict.fromkeys(series_uids or ())))
    ]
    for series_uid, uids in (instance_uids or {}).items():
        for chunk in _chunks(list(dict.fromkeys(uids))):
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "IMAGE"
            identifier.StudyInstanceUID = study_uid
            identifier.SeriesInstanceUID = series_uid
            identifier.SOPInstanceUID = chunk if len(chunk) > 1 else chunk[0]
            identifiers.append(identifier)
    return identifiers or [retrieve_identifier(study_uid)]


def combine(outcomes: Sequence[RetrieveOutcome]) -> RetrieveOutcome:
    """Several requests' outcomes as one: the worst, with counters summed.

    The worst outcome (:data:`SEVERITY`) gives the status and comment; the
    sub-operation counters are summed over the requests that reported them
    and the failed UIDs put together.
    """
    if not outcomes:
        return RetrieveOutcome("success")
    worst = min(
        outcomes,
        key=lambda o: SEVERITY.index(o.outcome) if o.outcome in SEVERITY else 0,
    )
    result = RetrieveOutcome(
        worst.outcome,
        status=worst.status,
        error_comment=worst.error_comment,
        http_status=worst.http_status,
        transport=worst.transport,
    )
    for attr in ("completed", "failed", "warning"):
        counts = [getattr(o, attr) for o in outcomes if getattr(o, attr) is not None]
        setattr(result, attr, sum(counts) if counts else None)
    result.failed_uids = [uid for o in outcomes for uid in o.failed_uids]
    result.studies = [study for o in outcomes for study in o.studies]
    return result


def move_study(
    *,
    calling_ae: str,
    ae_title: str,
    host: str,
    port: int,
    study_uid: str,
    destination: str,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
    on_progress: Callable[[int, int | None], None] | None = None,
    series_uids: Sequence[str] | None = None,
    instance_uids: Mapping[str, Sequence[str]] | None = None,
) -> MoveOutcome:
    """Ask a site to send `study_uid`, or what is missing of it, to `destination`.

    Parameters
    ----------
    on_progress : callable, optional
        Called with (completed, remaining) on each pending response, counted
        within the request under way.
    series_uids : sequence of str, optional
        Series wanted whole: SERIES-level C-MOVEs.
    instance_uids : mapping, optional
        Series Instance UID to the SOP Instance UIDs wanted of it: IMAGE-level
        C-MOVEs. With neither, the whole study (STUDY level).

    Returns
    -------
    MoveOutcome
        Never raises for peer behaviour; every failure is an outcome.
    """
    identifiers = retrieve_identifiers(study_uid, series_uids, instance_uids)
    assoc = associate(
        calling_ae=calling_ae,
        ae_title=ae_title,
        host=host,
        port=port,
        contexts=[(SOP_CLASS, None)],
        timeout=timeout,
        dimse_timeout=max(timeout, MIN_DIMSE_TIMEOUT),
        tls=tls,
    )
    if not assoc.is_established:
        return log_outcome(
            logger,
            LOG_MOVE_DONE,
            MoveOutcome("association_aborted", error_comment=refused_text(ae_title)),
        )
    with released(assoc):
        outcomes = list(
            sent_in_turn(
                identifiers,
                lambda ds: _send_move(assoc, ds, ae_title, destination, on_progress),
            )
        )
    return log_outcome(logger, LOG_MOVE_DONE, combine(outcomes))


def sent_in_turn(
    identifiers: Sequence[Dataset],
    send: Callable[[Dataset], RetrieveOutcome],
) -> Iterator[RetrieveOutcome]:
    """Send each identifier in turn; stop after an outcome in :data:`FINAL`."""
    for identifier in identifiers:
        outcome = send(identifier)
        yield outcome
        if outcome.outcome in FINAL:
            return


def _send_move(
    assoc: Association,
    identifier: Dataset,
    ae_title: str,
    destination: str,
    on_progress: Callable[[int, int | None], None] | None,
) -> MoveOutcome:
    """One C-MOVE request and its responses, read into an outcome."""
    result = read_responses(
        assoc,
        lambda: assoc.send_c_move(identifier, destination, SOP_CLASS),
        ae_title,
        on_progress,
    )
    if result.outcome == "move_destination_unknown":
        result.error_comment = (
            f"{ae_title} does not know move destination {destination}"
        )
    return result


def read_responses(
    assoc: Association,
    send: Callable[[], Iterator[tuple[Dataset, Dataset | None]]],
    peer: str,
    on_progress: Callable[[int, int | None], None] | None,
) -> RetrieveOutcome:
    """One C-MOVE or C-GET request's responses, read into an outcome.

    Pending responses (PS3.4 C.4.2, C.4.3) carry the counters and go
    to `on_progress`; the final one gives the status, its Error Comment and
    the Failed SOP Instance UID List. No final response is an aborted
    association.

    Parameters
    ----------
    send : callable
        Sends the request on `assoc` and yields its (status, identifier)
        responses.
    peer : str
        How the site is named in the error comments.
    """
    result = RetrieveOutcome("association_aborted")
    if not assoc.is_established:
        result.error_comment = f"the association with {peer} ended"
        return result
    for status, rsp in send():
        if not status or "Status" not in status:
            result.error_comment = f"no final response from {peer}"
            break
        code = int(status.Status)
        read_counters(result, status)
        if code in PENDING:
            if on_progress is not None:
                remaining = status.get("NumberOfRemainingSuboperations")
                on_progress(
                    result.completed or 0,
                    int(remaining) if remaining is not None else None,
                )
            continue
        result.status = code
        result.outcome = classify(code)
        comment = status.get("ErrorComment")
        result.error_comment = str(comment).strip() if comment else None
        result.failed_uids = failed_uids(rsp)
    return result


def classify(code: int) -> str:
    """The outcome name for a final C-MOVE status."""
    if code == 0x0000:
        return "success"
    if code == 0xB000:
        return "partial"
    if 0xB000 < code <= 0xBFFF:
        return "completed_with_warning"
    if code == 0xA801:
        return "move_destination_unknown"
    if code == 0xFE00:
        return "cancelled"
    return "unable_to_process"


def read_counters(result: RetrieveOutcome, status: Dataset) -> None:
    """Copy the sub-operation counters a C-MOVE or C-GET response carries."""
    for attr, keyword in (
        ("completed", "NumberOfCompletedSuboperations"),
        ("failed", "NumberOfFailedSuboperations"),
        ("warning", "NumberOfWarningSuboperations"),
    ):
        value = status.get(keyword)
        if value is not None:
            setattr(result, attr, int(value))


def failed_uids(rsp: Dataset | None) -> list[str]:
    """Failed SOP Instance UID List (0008,0058) of a final response's Identifier.

    The list is in the Identifier, not the command set (PS3.4 C.4.2.1.4.2).
    """
    failed = rsp.get("FailedSOPInstanceUIDList") if rsp is not None else None
    if not failed:
        return []
    return [str(u) for u in ([failed] if isinstance(failed, str) else failed)]


def _chunks(uids: list[str]) -> list[list[str]]:
    step = MAX_UIDS_PER_REQUEST
    return [uids[n : n + step] for n in range(0, len(uids), step)]


def log_outcome(
    log: logging.Logger, message: str, result: RetrieveOutcome
) -> RetrieveOutcome:
    """Log the end of a retrieve with its outcome and counters; `result`."""
    log.info(
        message,
        extra={
            "outcome": result.outcome,
            "status": result.status,
            "completed": result.completed,
            "failed": result.failed,
        },
    )
    return result
