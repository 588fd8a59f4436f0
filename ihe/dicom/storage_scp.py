"""Storage SCP (PS3.4 Annex B): the cache's C-STORE receiver.

Every instance is stored as received through :class:`~ihe.dicom.archive.Archive`.
What one association delivered is summarised per study when it ends, so the
caller can write one "DICOM Instances Transferred" audit message per study and
source rather than one per instance.

Two ways of receiving, the same result. By default pynetdicom gathers each
dataset in memory and the handler writes those bytes. After
:func:`receive_into_files`, pynetdicom writes each dataset to a file as its
fragments arrive (Part 10: preamble, File Meta naming the negotiated transfer
syntax, then the dataset bytes as received); the handler reads only the
attributes before the pixel data, for the index, and moves the file into the
archive. No instance is then held in memory whole, and the pixel data is
never decoded or copied by Python code.

Given a :class:`~ihe.dicom.admission.StoreAdmission` (the cache's listener
always has one), an instance is kept only when a retrieve asked the calling
site for its study and patient; any other is answered 0x0124 (Refused: Not
Authorized, a general status of PS3.7 Annex C; PS3.4 B.2.3 has no C-STORE
status of its own for a refused caller) with the reason as Error Comment.
The first refusal of a study on an association is logged at WARNING (site,
reason) and reported to `on_refused`, to be audited as Use of Restricted
Function; the further instances of it are refused silently.

Limitations
-----------
Which callers may associate at all is decided by :mod:`ihe.dicom.acceptance`,
not here; without a :class:`~ihe.dicom.admission.StoreAdmission` (the demo's
simulated sites, tests) every instance is kept.
:func:`receive_into_files` switches pynetdicom for the whole process: other
C-STORE receivers in that process (a C-GET client reading
``event.encoded_dataset()``) would then fail, so only the cache's listener
process turns it on. pynetdicom writes those files in the system's temporary
folder; when that is another file system than the cache, each instance is
copied once more instead of being moved.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import _config, evt
from pynetdicom.events import Event

from ihe.dicom.admission import StoreAdmission
from ihe.dicom.archive import Archive, StoredInstance
from server.errors import StoreRefused

logger = logging.getLogger(__name__)

LOG_ASSOCIATION_DONE = "storage association ended"
LOG_NOT_ASKED = "instances refused: not asked for"
# Values longer than this are left unread when indexing a received file.
DEFER_SIZE = 4096


_umask = os.umask(0o022)
os.umask(_umask)
_FILE_MODE = 0o666 & ~_umask


def receive_into_files(enabled: bool = True) -> None:
    """Have pynetdicom write received C-STORE datasets straight to files.

    Process-wide (pynetdicom's ``STORE_RECV_CHUNKED_DATASET``); see the
    module's limitations.
    """
    _config.STORE_RECV_CHUNKED_DATASET = enabled


class StoreStatus(IntEnum):
    """C-STORE response statuses used here (PS3.4 B.2.3, PS3.7 C)."""

    SUCCESS = 0x0000
    NOT_AUTHORIZED = 0x0124  # Refused: Not Authorized, PS3.7 Annex C
    OUT_OF_RESOURCES = 0xA700
    CANNOT_UNDERSTAND = 0xC000


@dataclass
class StudyDelivery:
    """What one association delivered for one study."""

    study_uid: str
    patient_id: str | None
    patient_name: str | None
    new: int = 0
    replaced: int = 0
    sop_classes: Counter[str] = field(default_factory=Counter)


@dataclass
class AssociationSummary:
    """Every study one association delivered, for auditing."""

    calling_ae: str
    address: str
    aborted: bool
    studies: list[StudyDelivery]


class StorageSCP:
    """Event handlers that store instances in an archive.

    Parameters
    ----------
    archive : Archive
        Where instances go.
    on_association_done : callable, optional
        Called with an :class:`AssociationSummary` when an association that
        stored at least one instance is released or aborted.
    on_refused : callable, optional
        Called with (calling AE, address, what) for a refused instance (once
        per association and study when refused as not asked for).
    admission : StoreAdmission, optional
        Admits only the instances a retrieve asked for; without it, all.
    """

    def __init__(
        self,
        archive: Archive,
        on_association_done: Callable[[AssociationSummary], None] | None = None,
        on_refused: Callable[[str, str, str], None] | None = None,
        admission: StoreAdmission | None = None,
    ) -> None:
        self.archive = archive
        self.admission = admission
        self.on_association_done = on_association_done
        self.on_refused = on_refused
        self._lock = threading.Lock()
        self._open: dict[int, dict[str, StudyDelivery]] = defaultdict(dict)

    @property
    def handlers(self) -> list[evt.EventHandlerType]:
        """The (event, handler) pairs to bind on the AE's server."""
        return [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_RELEASED, self.handle_released),
            (evt.EVT_ABORTED, self.handle_aborted),
        ]

    def handle_store(self, event: Event) -> int | Dataset:
        """Store one instance; answer a DIMSE status, never raise."""
        received = _received_file(event)
        try:
            ds = _identifiers(event, received)
            study_uid = str(ds.StudyInstanceUID)
            _ = ds.SeriesInstanceUID, ds.SOPInstanceUID
        except (AttributeError, ValueError, KeyError, InvalidDicomError) as exc:
            logger.warning(
                "instance refused: unreadable identifiers",
                extra={"error": type(exc).__name__},
            )
            return StoreStatus.CANNOT_UNDERSTAND
        calling = event.assoc.requestor.ae_title
        refusal = self._refusal(event, ds, study_uid)
        if refusal is not None:
            return _failure(StoreStatus.NOT_AUTHORIZED, refusal)
        tsyntax = str(event.context.transfer_syntax)
        try:
            if received is None:
                stored = self.archive.store(
                    event.encoded_dataset(include_meta=True), ds, tsyntax, calling
                )
            else:
                stored = self._store_file(received, ds, tsyntax, calling)
        except StoreRefused as exc:
            logger.warning(
                "instance refused", extra={"reason": str(exc), "calling_ae": calling}
            )
            _report(self.on_refused, calling, event, f"C-STORE refused: {exc}")
            return _failure(StoreStatus.CANNOT_UNDERSTAND, str(exc))
        except OSError as exc:
            logger.error("instance not stored: disk error", extra={"error": str(exc)})
            return StoreStatus.OUT_OF_RESOURCES
        for warning in stored.warnings:
            logger.warning(
                "data quality: %s",
                warning,
                extra={"study_uid": study_uid, "calling_ae": calling},
            )
        self._count(event, ds, study_uid, stored.replaced)
        return StoreStatus.SUCCESS

    def _refusal(self, event: Event, ds: Dataset, study_uid: str) -> str | None:
        """Why this instance was not asked for, or ``None`` to store it."""
        if self.admission is None:
            return None
        requestor = event.assoc.requestor
        calling = str(requestor.ae_title).strip()
        verdict = self.admission.admit(
            event.assoc,
            calling,
            str(requestor.address),
            study_uid,
            _text(ds.get("PatientID")) or "",
        )
        if verdict.reason is None or not verdict.first:
            return verdict.reason
        logger.warning(
            LOG_NOT_ASKED,
            extra={
                "site": verdict.site,
                "calling_ae": calling,
                "reason": verdict.reason,
            },
        )
        what = f"C-STORE refused: {verdict.reason} (study {study_uid})"
        _report(self.on_refused, calling, event, what)
        return verdict.reason

    def _store_file(
        self, received: Path, ds: Dataset, tsyntax: str, calling: str
    ) -> StoredInstance:
        """Move (or, across file systems, copy) pynetdicom's file in."""
        # pynetdicom's temporary files are private (0600); archive files get
        # the permissions every other file of this process gets.
        os.chmod(received, _FILE_MODE)
        try:
            return self.archive.store_file(received, ds, tsyntax, calling)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        copy = self.archive.incoming_file()
        shutil.copyfile(received, copy)
        try:
            return self.archive.store_file(copy, ds, tsyntax, calling)
        finally:
            copy.unlink(missing_ok=True)

    def _count(self, event: Event, ds: Dataset, study_uid: str, replaced: bool) -> None:
        with self._lock:
            studies = self._open[id(event.assoc)]
            delivery = studies.get(study_uid)
            if delivery is None:
                delivery = studies[study_uid] = StudyDelivery(
                    study_uid, _text(ds.get("PatientID")), _text(ds.get("PatientName"))
                )
            delivery.sop_classes[str(ds.SOPClassUID)] += 1
            if replaced:
                delivery.replaced += 1
            else:
                delivery.new += 1

    def handle_released(self, event: Event) -> None:
        """Summarise the association's deliveries."""
        self._finish(event, aborted=False)

    def handle_aborted(self, event: Event) -> None:
        """Summarise what arrived before the abort."""
        self._finish(event, aborted=True)

    def _finish(self, event: Event, aborted: bool) -> None:
        if self.admission is not None:
            self.admission.forget(event.assoc)
        with self._lock:
            studies = self._open.pop(id(event.assoc), {})
        if not studies:
            return
        requestor = event.assoc.requestor
        summary = AssociationSummary(
            calling_ae=requestor.ae_title,
            address=str(requestor.address),
            aborted=aborted,
            studies=list(studies.values()),
        )
        logger.info(
            LOG_ASSOCIATION_DONE,
            extra={
                "calling_ae": summary.calling_ae,
                "studies": len(summary.studies),
                "instances": sum(s.new + s.replaced for s in summary.studies),
                "aborted": aborted,
            },
        )
        if self.on_association_done is not None:
            try:
                self.on_association_done(summary)
            except Exception:
                logger.exception("audit of a storage association failed")


def _received_file(event: Event) -> Path | None:
    """The file pynetdicom wrote the dataset to, or None (held in memory)."""
    try:
        path: Path | None = event.dataset_path
    except AttributeError:
        return None
    return path


def _identifiers(event: Event, received: Path | None) -> Dataset:
    """The dataset for the index: decoded lazily, or read up to the pixels."""
    if received is None:
        ds = event.dataset
        ds.file_meta = event.file_meta
        return ds
    return dcmread(received, stop_before_pixels=True, defer_size=DEFER_SIZE)


def _report(
    callback: Callable[[str, str, str], None] | None,
    calling: str,
    event: Event,
    what: str,
) -> None:
    if callback is None:
        return
    try:
        callback(calling, str(event.assoc.requestor.address), what)
    except Exception:
        logger.exception("reporting a refusal failed")


def _failure(status: int, comment: str) -> Dataset:
    """A C-STORE failure status with its Error Comment (0000,0902)."""
    rsp = Dataset()
    rsp.Status = status
    rsp.ErrorComment = comment[:64]
    return rsp


def _text(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None
