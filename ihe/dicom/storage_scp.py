"""Storage SCP (PS3.4 Annex B): the cache's C-STORE receiver.

Every instance is stored as received through :class:`~ihe.dicom.archive.Archive`.
What one association delivered is summarised per study when it ends, so the
caller can write one "DICOM Instances Transferred" audit message per study and
source rather than one per instance.

Limitations
-----------
Any calling AE may store; restricting callers to the configured sites and
consoles is not done yet.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event

from ihe.dicom.archive import Archive
from server.errors import StoreRefused

logger = logging.getLogger(__name__)

LOG_ASSOCIATION_DONE = "storage association ended"


class StoreStatus(IntEnum):
    """C-STORE response statuses used here (PS3.4 B.2.3, PS3.7 C)."""

    SUCCESS = 0x0000
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
    """

    def __init__(
        self,
        archive: Archive,
        on_association_done: Callable[[AssociationSummary], None] | None = None,
        on_refused: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.archive = archive
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
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            study_uid = str(ds.StudyInstanceUID)
            _ = ds.SeriesInstanceUID, ds.SOPInstanceUID
        except (AttributeError, ValueError, KeyError) as exc:
            logger.warning(
                "instance refused: unreadable identifiers",
                extra={"error": type(exc).__name__},
            )
            return StoreStatus.CANNOT_UNDERSTAND
        tsyntax = str(event.context.transfer_syntax)
        calling = event.assoc.requestor.ae_title
        try:
            stored = self.archive.store(
                event.encoded_dataset(include_meta=True), ds, tsyntax, calling
            )
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
        with self._lock:
            studies = self._open[id(event.assoc)]
            delivery = studies.get(study_uid)
            if delivery is None:
                delivery = studies[study_uid] = StudyDelivery(
                    study_uid, _text(ds.get("PatientID")), _text(ds.get("PatientName"))
                )
            delivery.sop_classes[str(ds.SOPClassUID)] += 1
            if stored.replaced:
                delivery.replaced += 1
            else:
                delivery.new += 1
        return StoreStatus.SUCCESS

    def handle_released(self, event: Event) -> None:
        """Summarise the association's deliveries."""
        self._finish(event, aborted=False)

    def handle_aborted(self, event: Event) -> None:
        """Summarise what arrived before the abort."""
        self._finish(event, aborted=True)

    def _finish(self, event: Event, aborted: bool) -> None:
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
