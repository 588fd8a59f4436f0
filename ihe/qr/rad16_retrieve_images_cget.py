"""RAD-16 Retrieve Images over C-GET: the site sends on our own association.

The same transaction as :mod:`ihe.qr.rad16_retrieve_images` (Study Root
retrieve of a study, or of what is missing of it: whole series, and
instances of a partly received series at IMAGE level, each request on the
same association, one after the other), with the other DIMSE service
of PS3.4 C.4.3: the site sends the instances as C-STORE sub-operations on the
association that carried the C-GET, so the site needs no route back to the
cache (no Move Destination to configure, no port open towards us). It is a
module of its own because the client is also a storage SCP here: it chooses
presentation contexts, negotiates the SCP role for them (PS3.7 D.3.3.4) and
stores what arrives; the outcome vocabulary and the identifier are those of
the C-MOVE module.

Presentation contexts: an association carries at most 128, one of which is
the C-GET's own. The storage SOP classes proposed are the study's own when
the site answers a STUDY-level C-FIND for SOP Classes in Study (0008,0062),
otherwise :data:`DEFAULT_SOP_CLASSES` (the common CT, MR, PET, NM, US, CR, DX,
MG, XA, secondary capture, SR, key object, presentation state, PDF, RT and
segmentation classes). Each class gets one context with the uncompressed
transfer syntaxes first; then, while room remains, one context per common
compressed syntax (:data:`COMPRESSED_SYNTAXES`), so that a site can send a
compressed instance as it holds it instead of decompressing it. Each instance
is written as received, through :meth:`ihe.dicom.archive.Archive.store` like
the Storage SCP does, one at a time.

Limitations
-----------
A storage SOP class absent from both the site's answer and the default list
cannot be received: the site reports it as a failed sub-operation (partial
outcome). The site's bandwidth cap (``bandwidth_mbps``) is not applied to
C-GET. No C-CANCEL is sent on shutdown.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence

from pydicom import uid as uids
from pydicom.dataset import Dataset
from pynetdicom import build_role, evt, pdu_primitives
from pynetdicom.association import Association
from pynetdicom.events import Event

from ihe.dicom.archive import Archive
from ihe.dicom.sop_classes import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)
from ihe.dicom.storage_scp import StoreStatus, StudyDelivery
from ihe.qr.association import associate, refused_text, released
from ihe.qr.rad16_retrieve_images import (
    MIN_DIMSE_TIMEOUT,
    PENDING,
    RetrieveOutcome,
    combine,
    log_outcome,
    read_responses,
    retrieve_identifiers,
    sent_in_turn,
)
from server.errors import StoreRefused

logger = logging.getLogger(__name__)

LOG_GET_DONE = "C-GET finished"
LOG_SOP_CLASSES_UNKNOWN = "SOP classes in study unknown, default set proposed"
LOG_INSTANCE_REFUSED = "retrieved instance refused"
GET_SOP_CLASS = str(StudyRootQueryRetrieveInformationModelGet)
FIND_SOP_CLASS = str(StudyRootQueryRetrieveInformationModelFind)
# PS3.8 9.3.2.2: presentation context IDs are odd numbers from 1 to 255.
MAX_CONTEXTS = 128
UNCOMPRESSED_SYNTAXES = (uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian)
# Most used by PACS first: the list is cut short when the classes are many.
COMPRESSED_SYNTAXES = (
    uids.JPEGLosslessSV1,
    uids.JPEGBaseline8Bit,
    uids.JPEG2000Lossless,
    uids.RLELossless,
    uids.JPEGLSLossless,
    uids.JPEG2000,
    uids.JPEGExtended12Bit,
    uids.JPEGLSNearLossless,
)
IMAGE_SOP_CLASSES = (
    uids.CTImageStorage,
    uids.EnhancedCTImageStorage,
    uids.MRImageStorage,
    uids.EnhancedMRImageStorage,
    uids.PositronEmissionTomographyImageStorage,
    uids.EnhancedPETImageStorage,
    uids.NuclearMedicineImageStorage,
    uids.UltrasoundImageStorage,
    uids.ComputedRadiographyImageStorage,
    uids.DigitalXRayImageStorageForPresentation,
    uids.DigitalMammographyXRayImageStorageForPresentation,
    uids.XRayAngiographicImageStorage,
    uids.SecondaryCaptureImageStorage,
)
# Documents and objects without pixel data: never compressed.
NON_IMAGE_SOP_CLASSES = (
    uids.BasicTextSRStorage,
    uids.EnhancedSRStorage,
    uids.ComprehensiveSRStorage,
    uids.KeyObjectSelectionDocumentStorage,
    uids.GrayscaleSoftcopyPresentationStateStorage,
    uids.EncapsulatedPDFStorage,
    uids.RTStructureSetStorage,
    uids.RTDoseStorage,
    uids.RTPlanStorage,
    uids.SegmentationStorage,
)
DEFAULT_SOP_CLASSES = IMAGE_SOP_CLASSES + NON_IMAGE_SOP_CLASSES

Context = tuple[str, tuple[str, ...]]


def get_study(
    *,
    calling_ae: str,
    ae_title: str,
    host: str,
    port: int,
    study_uid: str,
    archive: Archive,
    series_uids: Sequence[str] | None = None,
    instance_uids: Mapping[str, Sequence[str]] | None = None,
    sop_classes: Sequence[str] | None = None,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> RetrieveOutcome:
    """Retrieve `study_uid` (or what is missing of it) by C-GET into `archive`.

    Parameters
    ----------
    series_uids : sequence of str, optional
        Series wanted whole: SERIES-level C-GETs.
    instance_uids : mapping, optional
        Series Instance UID to the SOP Instance UIDs wanted of it: IMAGE-level
        C-GETs. With neither, the whole study (STUDY level).
    sop_classes : sequence of str, optional
        The storage SOP classes to negotiate; by default those the site
        reports for the study, else :data:`DEFAULT_SOP_CLASSES`.
    on_progress : callable, optional
        Called with (completed, remaining) on each pending response.

    Returns
    -------
    RetrieveOutcome
        With ``studies`` listing what was stored, per study. Never raises for
        peer behaviour; every failure is an outcome.
    """
    if sop_classes is None:
        sop_classes = sop_classes_in_study(
            calling_ae=calling_ae,
            ae_title=ae_title,
            host=host,
            port=port,
            study_uid=study_uid,
            timeout=timeout,
            tls=tls,
        )
    if not sop_classes:
        logger.info(LOG_SOP_CLASSES_UNKNOWN)
        sop_classes = DEFAULT_SOP_CLASSES
    contexts = storage_contexts(sop_classes)
    receiver = _Receiver(archive, ae_title)
    assoc = associate(
        calling_ae=calling_ae,
        ae_title=ae_title,
        host=host,
        port=port,
        contexts=[(GET_SOP_CLASS, None), *contexts],
        timeout=timeout,
        dimse_timeout=max(timeout, MIN_DIMSE_TIMEOUT),
        tls=tls,
        ext_neg=_roles(contexts),
        evt_handlers=[(evt.EVT_C_STORE, receiver.handle_store)],
    )
    if not assoc.is_established:
        return log_outcome(
            logger,
            LOG_GET_DONE,
            RetrieveOutcome(
                "association_aborted", error_comment=refused_text(ae_title)
            ),
        )
    identifiers = retrieve_identifiers(study_uid, series_uids, instance_uids)
    with released(assoc):
        result = combine(
            list(
                sent_in_turn(identifiers, lambda ds: _send_get(assoc, ds, on_progress))
            )
        )
    result.studies = receiver.studies()
    result.transport = "c-get"
    if result.completed is None:
        result.completed = sum(s.new + s.replaced for s in result.studies)
    return log_outcome(logger, LOG_GET_DONE, result)


def storage_contexts(sop_classes: Sequence[str]) -> list[Context]:
    """Presentation contexts for `sop_classes`, within the association's limit.

    One context per class with the uncompressed transfer syntaxes, then one
    per class and compressed syntax, syntax by syntax, until
    :data:`MAX_CONTEXTS` less the C-GET's own context are used. Classes
    without pixel data (:data:`NON_IMAGE_SOP_CLASSES`) get no compressed
    context.
    """
    classes = list(dict.fromkeys(str(uid) for uid in sop_classes))
    room = MAX_CONTEXTS - 1
    contexts: list[Context] = [
        (uid, tuple(str(ts) for ts in UNCOMPRESSED_SYNTAXES)) for uid in classes
    ][:room]
    images = [uid for uid in classes if uid not in NON_IMAGE_SOP_CLASSES]
    for syntax in COMPRESSED_SYNTAXES:
        for uid in images:
            if len(contexts) >= room:
                return contexts
            contexts.append((uid, (str(syntax),)))
    return contexts


def sop_classes_in_study(
    *,
    calling_ae: str,
    ae_title: str,
    host: str,
    port: int,
    study_uid: str,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> list[str]:
    """SOP Classes in Study (0008,0062) as the site reports it, or ``[]``.

    A STUDY-level Study Root C-FIND (PS3.4 C.6.2.1.2); a site that does not
    answer the key, or cannot be queried, gives an empty list.
    """
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    identifier.SOPClassesInStudy = ""
    assoc = associate(
        calling_ae=calling_ae,
        ae_title=ae_title,
        host=host,
        port=port,
        contexts=[(FIND_SOP_CLASS, None)],
        timeout=timeout,
        tls=tls,
    )
    if not assoc.is_established:
        return []
    found: list[str] = []
    with released(assoc):
        for status, rsp in assoc.send_c_find(identifier, FIND_SOP_CLASS):
            if not status or int(status.get("Status", -1)) not in PENDING:
                break
            value = rsp.get("SOPClassesInStudy") if rsp is not None else None
            if value:
                found.extend(
                    str(v) for v in ([value] if isinstance(value, str) else value)
                )
    return list(dict.fromkeys(found))


class _Receiver:
    """The C-STORE handler of the C-GET association, over an archive."""

    def __init__(self, archive: Archive, source_ae: str) -> None:
        self.archive = archive
        self.source_ae = source_ae
        self._lock = threading.Lock()
        self._studies: dict[str, StudyDelivery] = {}

    def handle_store(self, event: Event) -> int | Dataset:
        """Store one instance; answer a DIMSE status, never raise."""
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            study_uid = str(ds.StudyInstanceUID)
            _ = ds.SeriesInstanceUID, ds.SOPInstanceUID
        except (AttributeError, ValueError, KeyError) as exc:
            logger.warning(LOG_INSTANCE_REFUSED, extra={"error": type(exc).__name__})
            return StoreStatus.CANNOT_UNDERSTAND
        try:
            stored = self.archive.store(
                event.encoded_dataset(include_meta=True),
                ds,
                str(event.context.transfer_syntax),
                self.source_ae,
            )
        except StoreRefused as exc:
            logger.warning(
                LOG_INSTANCE_REFUSED,
                extra={"reason": str(exc), "calling_ae": self.source_ae},
            )
            rsp = Dataset()
            rsp.Status = StoreStatus.CANNOT_UNDERSTAND
            rsp.ErrorComment = str(exc)[:64]
            return rsp
        except OSError as exc:
            logger.error("instance not stored: disk error", extra={"error": str(exc)})
            return StoreStatus.OUT_OF_RESOURCES
        for warning in stored.warnings:
            logger.warning("data quality: %s", warning, extra={"study_uid": study_uid})
        self._count(ds, study_uid, stored.replaced)
        return StoreStatus.SUCCESS

    def studies(self) -> list[StudyDelivery]:
        """What was stored so far, per study."""
        with self._lock:
            return list(self._studies.values())

    def _count(self, ds: Dataset, study_uid: str, replaced: bool) -> None:
        with self._lock:
            delivery = self._studies.get(study_uid)
            if delivery is None:
                delivery = self._studies[study_uid] = StudyDelivery(
                    study_uid, _text(ds.get("PatientID")), _text(ds.get("PatientName"))
                )
            delivery.sop_classes[str(ds.SOPClassUID)] += 1
            if replaced:
                delivery.replaced += 1
            else:
                delivery.new += 1


def _send_get(
    assoc: Association,
    identifier: Dataset,
    on_progress: Callable[[int, int | None], None] | None,
) -> RetrieveOutcome:
    return read_responses(
        assoc,
        lambda: assoc.send_c_get(identifier, GET_SOP_CLASS),
        "the site",
        on_progress,
    )


def _roles(contexts: list[Context]) -> list[pdu_primitives._UI]:
    """SCP/SCU Role Selection: we take the SCP role for every storage class.

    The type is the union of user information items pynetdicom's ``ext_neg``
    takes.
    """
    classes = dict.fromkeys(uid for uid, _ in contexts)
    return [build_role(uid, scp_role=True) for uid in classes]


def _text(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None
