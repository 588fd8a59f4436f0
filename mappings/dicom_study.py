"""Query responses to candidate studies: C-FIND identifiers and QIDO-RS JSON.

Responses are read as PACS really send them: values padded with spaces or
NULs, counts missing or written as text, Query/Retrieve Level absent,
multi-valued ModalitiesInStudy or a single backslash-joined string, and a
Specific Character Set (0008,0005) spelled the way some devices write it
(``ISO IR 100``, ``ISO-IR 192``, ``UTF-8``, ``LATIN1``...). The character set
is rewritten as the defined term it stands for before any text is decoded, so
names come out right and a dataset written again carries a valid value.

A DICOM JSON study (PS3.18 F.2) maps to the same :class:`StudyFound`; Person
Name values keep their ideographic and phonetic groups after ``=``.

Limitations
-----------
A Specific Character Set that names no known repertoire at all is read as
UTF-8 when every text value is valid UTF-8, and as Latin-1 otherwise; a
Latin-1 guess may still show the wrong letters for other single-byte sets.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.charset import convert_encodings, python_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

# (0008,0005) and the text VRs whose bytes depend on it (PS3.5 6.1.2.3).
CHARSET_TAG = Tag(0x0008, 0x0005)
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
UTF8_TERM = "ISO_IR 192"
LATIN1_TERM = "ISO_IR 100"
_SPELLED_ISO_IR = re.compile(r"^ISO[ _-]?IR[ _-]?(\d+)$")
_SPELLED_ISO_2022 = re.compile(r"^ISO[ _-]?2022[ _-]?IR[ _-]?(\d+)$")
# Python codec name -> the single-byte (or UTF-8) defined term for it, to read
# values written as codec names ("UTF-8", "LATIN1", "ISO-8859-1").
_BY_CODEC = {
    codecs.lookup(encoding).name: term
    for term, encoding in sorted(python_encoding.items(), reverse=True)
    if term.startswith("ISO_IR ")
}

# DICOM JSON attribute tags (PS3.18 F.2.1), upper-case hex.
JSON_TAGS = {
    "StudyInstanceUID": "0020000D",
    "PatientID": "00100020",
    "PatientName": "00100010",
    "PatientBirthDate": "00100030",
    "PatientSex": "00100040",
    "StudyDate": "00080020",
    "StudyTime": "00080030",
    "AccessionNumber": "00080050",
    "ModalitiesInStudy": "00080061",
    "StudyDescription": "00081030",
    "NumberOfStudyRelatedSeries": "00201206",
    "NumberOfStudyRelatedInstances": "00201208",
}


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


@dataclass(frozen=True)
class QueryResult:
    """The studies a site returned, and the request that asked for them.

    Attributes
    ----------
    studies : tuple of StudyFound
        One per Study Instance UID, in the order first announced.
    ignored : int
        Responses dropped: another patient's, or naming no study.
    queries : tuple of bytes
        Each request as sent, for the audit trail: C-FIND identifiers in
        Implicit VR Little Endian, or QIDO-RS URLs; the broad query first.
    sop_class_uid : str
        The Query/Retrieve FIND SOP Class the queries used.
    """

    studies: tuple[StudyFound, ...]
    ignored: int
    queries: tuple[bytes, ...]
    sop_class_uid: str

    @property
    def query(self) -> bytes:
        """The broad query (by patient ID alone), as sent."""
        return self.queries[0] if self.queries else b""


def study_from_identifier(ds: Dataset) -> StudyFound | None:
    """Map one C-FIND response identifier; ``None`` if it names no study.

    Call :func:`normalise_character_set` first when the identifier may carry a
    misspelled Specific Character Set.
    """
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
        modalities=_modalities(ds.get("ModalitiesInStudy")),
        description=_text(ds, "StudyDescription"),
        num_series=_count(ds.get("NumberOfStudyRelatedSeries")),
        num_instances=_count(ds.get("NumberOfStudyRelatedInstances")),
    )


def study_from_json(obj: Mapping[str, Any]) -> StudyFound | None:
    """Map one DICOM JSON study of a QIDO-RS answer; ``None`` if it names none."""
    values = {keyword: _json_values(obj.get(tag)) for keyword, tag in JSON_TAGS.items()}

    def first(keyword: str) -> str | None:
        found = values[keyword]
        return _clean(found[0]) if found else None

    study_uid = first("StudyInstanceUID")
    if not study_uid:
        return None
    return StudyFound(
        study_uid=study_uid,
        patient_id=first("PatientID") or "",
        patient_name=first("PatientName"),
        patient_birth_date=first("PatientBirthDate"),
        patient_sex=first("PatientSex"),
        study_date=first("StudyDate"),
        study_time=first("StudyTime"),
        accession_number=first("AccessionNumber"),
        modalities=_modalities(values["ModalitiesInStudy"]),
        description=first("StudyDescription"),
        num_series=_count(first("NumberOfStudyRelatedSeries")),
        num_instances=_count(first("NumberOfStudyRelatedInstances")),
    )


def normalise_character_set(ds: Dataset) -> str | None:
    """Rewrite (0008,0005) of `ds` as the defined terms it stands for.

    Must run before any text element of `ds` is read. Defined terms are kept;
    spellings such as ``ISO IR 100`` or ``ISO-IR 192`` become ``ISO_IR 100``
    and ``ISO_IR 192``, codec names such as ``UTF-8`` or ``LATIN1`` the term
    of that codec, and an unknown value ``ISO_IR 192`` when every text value
    is valid UTF-8, ``ISO_IR 100`` otherwise.

    Returns
    -------
    str or None
        The value as received (backslash-joined) when it was changed, else
        ``None``.
    """
    element = ds.get_item(CHARSET_TAG) if CHARSET_TAG in ds else None
    if element is None or element.value is None:
        return None
    raw = element.value
    if isinstance(raw, bytes):
        raw_text = raw.decode("ascii", errors="replace")
    elif isinstance(raw, str):
        raw_text = raw
    else:
        raw_text = "\\".join(str(item) for item in raw)
    terms = [item.strip(" \x00").upper() for item in raw_text.split("\\")]
    fixed = [_defined_term(term, ds) for term in terms]
    if fixed == [item.strip(" \x00") for item in raw_text.split("\\")]:
        return None
    # An empty first value is the default repertoire and may stay empty.
    ds.SpecificCharacterSet = fixed[0] if len(fixed) == 1 else fixed
    # Raw elements are decoded with the encoding noted when the dataset was
    # read (pydicom's own guess for a misspelled value): replace it too.
    implicit, little = ds.original_encoding
    ds.set_original_encoding(implicit, little, convert_encodings(fixed))
    return raw_text.strip(" \x00")


def _defined_term(term: str, ds: Dataset) -> str:
    if term in python_encoding:
        return term
    spelled = _SPELLED_ISO_2022.match(term)
    if spelled and f"ISO 2022 IR {spelled[1]}" in python_encoding:
        return f"ISO 2022 IR {spelled[1]}"
    spelled = _SPELLED_ISO_IR.match(term)
    if spelled and f"ISO_IR {spelled[1]}" in python_encoding:
        return f"ISO_IR {spelled[1]}"
    try:
        by_codec = _BY_CODEC.get(codecs.lookup(term).name)
    except LookupError:
        by_codec = None
    if by_codec is not None:
        return by_codec
    return UTF8_TERM if _all_text_utf8(ds) else LATIN1_TERM


def _all_text_utf8(ds: Dataset) -> bool:
    # Dataset.keys() leaves raw elements undecoded; iterating would decode.
    for tag in list(ds.keys()):
        element = ds.get_item(tag)
        if isinstance(element, RawDataElement) and element.VR in TEXT_VRS:
            try:
                (element.value or b"").decode("utf-8")
            except UnicodeDecodeError:
                return False
    return True


def _json_values(attribute: Any) -> list[Any]:
    if not isinstance(attribute, Mapping):
        return []
    found = attribute.get("Value")
    if not isinstance(found, list):
        return []
    values: list[Any] = []
    for item in found:
        if isinstance(item, Mapping):  # PN: component groups (PS3.18 F.2.2)
            groups = [item.get(g) for g in ("Alphabetic", "Ideographic", "Phonetic")]
            text = "=".join(g if isinstance(g, str) else "" for g in groups)
            values.append(text.rstrip("="))
        elif item is not None:
            values.append(item)
    return values


def _clean(value: Any) -> str | None:
    text = str(value).strip(" \x00")
    return text or None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    return _clean(value)


def _modalities(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    items = [value] if isinstance(value, str) else list(value)
    found = {m.strip(" \x00").upper() for item in items for m in str(item).split("\\")}
    return tuple(sorted(m for m in found if m))


def _count(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(str(value).strip(" \x00"))
    except ValueError:
        return None
