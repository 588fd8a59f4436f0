"""Tests for the synthetic DICOM study generator."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from server.demo.studies import (
    DemoPatient,
    GeneratedStudy,
    SeriesSpec,
    StudySpec,
    generate_study,
    study_uid_for,
)

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"

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
    description="TDM TAP injecté",
    series=(
        SeriesSpec(modality="CT", description="Thorax", images=3),
        SeriesSpec(
            modality="MR", description="T1 axial", images=2, rows=256, columns=256
        ),
        SeriesSpec(modality="XA", description="Capture", images=1, rows=64),
    ),
    accession_number="ACC2024001",
)


def _all_uids(study: GeneratedStudy) -> list[str]:
    return [study.study_uid, *study.series_uids, *study.sop_instance_uids]


@pytest.fixture
def study(tmp_path: Path) -> GeneratedStudy:
    return generate_study(SPEC, tmp_path, seed=7)


def test_study_uid_for_same_seed_same_uid() -> None:
    assert study_uid_for(42) == study_uid_for(42)
    assert study_uid_for(42) != study_uid_for(43)


def test_generate_study_same_seed_same_uids(tmp_path: Path) -> None:
    first = generate_study(SPEC, tmp_path / "a", seed=7)
    second = generate_study(SPEC, tmp_path / "b", seed=7)

    assert _all_uids(first) == _all_uids(second)
    assert first.study_uid == study_uid_for(7)


def test_generate_study_same_seed_same_pixels(tmp_path: Path) -> None:
    first = generate_study(SPEC, tmp_path / "a", seed=7)
    second = generate_study(SPEC, tmp_path / "b", seed=7)

    for left, right in zip(first.files, second.files, strict=True):
        assert left.read_bytes() == right.read_bytes()


def test_generate_study_different_seeds_different_uids(tmp_path: Path) -> None:
    first = generate_study(SPEC, tmp_path, seed=7)
    second = generate_study(SPEC, tmp_path, seed=8)

    assert set(_all_uids(first)).isdisjoint(_all_uids(second))


def test_generate_study_uids_valid_and_unique(study: GeneratedStudy) -> None:
    uids = _all_uids(study)
    uids += [pydicom.dcmread(study.files[0]).FrameOfReferenceUID]

    assert len(set(uids)) == len(uids)
    for uid in uids:
        assert UID_PATTERN.match(uid), uid
        assert len(uid) <= 64
        assert uid.startswith("2.25.")


def test_generate_study_files_one_per_image(study: GeneratedStudy) -> None:
    expected = sum(series.images for series in SPEC.series)

    assert len(study.files) == expected
    assert len(study.sop_instance_uids) == expected
    assert all(path.is_file() for path in study.files)
    assert study.modalities == ("CT", "MR", "XA")
    assert study.patient_id == "NORD-000123"


def test_generate_study_files_laid_out_by_uid(
    study: GeneratedStudy, tmp_path: Path
) -> None:
    first = study.files[0]

    assert first == (
        tmp_path
        / study.study_uid
        / study.series_uids[0]
        / f"{study.sop_instance_uids[0]}.dcm"
    )
    assert first.read_bytes()[128:132] == b"DICM"


def test_generate_study_file_meta_explicit_vr_little_endian(
    study: GeneratedStudy,
) -> None:
    ds = pydicom.dcmread(study.files[0])

    assert ds.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
    assert ds.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
    assert ds.file_meta.MediaStorageSOPInstanceUID == study.sop_instance_uids[0]


def test_generate_study_patient_attributes_read_back_exactly(
    study: GeneratedStudy,
) -> None:
    ds = pydicom.dcmread(study.files[0])

    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.PatientName == "LÉVÊQUE^Noël"
    assert str(ds.PatientName) == "LÉVÊQUE^Noël"
    assert ds.PatientID == "NORD-000123"
    assert ds.IssuerOfPatientID == "CHU_NORD"
    [qualifiers] = ds.IssuerOfPatientIDQualifiersSequence
    assert qualifiers.UniversalEntityID == "2.999.1.1"
    assert qualifiers.UniversalEntityIDType == "ISO"
    assert ds.PatientBirthDate == "19580314"
    assert ds.PatientSex == "M"


def test_generate_study_study_attributes_read_back_exactly(
    study: GeneratedStudy,
) -> None:
    ds = pydicom.dcmread(study.files[-1])

    assert ds.StudyInstanceUID == study.study_uid
    assert ds.StudyDate == "20240105"
    assert ds.StudyTime == "101500"
    assert ds.StudyDescription == "TDM TAP injecté"
    assert ds.AccessionNumber == "ACC2024001"
    assert ds.StudyID
    assert ds.Manufacturer == "SPIDERS demo"
    assert ds.InstitutionName


def test_generate_study_ct_pixel_module_signed_with_rescale(
    study: GeneratedStudy,
) -> None:
    ds = pydicom.dcmread(study.files[1])

    assert ds.SOPClassUID == CT_IMAGE_STORAGE
    assert ds.Modality == "CT"
    assert (ds.Rows, ds.Columns) == (512, 512)
    assert ds.SamplesPerPixel == 1
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 16, 15)
    assert ds.PixelRepresentation == 1
    assert (ds.RescaleIntercept, ds.RescaleSlope) == (-1024, 1)
    assert ds.pixel_array.shape == (512, 512)
    assert ds.pixel_array.dtype == np.int16
    assert ds.InstanceNumber == 2
    assert ds.SeriesNumber == 1


def test_generate_study_mr_pixel_module_twelve_bits(study: GeneratedStudy) -> None:
    ds = pydicom.dcmread(study.files[3])

    assert ds.SOPClassUID == MR_IMAGE_STORAGE
    assert (ds.Rows, ds.Columns) == (256, 256)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
    assert ds.PixelRepresentation == 0
    assert int(ds.pixel_array.max()) < 4096
    assert ds.SeriesInstanceUID == study.series_uids[1]


def test_generate_study_geometry_steps_along_slices(study: GeneratedStudy) -> None:
    first, second = (pydicom.dcmread(path) for path in study.files[:2])

    assert first.ImageOrientationPatient == [1, 0, 0, 0, 1, 0]
    assert first.PixelSpacing[0] == first.PixelSpacing[1]
    assert second.ImagePositionPatient[2] == (
        first.ImagePositionPatient[2] - first.SliceThickness
    )
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID


def test_generate_study_unknown_modality_secondary_capture(
    study: GeneratedStudy,
) -> None:
    ds = pydicom.dcmread(study.files[-1])

    assert ds.SOPClassUID == SECONDARY_CAPTURE_IMAGE_STORAGE
    assert ds.Modality == "XA"
    assert ds.ConversionType == "WSD"
    assert (ds.Rows, ds.Columns) == (64, 512)


def test_generate_study_series_without_images_raises(tmp_path: Path) -> None:
    spec = StudySpec(
        patient=PATIENT,
        study_date="20240105",
        description="Vide",
        series=(SeriesSpec(modality="CT", description="Rien", images=0),),
    )

    with pytest.raises(ValueError, match="at least one image"):
        generate_study(spec, tmp_path, seed=1)
