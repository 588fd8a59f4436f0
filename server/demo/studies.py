"""Synthetic DICOM studies for the demonstration and the tests.

:func:`generate_study` writes one DICOM Part 10 file per instance (PS3.10, Explicit
VR Little Endian) under ``<out_dir>/<study_uid>/<series_uid>/<sop_uid>.dcm``. Each
instance carries the Patient, General Study, General Series, General Equipment and
Image Pixel modules (PS3.3 C.7), the patient-ID domain as Issuer of Patient ID with
its ISO qualifier (PS3.3 C.7.1.1), and UTF-8 text (``ISO_IR 192``, PS3.5 6.1.2.5)
so French accented names survive the round trip.

UIDs live under the ``2.25`` arc (PS3.5 B.2): a UUID-sized integer taken from a
SHA-256 digest of the seed and the position of the object in the study, so the
same seed always gives the same study, and two seeds give two unrelated studies.

Pixels are a cheap phantom: an elliptic body whose size follows the slice index,
a denser core, a small lesion in the middle third of the series, and noise. The
grids are computed once per series, so a hundred 512 x 512 images take a fraction
of a second.

Limitations
-----------
Only CT, MR, PET and computed radiography get their own storage SOP class; every
other modality (US, DX, MG, NM, ...) is written as Secondary Capture and keeps its
Modality value. The modality-specific modules carry only a plausible subset of
their attributes (no acquisition or reconstruction details, no PET radiopharmaceutical
sequence), so the files suit query, retrieve and viewer tests, not validators
that check every Type 1 attribute of those IODs. Geometry (image plane module) is
written for CT, MR and PET only; projection images get an imager pixel spacing.
Every image is single-frame, uncompressed and MONOCHROME2. Each series starts three
minutes after the previous one; past midnight the time wraps but the series date
stays the study date.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    SecondaryCaptureImageStorage,
)

logger = logging.getLogger(__name__)

#: Storage SOP classes by Modality (0008,0060); PS3.4 B.5.
SOP_CLASS_BY_MODALITY: dict[str, UID] = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "PT": PositronEmissionTomographyImageStorage,
    "CR": ComputedRadiographyImageStorage,
}

#: Modalities that get the image plane module (PS3.3 C.7.6.2).
CROSS_SECTIONAL = frozenset({"CT", "MR", "PT"})

MANUFACTURER = "SPIDERS demo"
REFERRING_PHYSICIAN = "MARTIN^Claire"
#: UTF-8, PS3.3 C.12.1.1.2; needed for names such as ``LÉVÊQUE^Noël``.
CHARACTER_SET = "ISO_IR 192"
#: Field of view of the cross-sectional phantom, in millimetres.
FIELD_OF_VIEW_MM = 350.0
SLICE_THICKNESS_MM = 2.5
#: CT stored values are Hounsfield units plus this offset (Rescale Intercept -1024).
CT_OFFSET = 1024
#: Phantom stored values (background, body, core, lesion) by modality; CT values
#: are Hounsfield units plus ``CT_OFFSET``, the others fit in 12 bits.
PHANTOM_LEVELS: dict[str, tuple[int, int, int, int]] = {
    "CT": (24, 1064, 1724, 1124),
    "MR": (20, 900, 400, 2200),
    "PT": (10, 300, 600, 3500),
}
PHANTOM_DEFAULT_LEVELS = (40, 1400, 2600, 3400)


@dataclass(frozen=True)
class DemoPatient:
    """A patient as one producing site knows them.

    Attributes
    ----------
    patient_id : str
        The site-local identifier, Patient ID (0010,0020).
    issuer : str
        The namespace of that identifier, Issuer of Patient ID (0010,0021),
        for example ``"CHU_NORD"``.
    issuer_oid : str
        The site's patient-ID domain OID, written as Universal Entity ID
        (0040,0032) of type ISO in the issuer qualifiers.
    family, given : str
        Name components, written as ``FAMILY^Given``.
    birth_date : str
        Patient's Birth Date (0010,0030), DICOM DA.
    sex : str
        Patient's Sex (0010,0040): ``"M"``, ``"F"`` or ``"O"``.
    """

    patient_id: str
    issuer: str
    issuer_oid: str
    family: str
    given: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class SeriesSpec:
    """What one series of a generated study holds.

    Attributes
    ----------
    modality : str
        Modality (0008,0060), such as ``"CT"``, ``"MR"``, ``"PT"`` or ``"CR"``.
    description : str
        Series Description (0008,103E).
    images : int
        Number of single-frame instances, at least one.
    rows, columns : int
        Matrix size of every image.
    """

    modality: str
    description: str
    images: int
    rows: int = 512
    columns: int = 512


@dataclass(frozen=True)
class StudySpec:
    """What a generated study holds.

    Attributes
    ----------
    patient : DemoPatient
        The patient, as the producing site identifies them.
    study_date : str
        Study Date (0008,0020), DICOM DA.
    description : str
        Study Description (0008,1030).
    series : tuple of SeriesSpec
        The series, in Series Number order.
    accession_number : str
        Accession Number (0008,0050); empty when the study had no order.
    study_time : str
        Study Time (0008,0030), DICOM TM.
    """

    patient: DemoPatient
    study_date: str
    description: str
    series: tuple[SeriesSpec, ...]
    accession_number: str = ""
    study_time: str = "101500"


@dataclass(frozen=True)
class GeneratedStudy:
    """What :func:`generate_study` wrote.

    Attributes
    ----------
    study_uid : str
        Study Instance UID.
    series_uids : tuple of str
        Series Instance UIDs, in spec order.
    sop_instance_uids : tuple of str
        Every SOP Instance UID, in the same order as ``files``.
    files : tuple of Path
        The Part 10 files, series by series, instance by instance.
    modalities : tuple of str
        The modalities in the study, sorted, without repeats.
    patient_id : str
        Patient ID (0010,0020) written in every file.
    """

    study_uid: str
    series_uids: tuple[str, ...]
    sop_instance_uids: tuple[str, ...]
    files: tuple[Path, ...]
    modalities: tuple[str, ...]
    patient_id: str


def study_uid_for(seed: int) -> str:
    """Return the Study Instance UID that :func:`generate_study` uses for ``seed``.

    Parameters
    ----------
    seed : int
        The seed given to :func:`generate_study`.

    Returns
    -------
    str
        A ``2.25`` UID, the same for the same seed.
    """
    return _uid(seed, "study")


def generate_study(spec: StudySpec, out_dir: Path, *, seed: int) -> GeneratedStudy:
    """Write a synthetic study as DICOM Part 10 files.

    Parameters
    ----------
    spec : StudySpec
        The patient, the study attributes and the series to generate.
    out_dir : Path
        Root directory; files go to ``<study_uid>/<series_uid>/<sop_uid>.dcm``
        below it, and existing files with those names are overwritten.
    seed : int
        Determines every UID and every pixel value.

    Returns
    -------
    GeneratedStudy
        The UIDs and paths written.

    Raises
    ------
    ValueError
        If the study has no series, or a series has no image or an empty matrix.
    """
    _check_spec(spec)
    study_uid = study_uid_for(seed)
    series_uids: list[str] = []
    sop_uids: list[str] = []
    files: list[Path] = []
    for index, series in enumerate(spec.series):
        series_uid = _uid(seed, "series", index)
        series_dir = out_dir / study_uid / series_uid
        series_dir.mkdir(parents=True, exist_ok=True)
        written = _write_series(spec, series, index, series_dir, seed=seed)
        series_uids.append(series_uid)
        sop_uids.extend(uid for uid, _ in written)
        files.extend(path for _, path in written)

    logger.debug(
        "demo study generated",
        extra={"series": len(series_uids), "instances": len(files)},
    )

    return GeneratedStudy(
        study_uid=study_uid,
        series_uids=tuple(series_uids),
        sop_instance_uids=tuple(sop_uids),
        files=tuple(files),
        modalities=tuple(sorted({series.modality for series in spec.series})),
        patient_id=spec.patient.patient_id,
    )


def _check_spec(spec: StudySpec) -> None:
    """Refuse a spec that would give an empty or malformed study."""
    if not spec.series:
        raise ValueError("a study needs at least one series")
    for series in spec.series:
        if series.images < 1:
            raise ValueError(f"series {series.description!r} needs at least one image")
        if series.rows < 1 or series.columns < 1:
            raise ValueError(f"series {series.description!r} has an empty matrix")


def _uid(seed: int, *parts: object) -> str:
    """Derive a ``2.25`` UID from the seed and the object's position.

    The 128-bit integer is printed in decimal, so no component has a leading zero
    and the UID is at most 44 characters long (PS3.5 9.1, B.2).
    """
    return f"2.25.{int.from_bytes(_digest(seed, *parts)[:16])}"


def _write_series(
    spec: StudySpec, series: SeriesSpec, index: int, series_dir: Path, *, seed: int
) -> list[tuple[str, Path]]:
    """Write every instance of one series; return ``(sop_uid, path)`` pairs."""
    phantom = _Phantom(series, seed=int.from_bytes(_digest(seed, "pixels", index)[:8]))
    written: list[tuple[str, Path]] = []
    for number in range(1, series.images + 1):
        sop_uid = _uid(seed, "instance", index, number)
        ds = _study_level(spec, seed=seed)
        _add_series_level(ds, series, index, seed=seed)
        _add_instance_level(ds, series, number, sop_uid)
        _add_pixels(ds, series, phantom.slice(number - 1))
        path = series_dir / f"{sop_uid}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append((sop_uid, path))

    return written


def _digest(seed: int, *parts: object) -> bytes:
    """SHA-256 over the seed and the parts, the source of every derived value."""
    key = "/".join(str(part) for part in ("spiders-demo", seed, *parts))

    return hashlib.sha256(key.encode("ascii")).digest()


def _study_level(spec: StudySpec, *, seed: int) -> Dataset:
    """Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1)."""
    patient = spec.patient
    ds = Dataset()
    ds.SpecificCharacterSet = CHARACTER_SET
    ds.PatientName = f"{patient.family}^{patient.given}"
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = patient.issuer
    qualifiers = Dataset()
    qualifiers.UniversalEntityID = patient.issuer_oid
    qualifiers.UniversalEntityIDType = "ISO"
    ds.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex

    ds.StudyInstanceUID = study_uid_for(seed)
    ds.StudyDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.StudyDescription = spec.description
    ds.AccessionNumber = spec.accession_number
    # Study ID is SH (16 characters): six digits from the seed's digest.
    ds.StudyID = str(int.from_bytes(_digest(seed, "study-id")[:8]) % 1_000_000)
    ds.ReferringPhysicianName = REFERRING_PHYSICIAN

    return ds


def _add_series_level(
    ds: Dataset, series: SeriesSpec, index: int, *, seed: int
) -> None:
    """General Series, Frame of Reference and General Equipment modules."""
    ds.SeriesInstanceUID = _uid(seed, "series", index)
    ds.SeriesNumber = index + 1
    ds.SeriesDescription = series.description
    ds.Modality = series.modality
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = _minutes_after(ds.StudyTime, 3 * index)
    if series.modality in CROSS_SECTIONAL:
        ds.FrameOfReferenceUID = _uid(seed, "frame-of-reference", index)
        ds.PositionReferenceIndicator = ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "Phantom"
    ds.InstitutionName = ds.IssuerOfPatientID.replace("_", " ")
    ds.StationName = "DEMO"


def _add_instance_level(
    ds: Dataset, series: SeriesSpec, number: int, sop_uid: str
) -> None:
    """SOP Common, General Image and the modality's own attributes."""
    sop_class = SOP_CLASS_BY_MODALITY.get(series.modality, SecondaryCaptureImageStorage)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128

    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = number
    ds.ImageType = _image_type(series.modality)
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.SeriesTime
    ds.PatientOrientation = ""
    if series.modality in CROSS_SECTIONAL:
        _add_image_plane(ds, series, number)
    elif series.modality == "CR":
        ds.ImagerPixelSpacing = [0.15, 0.15]
    _add_modality_attributes(ds, series.modality)


