"""RAD-107 WADO-RS Retrieve: a study, or what is missing of it, over DICOMweb.

IHE RAD TF-2 4.107 and DICOM PS3.18 10.4 (Retrieve Transaction): ``GET
{base}/studies/{study}``, or only what is missing of it: one request per
series wanted whole (``.../studies/{study}/series/{series}``) and one per
instance of a partly received series
(``.../series/{series}/instances/{instance}``), each with ``Accept:
multipart/related; type="application/dicom"; transfer-syntax=*``, so that
the site sends each
instance in the transfer syntax it holds, as C-MOVE would. The answer is read
as it arrives (:class:`~ihe.dicomweb.multipart.MultipartReader`): each part is
written to a file in the archive's work folder and handed to
:meth:`~ihe.dicom.archive.Archive.store_file`, the checks and index of the
Storage SCP; memory use does not grow with the study. A bandwidth cap, when
set, slows the reading down to that many megabits per second.

HTTP answers in the vocabulary of :mod:`ihe.qr.rad16_retrieve_images`:

=======================================  ======================================
200 with a complete body                 ``success`` (``partial`` when some
                                         parts were refused)
body cut short, or a read time-out       ``partial`` when parts arrived, else
                                         ``association_aborted``
401, 403                                 ``not_authorised``
404                                      ``not_found``
no answer, time-out, TLS failure         ``association_aborted``
5xx, another status, not multipart       ``unable_to_process``
=======================================  ======================================

Of several requests, the worst outcome is reported; after a time-out, a
failed connection or a refusal of our credentials the remaining requests are
not sent, since they would fare the same.

Limitations
-----------
Redirects are not followed. Missing instances are asked for one request
each, which costs a round trip per instance. A part whose Content-Type is not
``application/dicom`` (a bulk-data or metadata part) is skipped and counted
as failed. A part's Content-Location is not checked against the request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlsplit

import requests
import urllib3
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ihe.dicom.archive import Archive
from ihe.dicom.storage_scp import StudyDelivery
from ihe.dicomweb.multipart import MultipartReader, media_type_params
from ihe.dicomweb.rad129_qido_rs_query import Endpoint, http_get
from ihe.qr.rad16_retrieve_images import RetrieveOutcome
from server.errors import PeerError, StoreRefused

logger = logging.getLogger(__name__)

LOG_RETRIEVE_DONE = "wado-rs retrieve done"
LOG_PART_REFUSED = "retrieved instance refused"
ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DICOM_MEDIA_TYPE = "application/dicom"
CHUNK = 64 * 1024
# Outcomes from the worst to the best, to combine several requests.
_SEVERITY = (
    "not_authorised",
    "association_aborted",
    "unable_to_process",
    "not_found",
    "partial",
    "success",
)

# After these, the remaining requests would fare the same: not sent.
_FINAL = frozenset({"not_authorised", "association_aborted"})

Clock = Callable[[], float]
Sleep = Callable[[float], None]


@dataclass
class _Tally:
    """What one retrieve stored, per study, and what it could not."""

    source: str
    stored: int = 0
    refused: int = 0
    refused_uids: list[str] = field(default_factory=list)
    studies: dict[str, StudyDelivery] = field(default_factory=dict)


def retrieve_study(
    endpoint: Endpoint,
    study_uid: str,
    archive: Archive,
    *,
    series_uids: Sequence[str] | None = None,
    instance_uids: Mapping[str, Sequence[str]] | None = None,
    bandwidth_mbps: float | None = None,
    source: str | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> RetrieveOutcome:
    """Retrieve `study_uid` (or what is missing of it) into `archive`.

    Parameters
    ----------
    endpoint : Endpoint
        The site's DICOMweb service.
    series_uids : sequence of str, optional
        Series wanted whole, one request each.
    instance_uids : mapping, optional
        Series Instance UID to the SOP Instance UIDs wanted of it, one request
        per instance. With neither, the whole study in one request.
    bandwidth_mbps : float, optional
        Read no faster than this many megabits (10**6 bits) per second.
    source : str, optional
        The sender's name recorded with each instance (the site's AE title);
        the URL's host when not given.
    clock, sleep : callable
        Time sources for the bandwidth cap (tests pass their own).

    Returns
    -------
    RetrieveOutcome
        With ``studies`` listing what was stored. Never raises for peer
        behaviour; every failure is an outcome.
    """
    tally = _Tally(source or urlsplit(endpoint.url).hostname or endpoint.url)
    urls = retrieve_urls(endpoint.url, study_uid, series_uids, instance_uids)
    throttle = _Throttle(bandwidth_mbps, clock, sleep)
    outcomes: list[RetrieveOutcome] = []
    with requests.Session() as http:
        for url in urls:
            outcomes.append(_retrieve(http, endpoint, url, archive, tally, throttle))
            if outcomes[-1].outcome in _FINAL:
                break
    result = min(outcomes, key=lambda o: _SEVERITY.index(o.outcome))
    result.completed = tally.stored
    result.failed = tally.refused
    result.failed_uids = list(tally.refused_uids)
    result.studies = list(tally.studies.values())
    if result.outcome == "success" and tally.refused:
        result.outcome = "partial"
    logger.info(
        LOG_RETRIEVE_DONE,
        extra={
            "outcome": result.outcome,
            "http_status": result.http_status,
            "completed": result.completed,
            "failed": result.failed,
            "requests": len(urls),
        },
    )
    return result


def retrieve_urls(
    base_url: str,
    study_uid: str,
    series_uids: Sequence[str] | None = None,
    instance_uids: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """The request URLs of one retrieve: the study's, or one per series
    wanted whole and one per instance wanted."""
    study = f"{base_url.rstrip('/')}/studies/{quote(study_uid, safe='')}"
    urls = [
        f"{study}/series/{quote(uid, safe='')}"
        for uid in dict.fromkeys(series_uids or ())
    ]
    for series_uid, uids in (instance_uids or {}).items():
        series = f"{study}/series/{quote(series_uid, safe='')}"
        urls += [
            f"{series}/instances/{quote(uid, safe='')}" for uid in dict.fromkeys(uids)
        ]
    return urls or [study]


def _retrieve(
    http: requests.Session,
    endpoint: Endpoint,
    url: str,
    archive: Archive,
    tally: _Tally,
    throttle: _Throttle,
) -> RetrieveOutcome:
    """One GET: its status, then its multipart body part by part."""
    try:
        response = http_get(http, endpoint, url, ACCEPT)
    except requests.Timeout:
        return RetrieveOutcome("association_aborted", error_comment="no answer in time")
    except requests.exceptions.SSLError:
        return RetrieveOutcome("association_aborted", error_comment="TLS failed")
    except requests.RequestException:
        return RetrieveOutcome("association_aborted", error_comment="unreachable")
    with response:
        status = response.status_code
        if status != 200:
            return _http_failure(status)
        media_type, params = media_type_params(response.headers.get("Content-Type", ""))
        if media_type != "multipart/related" or "boundary" not in params:
            return RetrieveOutcome(
                "unable_to_process",
                http_status=status,
                error_comment=f"the answer is {media_type}, not multipart/related",
            )
        return _read_body(response, params["boundary"], archive, tally, throttle)


def _read_body(
    response: requests.Response,
    boundary: str,
    archive: Archive,
    tally: _Tally,
    throttle: _Throttle,
) -> RetrieveOutcome:
    stored_before = tally.stored
    sink = _ArchiveSink(archive, tally)
    try:
        reader = MultipartReader(boundary, sink)
    except PeerError as exc:
        return RetrieveOutcome(
            "unable_to_process", http_status=200, error_comment=str(exc)
        )
    try:
        # read1: what has arrived, so a connection that breaks off loses
        # nothing already received (read() would drop its last buffer).
        while chunk := response.raw.read1(CHUNK, decode_content=True):
            reader.feed(chunk)
            throttle.consumed(len(chunk))
    except PeerError as exc:
        sink.abandon()
        return _cut_short(tally, stored_before, str(exc))
    except (urllib3.exceptions.HTTPError, OSError):
        reader.close()
        return _cut_short(
            tally, stored_before, "the answer broke off or could not be written"
        )
    if not reader.close():
        return _cut_short(tally, stored_before, "the answer ended before its end")
    return RetrieveOutcome("success", http_status=response.status_code)


def _cut_short(tally: _Tally, stored_before: int, comment: str) -> RetrieveOutcome:
    kind = "partial" if tally.stored > stored_before else "association_aborted"
    return RetrieveOutcome(kind, http_status=200, error_comment=comment)


def _http_failure(status: int) -> RetrieveOutcome:
    if status in (401, 403):
        return RetrieveOutcome(
            "not_authorised",
            http_status=status,
            error_comment="check the site's dicomweb auth_header",
        )
    if status == 404:
        return RetrieveOutcome("not_found", http_status=status)
    return RetrieveOutcome("unable_to_process", http_status=status)


class _ArchiveSink:
    """Each part into a file of the archive's work folder, then the archive."""

    def __init__(self, archive: Archive, tally: _Tally) -> None:
        self.archive = archive
        self.tally = tally
        self._path: Path | None = None
        self._file: BinaryIO | None = None

    def begin(self, headers: dict[str, str]) -> None:
        media_type, _ = media_type_params(headers.get("content-type", ""))
        if media_type != DICOM_MEDIA_TYPE:
            logger.warning(LOG_PART_REFUSED, extra={"reason": "not application/dicom"})
            self.tally.refused += 1
            return
        self._path = self.archive.incoming_file()
        self._file = self._path.open("wb")

    def write(self, data: bytes) -> None:
        if self._file is not None:
            self._file.write(data)

    def end(self) -> None:
        if self._file is None or self._path is None:
            return
        self._file.close()
        path, self._file, self._path = self._path, None, None
        try:
            self._store(path)
        finally:
            path.unlink(missing_ok=True)

    def abandon(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        self._file = self._path = None

    def _store(self, path: Path) -> None:
        try:
            ds = dcmread(path, stop_before_pixels=True)
            transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
            stored = self.archive.store_file(
                path, ds, transfer_syntax, self.tally.source
            )
        except (InvalidDicomError, AttributeError, ValueError, KeyError) as exc:
            logger.warning(LOG_PART_REFUSED, extra={"reason": type(exc).__name__})
            self.tally.refused += 1
            return
        except StoreRefused as exc:
            logger.warning(LOG_PART_REFUSED, extra={"reason": str(exc)})
            self.tally.refused += 1
            self.tally.refused_uids.append(str(ds.SOPInstanceUID))
            return
        for warning in stored.warnings:
            logger.warning("data quality: %s", warning)
        self._count(ds, stored.study_uid, stored.replaced)

    def _count(self, ds: Dataset, study_uid: str, replaced: bool) -> None:
        tally = self.tally
        tally.stored += 1
        delivery = tally.studies.get(study_uid)
        if delivery is None:
            delivery = tally.studies[study_uid] = StudyDelivery(
                study_uid, _text(ds.get("PatientID")), _text(ds.get("PatientName"))
            )
        delivery.sop_classes[str(ds.get("SOPClassUID", ""))] += 1
        if replaced:
            delivery.replaced += 1
        else:
            delivery.new += 1


class _Throttle:
    """Sleep as needed so that reading stays under a bit rate."""

    def __init__(self, mbps: float | None, clock: Clock, sleep: Sleep) -> None:
        self.bytes_per_second = mbps * 1e6 / 8 if mbps else None
        self.clock = clock
        self.sleep = sleep
        self.started: float | None = None
        self.total = 0

    def consumed(self, size: int) -> None:
        if self.bytes_per_second is None:
            return
        now = self.clock()
        if self.started is None:
            self.started = now
        self.total += size
        ahead = self.total / self.bytes_per_second - (now - self.started)
        if ahead > 0:
            self.sleep(ahead)


def _text(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None
