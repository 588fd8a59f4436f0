"""Helpers shared by the DICOM and Q/R tests: datasets, archives, listeners.

Datasets are small and invented; UIDs live under the 2.999 example arc.
Listeners are pynetdicom servers on an ephemeral loopback port, stopped by the
fixtures that start them.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import StoragePresentationContexts
from pynetdicom.transport import ThreadedAssociationServer

from ihe.dicom.ae import add_storage_scp_contexts, make_ae
from ihe.dicom.archive import Archive
from ihe.dicom.qr_scp import QueryRetrieveSCP
from ihe.dicom.sop_classes import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from ihe.dicom.storage_scp import AssociationSummary, StorageSCP
from server.db import Database
from tests.peers import LOCALHOST, free_port

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SOP_INSTANCE_UID_TAG = 0x00080018
SUMMARY_TIMEOUT = 5.0
QR_MODELS = (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)


def open_archive(tmp_path: Path) -> tuple[Archive, Database]:
    """An empty archive under `tmp_path`, indexed in a SQLite file beside it."""
    db = Database(f"sqlite:///{tmp_path / 'x.sqlite'}")
    db.create_schema()

    return Archive(tmp_path / "archive", db.sessions), db


def make_dataset(
    sop_uid: str = "2.999.1.3.1",
    *,
    study_uid: str = "2.999.1.1",
    series_uid: str = "2.999.1.2",
    sop_class: str = SECONDARY_CAPTURE,
) -> Dataset:
    """A small secondary-capture-like instance with 4x4 8-bit pixels.

    The UIDs are set without pydicom's validation so that crafted values
    (``../x``, over-long UIDs) can be given.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    _set_uid(ds, 0x00080018, sop_uid)
    _set_uid(ds, 0x0020000D, study_uid)
    _set_uid(ds, 0x0020000E, series_uid)
    _set_uid(ds.file_meta, 0x00020002, sop_class)
    _set_uid(ds.file_meta, 0x00020003, sop_uid)
    ds.PatientID = "4000145"
    ds.PatientName = "FONTAINE^Inès"
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(16))

    return ds


def encode(ds: Dataset) -> bytes:
    """`ds` as a Part 10 file: preamble, File Meta, dataset.

    Validation is off so that crafted UIDs can be written as given.
    """
    buffer = BytesIO()
    with config.disable_value_validation():
        ds.save_as(buffer, enforce_file_format=True)

    return buffer.getvalue()


def dataset_part(encoded: bytes) -> bytes:
    """The bytes after the File Meta Information of a Part 10 file.

    The File Meta group starts with its group length, (0002,0000) UL, which
    both pydicom and dcmtk write.
    """
    assert encoded[128:132] == b"DICM"
    assert encoded[132:136] == b"\x02\x00\x00\x00"
    meta_length = int.from_bytes(encoded[140:144], "little")

    return encoded[144 + meta_length :]


@dataclass
class CacheServer:
    """The cache's DICOM listener (Storage SCP and Q/R SCP) on loopback."""

    ae_title: str
    port: int
    archive: Archive
    server: ThreadedAssociationServer
    summaries: queue.Queue[AssociationSummary] = field(default_factory=queue.Queue)
    destinations: dict[str, tuple[str, int]] = field(default_factory=dict)

    def next_summary(self) -> AssociationSummary:
        """The next association summary, waiting up to a few seconds."""
        return self.summaries.get(timeout=SUMMARY_TIMEOUT)


@contextmanager
def cache_server(archive: Archive, ae_title: str = "SPIDERS") -> Iterator[CacheServer]:
    """Run the Storage and Q/R SCPs over `archive` like ``spiders serve`` does."""
    ae = make_ae(ae_title)
    add_storage_scp_contexts(ae)
    for model in QR_MODELS:
        ae.add_supported_context(model)
    for cx in StoragePresentationContexts:
        assert cx.abstract_syntax is not None
        ae.add_requested_context(cx.abstract_syntax)
    summaries: queue.Queue[AssociationSummary] = queue.Queue()
    destinations: dict[str, tuple[str, int]] = {}
    storage = StorageSCP(archive, on_association_done=summaries.put)
    qr = QueryRetrieveSCP(archive, ae_title, destinations.get)
    port = free_port()
    server = ae.start_server(
        (LOCALHOST, port),
        block=False,
        evt_handlers=[*storage.handlers, *qr.handlers],
    )
    assert server is not None
    try:
        yield CacheServer(ae_title, port, archive, server, summaries, destinations)
    finally:
        server.shutdown()


def _set_uid(ds: Dataset, tag: int, value: str) -> None:
    ds.add(DataElement(tag, "UI", value, validation_mode=config.IGNORE))


def ask_site(
    db: Database, site: str, study_uid: str, state: str, patient_id: str
) -> None:
    """A registration whose candidate `study_uid`, at `site` for `patient_id`,
    has a prefetch in `state`: what store admission reads."""
    from datetime import timedelta

    from server.models import (
        Candidate,
        Patient,
        Prefetch,
        Registration,
        utcnow,
    )

    with db.session() as session:
        registration = Registration(status="active", patient=Patient())
        candidate = Candidate(
            registration=registration,
            site_name=site,
            study_uid=study_uid,
            patient_id_at_site=patient_id,
            selected=True,
        )
        session.add(candidate)
        session.flush()
        session.add(
            Prefetch(
                candidate_id=candidate.id,
                registration_id=registration.id,
                site_name=site,
                study_uid=study_uid,
                state=state,
                due_at=utcnow() - timedelta(minutes=1),
            )
        )