def _image_type(modality: str) -> list[str]:
    """Image Type (0008,0008): acquired images, or derived for Secondary Capture."""
    if modality not in SOP_CLASS_BY_MODALITY:
        return ["DERIVED", "SECONDARY"]
    if modality == "CT":
        return ["ORIGINAL", "PRIMARY", "AXIAL"]

    return ["ORIGINAL", "PRIMARY"]


def _add_image_plane(ds: Dataset, series: SeriesSpec, number: int) -> None:
    """Image Plane module (PS3.3 C.7.6.2): axial slices, head first, supine.

    The volume is centred on the patient coordinate origin; the position is the
    centre of the first transmitted pixel.
    """
    # Rounded so that every decimal string fits the 16 characters of DS.
    spacing = round(FIELD_OF_VIEW_MM / max(series.rows, series.columns), 6)
    z = -(number - 1) * SLICE_THICKNESS_MM
    ds.ImagePositionPatient = [
        round(-spacing * (series.columns - 1) / 2, 4),
        round(-spacing * (series.rows - 1) / 2, 4),
        z,
    ]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = SLICE_THICKNESS_MM
    ds.SliceLocation = z
    ds.PatientPosition = "HFS"


def _add_modality_attributes(ds: Dataset, modality: str) -> None:
    """A plausible subset of the CT, MR, PET or SC image module."""
    if modality == "CT":
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        ds.RescaleIntercept = -CT_OFFSET
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
    elif modality == "MR":
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = 15
        ds.RepetitionTime = 500
        ds.MagneticFieldStrength = 1.5
    elif modality == "PT":
        ds.SeriesType = ["STATIC", "IMAGE"]
        ds.Units = "CNTS"
        ds.CorrectedImage = ["ATTN", "DECY"]
        ds.DecayCorrection = "START"
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
    elif modality not in SOP_CLASS_BY_MODALITY:
        # Secondary Capture Image module (PS3.3 C.8.6.2): Type 1.
        ds.ConversionType = "WSD"


