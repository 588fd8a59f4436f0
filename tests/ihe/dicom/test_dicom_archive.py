"""The instance archive: safe paths, files stored as received, the index."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ihe.dicom.archive import Archive
from server.db import Database
from server.errors import StoreRefused
from tests.ihe.dicom.dicom_support import (
    CT_IMAGE_STORAGE,
    SECONDARY_CAPTURE,
    encode,
    make_dataset,
    open_archive,
)

STUDY = "2.999.1.1"
SERIES = "2.999.1.2"
LONG_UID = "2.999.77.20250321143000.123456789012345678901234567890123456789.1"
CRAFTED_UIDS = [
    "../../etc/passwd",
    "..",
    ".",
    "1/2",
    "/etc/passwd",
    "1\\2",
    "1\x00",
    "1.2\n",
    "",
    "1" * 200,
    "1." * 100,
]


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    store, db = open_archive(tmp_path)
    yield store
    db.dispose()


@pytest.fixture
def db_archive(tmp_path: Path) -> Iterator[tuple[Archive, Database]]:
    store, db = open_archive(tmp_path)
    yield store, db
    db.dispose()


def _inside(archive: Archive, path: Path) -> bool:
    return path.resolve().is_relative_to(archive.root.resolve())


@pytest.mark.parametrize("crafted", CRAFTED_UIDS)
def test_path_for_crafted_uid_stays_inside_root(archive: Archive, crafted: str) -> None:
    for path in (
        archive.path_for(crafted, SERIES, "2.999.1.3.1"),
        archive.path_for(STUDY, crafted, "2.999.1.3.1"),
        archive.path_for(STUDY, SERIES, crafted),
        archive.path_for(crafted, crafted, crafted),
    ):
        assert _inside(archive, path)
        assert path.parent.parent.parent == archive.root
        assert path.suffix == ".dcm"


@pytest.mark.parametrize("crafted", CRAFTED_UIDS)
def test_path_for_crafted_uid_replaced_by_sha256(
    archive: Archive, crafted: str
) -> None:
    path = archive.path_for(STUDY, SERIES, crafted)

    assert len(path.stem) == 64
    assert set(path.stem) <= set("0123456789abcdef")


def test_path_for_distinct_crafted_uids_distinct_files(archive: Archive) -> None:
    paths = {archive.path_for(STUDY, SERIES, uid) for uid in CRAFTED_UIDS}

    assert len(paths) == len(CRAFTED_UIDS)


def test_path_for_safe_uids_study_series_sop_layout(archive: Archive) -> None:
    path = archive.path_for(STUDY, SERIES, "2.999.1.3.1")

    assert path == archive.root / STUDY / SERIES / "2.999.1.3.1.dcm"


def test_path_for_65_character_uid_kept_as_name(archive: Archive) -> None:
    path = archive.path_for(STUDY, SERIES, LONG_UID)

    assert path == archive.root / STUDY / SERIES / f"{LONG_UID}.dcm"


@pytest.mark.parametrize("crafted", ["../../etc/passwd", "1/2", "1\x00", "1" * 200])
def test_store_crafted_uids_refused_nothing_written(
    archive: Archive, crafted: str
) -> None:
    ds = make_dataset(crafted, study_uid=crafted, series_uid="../" + crafted)

    with pytest.raises(StoreRefused, match="not a UID"):
        archive.store(encode(ds), ds, "1.2.840.10008.1.2.1", "MODALITY")

    files = [p for p in archive.root.rglob("*") if p.is_file()]
    assert files == []
    assert archive.instances(sop_instance_uid=crafted) == []


def test_store_same_sop_uid_for_another_study_refused(archive: Archive) -> None:
    first = make_dataset()
    archive.store(encode(first), first, "1.2.840.10008.1.2.1", "MODALITY")
    intruder = make_dataset(study_uid="2.999.9.9")

    with pytest.raises(StoreRefused, match="another study or patient"):
        archive.store(encode(intruder), intruder, "1.2.840.10008.1.2.1", "INTRUDER")

    [row] = archive.instances(sop_instance_uid="2.999.1.3.1")
    assert row.study_uid == STUDY
    assert row.source_ae == "MODALITY"
    assert not (archive.root / "2.999.9.9").exists()


def test_store_safe_uids_file_at_study_series_sop(archive: Archive) -> None:
    ds = make_dataset()

    stored = archive.store(encode(ds), ds, "1.2.840.10008.1.2.1", "MODALITY")

    assert stored.path == archive.root / STUDY / SERIES / "2.999.1.3.1.dcm"
    assert stored.replaced is False
    assert stored.warnings == ()
    [row] = archive.instances(sop_instance_uid="2.999.1.3.1")
    assert row.path == f"{STUDY}/{SERIES}/2.999.1.3.1.dcm"


def test_store_bytes_on_disk_equal_bytes_given(archive: Archive) -> None:
    ds = make_dataset()
    encoded = encode(ds)

    stored = archive.store(encoded, ds, "1.2.840.10008.1.2.1", "MODALITY")

    assert stored.path.read_bytes() == encoded
    [row] = archive.instances(sop_instance_uid="2.999.1.3.1")
    assert row.size == len(encoded)


def test_store_bytes_not_reencoded_index_keeps_transfer_syntax(
    archive: Archive,
) -> None:
    # Bytes that differ from what pydicom would write for `ds`: kept as given.
    ds = make_dataset()
    encoded = encode(ds) + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"

    stored = archive.store(encoded, ds, "1.2.840.10008.1.2.5", "MODALITY")

    assert stored.path.read_bytes() == encoded
    [row] = archive.instances(sop_instance_uid="2.999.1.3.1")
    assert row.transfer_syntax == "1.2.840.10008.1.2.5"
    assert row.source_ae == "MODALITY"


def test_store_same_instance_twice_replaced_one_row(archive: Archive) -> None:
    first = make_dataset()
    second = make_dataset()
    second.PixelData = bytes(reversed(range(16)))

    one = archive.store(encode(first), first, "1.2.840.10008.1.2.1", "A")
    two = archive.store(encode(second), second, "1.2.840.10008.1.2.1", "B")

    assert (one.replaced, two.replaced) == (False, True)
    [row] = archive.instances(sop_instance_uid="2.999.1.3.1")
    assert row.source_ae == "B"
    assert two.path.read_bytes() == encode(second)
    assert archive.count_instances(STUDY) == 1
    assert not any(archive.incoming.iterdir())


def test_store_65_character_uid_one_warning(archive: Archive) -> None:
    ds = make_dataset(LONG_UID)

    stored = archive.store(encode(ds), ds, "1.2.840.10008.1.2.1", "MODALITY")

    assert stored.warnings == (
        f"SOPInstanceUID {LONG_UID} is 65 characters long (DICOM allows 64)",
    )
    assert archive.instances(sop_instance_uid=LONG_UID)[0].path.endswith(
        f"{LONG_UID}.dcm"
    )


def test_store_index_columns_from_dataset(archive: Archive) -> None:
    ds = make_dataset()
    ds.StudyDate = "20240105"
    ds.AccessionNumber = "ACC1 "

    archive.store(encode(ds), ds, "1.2.840.10008.1.2.1", "MODALITY")

    [row] = archive.instances(study_uid=STUDY)
    assert (row.patient_id, row.patient_name) == ("4000145", "FONTAINE^Inès")
    assert (row.study_date, row.accession_number) == ("20240105", "ACC1")
    assert (row.modality, row.series_number, row.instance_number) == ("OT", 1, 1)
    assert row.sop_class_uid == SECONDARY_CAPTURE


def test_count_instances_other_study_zero(archive: Archive) -> None:
    ds = make_dataset()
    archive.store(encode(ds), ds, "1.2.840.10008.1.2.1", None)

    assert archive.count_instances(STUDY) == 1
    assert archive.count_instances("2.999.1.99") == 0
    assert archive.count_by_sop_class("2.999.1.99") == {}


def test_count_by_sop_class_mixed_study_counts_each(archive: Archive) -> None:
    for number, sop_class in enumerate(
        [SECONDARY_CAPTURE, CT_IMAGE_STORAGE, CT_IMAGE_STORAGE, CT_IMAGE_STORAGE],
        start=1,
    ):
        ds = make_dataset(f"2.999.1.3.{number}", sop_class=sop_class)
        archive.store(encode(ds), ds, "1.2.840.10008.1.2.1", None)
    other = make_dataset("2.999.2.3.1", study_uid="2.999.2.1")
    archive.store(encode(other), other, "1.2.840.10008.1.2.1", None)

    assert archive.count_instances(STUDY) == 4
    assert archive.count_by_sop_class(STUDY) == {
        SECONDARY_CAPTURE: 1,
        CT_IMAGE_STORAGE: 3,
    }


def test_instances_list_criterion_any_of(archive: Archive) -> None:
    for number in (1, 2, 3):
        ds = make_dataset(f"2.999.1.3.{number}")
        archive.store(encode(ds), ds, "1.2.840.10008.1.2.1", None)

    rows = archive.instances(sop_instance_uid=["2.999.1.3.1", "2.999.1.3.3"])

    assert [row.sop_instance_uid for row in rows] == ["2.999.1.3.1", "2.999.1.3.3"]
    assert list(archive.absolute(rows)) == [
        archive.root / STUDY / SERIES / "2.999.1.3.1.dcm",
        archive.root / STUDY / SERIES / "2.999.1.3.3.dcm",
    ]
