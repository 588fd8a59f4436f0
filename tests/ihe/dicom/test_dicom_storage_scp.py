"""Storage SCP and AE factory against a foreign client: dcmtk's ``storescu``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import RLELossless

from ihe.dicom.archive import Archive
from server.demo.studies import (
    DemoPatient,
    GeneratedStudy,
    SeriesSpec,
    StudySpec,
    generate_study,
)
from tests.ihe.dicom.dicom_support import (
    CT_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    CacheServer,
    cache_server,
    dataset_part,
    open_archive,
)
from tests.peers import LOCALHOST, require, run_dcmtk

CALLING_AE = "MODALITY"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
PATIENT = DemoPatient(
    patient_id="NORD-000123",
    issuer="CHU_NORD",
    issuer_oid="2.999.1.1",
    family="LÉVÊQUE",
    given="Noël",
    birth_date="19580314",
    sex="M",
)
SPEC = StudySpec(
    patient=PATIENT,
    study_date="20240105",
    description="TDM TAP",
    series=(
        SeriesSpec(modality="CT", description="Thorax", images=2, rows=64, columns=64),
        SeriesSpec(modality="MR", description="T1", images=1, rows=64, columns=64),
    ),
)

pytestmark = pytest.mark.peer


@pytest.fixture
def study(tmp_path: Path) -> GeneratedStudy:
    return generate_study(SPEC, tmp_path / "generated", seed=11)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[CacheServer]:
    require("storescu", "dcmtk")
    archive, db = open_archive(tmp_path)
    try:
        with cache_server(archive) as server:
            yield server
    finally:
        db.dispose()


def storescu(cache: CacheServer, files: Iterable[Path], *options: str) -> None:
    proc = run_dcmtk(
        "storescu",
        "-aet",
        CALLING_AE,
        "-aec",
        cache.ae_title,
        *options,
        LOCALHOST,
        str(cache.port),
        *(str(path) for path in files),
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr


def _stored_path(archive: Archive, sop_uid: str) -> Path:
    [row] = archive.instances(sop_instance_uid=sop_uid)

    return archive.root / row.path


def test_storage_scp_storescu_files_exit_0_stored_as_sent(
    cache: CacheServer, study: GeneratedStudy
) -> None:
    storescu(cache, study.files)

    assert cache.archive.count_instances(study.study_uid) == 3
    for sop_uid, sent in zip(study.sop_instance_uids, study.files, strict=True):
        stored = _stored_path(cache.archive, sop_uid)
        assert dataset_part(stored.read_bytes()) == dataset_part(sent.read_bytes())
        original, copy = dcmread(sent), dcmread(stored)
        assert copy.SOPInstanceUID == sop_uid
        assert copy.PixelData == original.PixelData
        assert copy.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN


def test_storage_scp_storescu_association_one_summary_exact_counts(
    cache: CacheServer, study: GeneratedStudy
) -> None:
    storescu(cache, study.files)

    summary = cache.next_summary()
    assert (summary.calling_ae, summary.aborted) == (CALLING_AE, False)
    assert summary.address == LOCALHOST
    [delivery] = summary.studies
    assert delivery.study_uid == study.study_uid
    assert (delivery.patient_id, delivery.patient_name) == (
        "NORD-000123",
        "LÉVÊQUE^Noël",
    )
    assert dict(delivery.sop_classes) == {CT_IMAGE_STORAGE: 2, MR_IMAGE_STORAGE: 1}
    assert (delivery.new, delivery.replaced) == (3, 0)
    assert cache.summaries.empty()


def test_storage_scp_storescu_sent_twice_second_replaced(
    cache: CacheServer, study: GeneratedStudy
) -> None:
    storescu(cache, study.files)
    first = cache.next_summary()
    storescu(cache, study.files)
    second = cache.next_summary()

    assert (first.studies[0].new, first.studies[0].replaced) == (3, 0)
    assert (second.studies[0].new, second.studies[0].replaced) == (0, 3)
    assert cache.archive.count_instances(study.study_uid) == 3
    assert cache.archive.count_by_sop_class(study.study_uid) == {
        CT_IMAGE_STORAGE: 2,
        MR_IMAGE_STORAGE: 1,
    }


def test_storage_scp_rle_file_stored_compressed_as_sent(
    cache: CacheServer, study: GeneratedStudy, tmp_path: Path
) -> None:
    ds = dcmread(study.files[-1])
    ds.compress(RLELossless)
    sent = tmp_path / "rle.dcm"
    ds.save_as(sent, enforce_file_format=True)

    storescu(cache, [sent], "-xr")

    [row] = cache.archive.instances(sop_instance_uid=ds.SOPInstanceUID)
    assert row.transfer_syntax == RLELossless
    stored = cache.archive.root / row.path
    copy = dcmread(stored)
    assert copy.file_meta.TransferSyntaxUID == RLELossless
    assert copy.PixelData == ds.PixelData
    assert dataset_part(stored.read_bytes()) == dataset_part(sent.read_bytes())
    summary = cache.next_summary()
    assert dict(summary.studies[0].sop_classes) == {MR_IMAGE_STORAGE: 1}