def _add_pixels(ds: Dataset, series: SeriesSpec, pixels: npt.NDArray[np.int16]) -> None:
    """Image Pixel module (PS3.3 C.7.6.3): 16 bits allocated, MONOCHROME2."""
    ds.Rows = series.rows
    ds.Columns = series.columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    if series.modality == "CT":
        # Signed 16-bit stored values so that the rescale reaches air and metal.
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = pixels.astype("<i2").tobytes()
    else:
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.astype("<u2").tobytes()


def _minutes_after(time: str, minutes: int) -> str:
    """Add minutes to a DICOM TM ``HHMMSS`` value, wrapping at midnight."""
    padded = (time.split(".")[0] + "000000")[:6]
    total = int(padded[:2]) * 3600 + int(padded[2:4]) * 60 + int(padded[4:6])
    total = (total + 60 * minutes) % 86_400

    return f"{total // 3600:02d}{total % 3600 // 60:02d}{total % 60:02d}"


class _Phantom:
    """Slices of an elliptic body with a dense core, a lesion and noise.

    The distance grids and the noise fields are computed once per series; a slice
    is then three comparisons and two additions on ``int16`` arrays.
    """

    NOISE_FIELDS = 4

    def __init__(self, series: SeriesSpec, *, seed: int) -> None:
        self.images = series.images
        background, body, core, lesion = PHANTOM_LEVELS.get(
            series.modality, PHANTOM_DEFAULT_LEVELS
        )
        self.background = np.int16(background)
        self.body_step = np.int16(body - background)
        self.core_step = np.int16(core - body)
        self.lesion_step = np.int16(lesion - body)

        # Normalised squared distances: 1.0 on the body's largest outline.
        y = np.linspace(-1.0, 1.0, series.rows, dtype=np.float32)[:, np.newaxis]
        x = np.linspace(-1.0, 1.0, series.columns, dtype=np.float32)[np.newaxis, :]
        self.body_r2 = (x / 0.85) ** 2 + (y / 0.65) ** 2
        self.lesion_r2 = ((x - 0.45) / 0.08) ** 2 + ((y - 0.1) / 0.08) ** 2

        rng = np.random.default_rng(seed)
        shape = (self.NOISE_FIELDS, series.rows, series.columns)
        self.noise: npt.NDArray[np.int16] = rng.integers(
            0, 24, size=shape, dtype=np.int16
        )

    def slice(self, index: int) -> npt.NDArray[np.int16]:
        """Return the stored values of slice ``index`` (0-based)."""
        # The outline grows then shrinks along the series, as a trunk does.
        position = (index + 0.5) / self.images
        radius2 = np.float32((0.55 + 0.45 * math.sin(math.pi * position)) ** 2)
        body = self.body_r2 <= radius2
        pixels: npt.NDArray[np.int16] = (
            self.noise[index % self.NOISE_FIELDS] + self.background
        )
        pixels += body.astype(np.int16) * self.body_step
        pixels += (self.body_r2 <= radius2 * 0.16).astype(np.int16) * self.core_step
        if 1 / 3 <= position <= 2 / 3:
            lesion = (self.lesion_r2 <= 1.0) & body
            pixels += lesion.astype(np.int16) * self.lesion_step

        return pixels
