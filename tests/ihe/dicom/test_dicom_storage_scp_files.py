"""Storage SCP receiving into files, and listeners sharing one port.

The same guarantees as the in-memory path (byte-identical dataset, index,
summary, refusals), with pynetdicom writing each dataset to a file; and two
listeners bound to one port with ``SO_REUSEPORT`` over one archive losing
nothing when associations arrive at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import StoragePresentationContexts

from ihe.dicom.ae import (
    add_storage_scp_contexts,
    make_ae,
    port_is_free,
    start_shared_port_server,
)
from ihe.dicom.archive import Archive
from ihe.dicom.storage_scp import StorageSCP, receive_into_files
from server.demo.studies import (
    DemoPatient,
    GeneratedStudy,
    SeriesSpec,
    StudySpec,
    generate_study,
)
from tests.ihe.dicom.dicom_support import (
    CT_IMAGE_STORAGE,
    CacheServer,
    cache_server,
    dataset_part,
    open_archive,
)
from tests.peers import LOCALHOST, free_port, require, run_dcmtk

CALLING_AE = "MODALITY"
PATIENT = DemoPatient(
    patient_id="SUD-000042",
    issuer="CHU_SUD",
    issuer_oid="2.999.2.1",
    family="FONTAINE",
    given="Inès",
    birth_date="19610704",
    sex="F",
)
SPEC = StudySpec(
    patient=PATIENT,
    study_date="20240212",
    description="TDM TAP",
    series=(
        SeriesSpec(modality="CT", description="Thorax", images=3, rows=64, columns=64),
    ),
)

pytestmark = pytest.mark.peer


@pytest.fixture
def into_files() -> Iterator[None]:
    receive_into_files()
    try:
        yield
    finally:
        receive_into_files(False)


@pytest.fixture
def study(tmp_path: Path) -> GeneratedStudy:
    return generate_study(SPEC, tmp_path / "generated", seed=23)


@pytest.fixture
def cache(tmp_path: Path, into_files: None) -> Iterator[CacheServer]:
    require("storescu", "dcmtk")
    archive, db = open_archive(tmp_path)
    try:
        with cache_server(archive) as server:
            yield server
    finally:
        db.dispose()


def storescu(port: int, files: list[Path], *, ok: bool = True) -> None:
    proc = run_dcmtk(
        "storescu",
        "-aet",
        CALLING_AE,
        "-aec",
        "SPIDERS",
        LOCALHOST,
        str(port),
        *(str(path) for path in files),
        timeout=30,
    )
    assert (proc.returncode == 0) is ok, proc.stderr


def test_storage_scp_into_files_dataset_bytes_identical_and_indexed(
    cache: CacheServer, study: GeneratedStudy
) -> None:
    storescu(cache.port, list(study.files))

    for sop_uid, sent in zip(study.sop_instance_uids, study.files, strict=True):
        [row] = cache.archive.instances(sop_instance_uid=sop_uid)
        stored = cache.archive.root / row.path
        assert dataset_part(stored.read_bytes()) == dataset_part(sent.read_bytes())
        assert row.size == stored.stat().st_size
        assert (row.patient_id, row.patient_name) == ("SUD-000042", "FONTAINE^Inès")
        assert row.sop_class_uid == CT_IMAGE_STORAGE
        assert dcmread(stored).file_meta.TransferSyntaxUID == row.transfer_syntax
    summary = cache.next_summary()
    [delivery] = summary.studies
    assert (delivery.new, delivery.replaced) == (3, 0)
    assert dict(delivery.sop_classes) == {CT_IMAGE_STORAGE: 3}


def test_storage_scp_into_files_sent_twice_second_replaced(
    cache: CacheServer, study: GeneratedStudy
) -> None:
    storescu(cache.port, list(study.files))
    cache.next_summary()
    storescu(cache.port, list(study.files))

    [delivery] = cache.next_summary().studies
    assert (delivery.new, delivery.replaced) == (0, 3)
    assert cache.archive.count_instances(study.study_uid) == 3


def test_storage_scp_into_files_same_sop_uid_other_study_refused_c000(
    cache: CacheServer, study: GeneratedStudy, tmp_path: Path
) -> None:
    storescu(cache.port, list(study.files[:1]))
    cache.next_summary()
    ds = dcmread(study.files[0])
    ds.StudyInstanceUID = "2.999.2.99"
    other = tmp_path / "other.dcm"
    ds.save_as(other, enforce_file_format=True)

    storescu(cache.port, [other], ok=False)

    [row] = cache.archive.instances(sop_instance_uid=ds.SOPInstanceUID)
    assert row.study_uid == study.study_uid
    assert not list(cache.archive.incoming.iterdir())


def test_shared_port_two_listeners_concurrent_associations_nothing_lost(
    tmp_path: Path, into_files: None
) -> None:
    require("storescu", "dcmtk")
    studies = [
        generate_study(SPEC, tmp_path / f"generated-{n}", seed=40 + n) for n in range(6)
    ]
    archive, db = open_archive(tmp_path)
    port = free_port()
    servers = [_shared_listener(archive, port) for _ in range(2)]
    try:
        assert not port_is_free((LOCALHOST, port))
        senders = [
            threading.Thread(target=storescu, args=(port, list(s.files)))
            for s in studies
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()

        for s in studies:
            assert archive.count_instances(s.study_uid) == 3
    finally:
        for server in servers:
            server.shutdown()
        db.dispose()


def _shared_listener(archive: Archive, port: int) -> object:
    ae = make_ae("SPIDERS")
    add_storage_scp_contexts(ae)
    for cx in StoragePresentationContexts[:1]:
        assert cx.abstract_syntax is not None
        ae.add_requested_context(cx.abstract_syntax)
    storage = StorageSCP(archive)

    return start_shared_port_server(
        ae, (LOCALHOST, port), ssl_context=None, evt_handlers=storage.handlers
    )
