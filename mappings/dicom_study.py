"""A Study Root C-FIND response identifier to a candidate study.

Responses are read as PACS really send them: values padded with spaces,
counts missing or written as text, Query/Retrieve Level absent, multi-valued
ModalitiesInStudy or a single backslash-joined string.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset


@dataclass(frozen=True)
class StudyFound:
    """One study a site announced, with the counts used to prove completeness."""

    study_uid: str
    patient_id: str
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    modalities: tuple[str, ...]
    description: str | None
    num_series: int | None
    num_instances: int | None


def study_from_identifier(ds: Dataset) -> StudyFound | None:
    """Map one C-FIND response identifier; ``None`` if it names no study."""
    study_uid = _text(ds, "StudyInstanceUID")
    if not study_uid:
        return None
    return StudyFound(
        study_uid=study_uid,
        patient_id=_text(ds, "PatientID") or "",
        patient_name=_text(ds, "PatientName"),
        patient_birth_date=_text(ds, "PatientBirthDate"),
        patient_sex=_text(ds, "PatientSex"),
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        accession_number=_text(ds, "AccessionNumber"),
        modalities=_modalities(ds),
        description=_text(ds, "StudyDescription"),
        num_series=_count(ds, "NumberOfStudyRelatedSeries"),
        num_instances=_count(ds, "NumberOfStudyRelatedInstances"),
    )


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip(" \x00")
    return text or None


def _modalities(ds: Dataset) -> tuple[str, ...]:
    value = ds.get("ModalitiesInStudy")
    if value is None or value == "":
        return ()
    items = [value] if isinstance(value, str) else list(value)
    found = {m.strip().upper() for item in items for m in str(item).split("\\")}
    return tuple(sorted(m for m in found if m))


def _count(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None
