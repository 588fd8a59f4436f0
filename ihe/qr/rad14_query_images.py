"""RAD-14 Query Images: C-FIND for a patient's studies at a site (SCU side).

IHE RAD TF-2 4.14, DICOM PS3.4 C.4.1. The query asks for the studies of one
patient by the site's own local ID, with return keys for everything a
clinician needs to choose and the counts that later prove a retrieve
complete. Two information models:

- Study Root (the default): one STUDY-level C-FIND keyed on PatientID, with
  the patient's name, birth date and sex as study-level return keys.
- Patient Root, for sites that only offer it: a PATIENT-level C-FIND for the
  patient's attributes, then a STUDY-level C-FIND with PatientID as the
  unique key of the level above (PS3.4 C.4.1.2.2, hierarchical search); the
  patient's attributes are copied onto each study for the identity checks.

Hints from orders and appointments narrow extra queries on the same
association: one identifier with the hinted Study Instance UIDs (list of UID
matching, PS3.4 C.2.2.2.2) and one per hinted accession number (single value
matching). PatientID stays a key in every identifier, so a hint naming
another patient's study finds nothing. The broad query runs first in any
case: a board needs the patient's earlier studies too, and the narrowed ones
find the hinted studies even when a PACS caps the number of answers.

PatientID is matched again on our side: some PACS treat the key loosely and
return other patients' studies. Responses are read as PACS send them:
without Query/Retrieve Level, with 0xFF01 pending statuses, padded values and
a misspelled Specific Character Set (corrected, with a warning).

For the prefetch, two more Study Root queries below the study:
:func:`query_series` (SERIES level: each series and its instance count) and
:func:`query_instances` (IMAGE level: the SOP Instance UIDs of some series,
so that a retry asks only for the instances the cache lacks).

Limitations
-----------
No date or modality narrowing; an accession-number hint holding a wildcard
character (``*``, ``?``) or a backslash is not sent. Patient Root uses only
the first PATIENT-level match's attributes. The series and instance queries
use Study Root only; a PACS that caps the number of answers gives a short
instance list, which the prefetch notices by the series count.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Iterator, Sequence

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.association import Association

from ihe.dicom.sop_classes import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)
from ihe.qr.association import associate, refused_text, released
from mappings.dicom_study import QueryResult as QueryResult
from mappings.dicom_study import (
    StudyFound,
    normalise_character_set,
    study_from_identifier,
)
from server.errors import AssociationFailed, DimseFailure

logger = logging.getLogger(__name__)

LOG_QUERY_DONE = "site query done"
LOG_CHARSET_CORRECTED = "specific character set corrected"
SOP_CLASS = str(StudyRootQueryRetrieveInformationModelFind)
PATIENT_ROOT_SOP_CLASS = str(PatientRootQueryRetrieveInformationModelFind)
PATIENT_KEYS = ("PatientName", "PatientBirthDate", "PatientSex", "IssuerOfPatientID")
STUDY_KEYS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "StudyDescription",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
RETURN_KEYS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "StudyDescription",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "IssuerOfPatientID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
# Hint values sent at most, per kind: enough for any real order, bounded.
MAX_HINTS = 20
PENDING = (0xFF00, 0xFF01)
SUCCESS = 0x0000


def sop_class_for(query_model: str) -> str:
    """The FIND SOP Class UID of ``"study"`` or ``"patient"`` root."""
    return PATIENT_ROOT_SOP_CLASS if query_model == "patient" else SOP_CLASS


def build_identifier(
    patient_id: str,
    *,
    query_model: str = "study",
    level: str = "STUDY",
    study_uids: Sequence[str] = (),
    accession_number: str | None = None,
) -> Dataset:
    """The C-FIND identifier for one patient's studies (or, at PATIENT level
    of Patient Root, for the patient's own attributes)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    ds.PatientID = patient_id
    if level == "PATIENT":
        keys: tuple[str, ...] = PATIENT_KEYS
    elif query_model == "patient":
        keys = STUDY_KEYS
    else:
        keys = RETURN_KEYS
    for keyword in keys:
        setattr(ds, keyword, "")
    if study_uids:
        ds.StudyInstanceUID = list(study_uids) if len(study_uids) > 1 else study_uids[0]
    if accession_number is not None:
        ds.AccessionNumber = accession_number
    return ds


def encode_identifier(ds: Dataset) -> bytes:
    """The identifier as Implicit VR Little Endian bytes, for the audit trail."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    write_dataset(buffer, ds)
    return buffer.getvalue()


def query_studies(
    *,
    calling_ae: str,
    ae_title: str,
    host: str,
    port: int,
    patient_id: str,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
    query_model: str = "study",
    study_uids: Sequence[str] = (),
    accession_numbers: Sequence[str] = (),
) -> QueryResult:
    """Find the studies of `patient_id` at one site.

    Parameters
    ----------
    query_model : {"study", "patient"}
        The Query/Retrieve information model the site offers.
    study_uids, accession_numbers
        Hints: sent as matching keys in extra narrowed queries, beside
        PatientID.

    Raises
    ------
    AssociationFailed
        The site refused, aborted or did not answer.
    DimseFailure
        The site answered a C-FIND with a failure status.
    """
    sop_class = sop_class_for(query_model)
    assoc = _associate(calling_ae, ae_title, host, port, sop_class, timeout, tls)
    finder = _Finder(assoc, sop_class, ae_title, patient_id)
    with released(assoc):
        patient = None
        if query_model == "patient":
            patient = finder.patient_attributes()
        if query_model != "patient" or patient is not None:
            finder.studies(build_identifier(patient_id, query_model=query_model))
            for identifier in _narrowed(
                patient_id, query_model, study_uids, accession_numbers
            ):
                finder.studies(identifier)
    if finder.ignored:
        logger.warning(
            "responses for another patient ignored",
            extra={"site_ae": ae_title, "ignored": finder.ignored},
        )
    studies = tuple(_with_patient(study, patient) for study in finder.found.values())
    logger.info(LOG_QUERY_DONE, extra={"site_ae": ae_title, "studies": len(studies)})
    return QueryResult(studies, finder.ignored, tuple(finder.sent), sop_class)


class _Finder:
    """The C-FINDs of one site query on one association."""

    def __init__(
        self, assoc: Association, sop_class: str, ae_title: str, patient_id: str
    ) -> None:
        self.assoc = assoc
        self.sop_class = sop_class
        self.ae_title = ae_title
        self.patient_id = patient_id
        self.found: dict[str, StudyFound] = {}
        self.ignored = 0
        self.sent: list[bytes] = []

    def patient_attributes(self) -> Dataset | None:
        """Patient Root, PATIENT level: the patient's own attributes, if known."""
        identifier = build_identifier(
            self.patient_id, query_model="patient", level="PATIENT"
        )
        found = None
        for rsp in self._find(identifier):
            same = str(rsp.get("PatientID", "")).strip(" \x00") == self.patient_id
            if not same:
                self.ignored += 1
            elif found is None:
                found = rsp
        return found

    def studies(self, identifier: Dataset) -> None:
        """Run one STUDY-level C-FIND and keep this patient's studies."""
        for rsp in self._find(identifier):
            study = study_from_identifier(rsp)
            if study is None or study.patient_id != self.patient_id:
                self.ignored += 1
                continue
            self.found.setdefault(study.study_uid, study)

    def _find(self, identifier: Dataset) -> Iterator[Dataset]:
        self.sent.append(encode_identifier(identifier))
        for rsp in _responses(self.assoc, identifier, self.ae_title, self.sop_class):
            self._charset(rsp)
            yield rsp

    def _charset(self, rsp: Dataset) -> None:
        received = normalise_character_set(rsp)
        if received is not None:
            logger.warning(
                LOG_CHARSET_CORRECTED,
                extra={
                    "site_ae": self.ae_title,
                    "received": received,
                    "used": str(rsp.get("SpecificCharacterSet", "")),
                },
            )


def _narrowed(
    patient_id: str,
    query_model: str,
    study_uids: Sequence[str],
    accession_numbers: Sequence[str],
) -> Iterator[Dataset]:
    uids = list(dict.fromkeys(u for u in study_uids if u))[:MAX_HINTS]
    if uids:
        yield build_identifier(patient_id, query_model=query_model, study_uids=uids)
    accessions = [
        a
        for a in dict.fromkeys(a.strip() for a in accession_numbers)
        if a and not set(a) & {"*", "?", "\\"}
    ][:MAX_HINTS]
    for accession in accessions:
        yield build_identifier(
            patient_id, query_model=query_model, accession_number=accession
        )


def _with_patient(study: StudyFound, patient: Dataset | None) -> StudyFound:
    if patient is None:
        return study
    return dataclasses.replace(
        study,
        patient_name=study.patient_name or _value(patient, "PatientName"),
        patient_birth_date=study.patient_birth_date
        or _value(patient, "PatientBirthDate"),
        patient_sex=study.patient_sex or _value(patient, "PatientSex"),
    )


def _value(ds: Dataset, keyword: str) -> str | None:
    text = str(ds.get(keyword, "") or "").strip(" \x00")
    return text or None


LOG_SERIES_QUERY_DONE = "site series query done"


def query_series(
    *,
    calling_ae: str,
    ae_title: str,
    host: str,
    port: int,
    study_uid: str,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> dict[str, int | None]:
    """The series of one study and their instance counts, as the site has them.

    A SERIES-level Study Root C-FIND (PS3.4 C.6.2) with SeriesInstanceUID and
    NumberOfSeriesRelatedInstances as return keys. A series whose count the
    site leaves empty maps to ``None``; responses naming another study are
    ignored.

    Raises
    ------
    AssociationFailed
        The site refused, aborted or did not answer.
    DimseFailure
        The site answered the C-FIND with a failure status.
    """
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study_uid
    identifier.SeriesInstanceUID = ""
    identifier.Modality = ""
    identifier.NumberOfSeriesRelatedInstances = ""
    assoc = _associate(calling_ae, ae_title, host, port, SOP_CLASS, timeout, tls)
    series: dict[str, int | None] = {}
    with released(assoc):
        for rsp in _responses(assoc, identifier, ae_title):
            _add_series(series, rsp, study_uid)
    logger.info(
        LOG_SERIES_QUERY_DONE, extra={"site_ae": ae_title, "series": len(series)}
    )
    return series


def _add_series(series: dict[str, int | None], rsp: Dataset, study_uid: str) -> None:
    """Record one SERIES-level response in `series`."""
    uid = str(rsp.get("SeriesInstanceUID", "") or "").strip()
    study = str(rsp.get("StudyInstanceUID", "") or "").strip()
    if not uid or (study and study != study_uid):
        return
    value = rsp.get("NumberOfSeriesRelatedInstances")
    try:
        count: int | None = int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        count = None
    series[uid] = count if count is None or count >= 0 else None


LOG_INSTANCE_QUERY_DONE = "site instance query done"


def query_instances(
    *,
    calling_ae: str,
    ae_title: str,
    host: str,
    port: int,
    study_uid: str,
    series_uids: Sequence[str],
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> dict[str, list[str]]:
    """The SOP Instance UIDs of some series of one study, as the site has them.

    One IMAGE-level Study Root C-FIND per series on one association (PS3.4
    C.6.2: the unique keys of the study and series levels, SOPInstanceUID as
    return key). Responses naming another study or series are ignored; a
    UID answered twice is kept once.

    Returns
    -------
    dict
        Series Instance UID to the site's SOP Instance UIDs, in the order the
        site answered; every series asked for is a key.

    Raises
    ------
    AssociationFailed
        The site refused, aborted or did not answer.
    DimseFailure
        The site answered a C-FIND with a failure status (a site that does not
        support IMAGE-level queries usually answers so).
    """
    assoc = _associate(calling_ae, ae_title, host, port, SOP_CLASS, timeout, tls)
    found: dict[str, list[str]] = {}
    with released(assoc):
        for series_uid in dict.fromkeys(series_uids):
            identifier = instance_identifier(study_uid, series_uid)
            uids: dict[str, None] = {}
            for rsp in _responses(assoc, identifier, ae_title):
                uid = _instance_uid(rsp, study_uid, series_uid)
                if uid:
                    uids[uid] = None
            found[series_uid] = list(uids)
    logger.info(
        LOG_INSTANCE_QUERY_DONE,
        extra={
            "site_ae": ae_title,
            "series": len(found),
            "instances": sum(len(u) for u in found.values()),
        },
    )
    return found


def instance_identifier(study_uid: str, series_uid: str) -> Dataset:
    """The IMAGE-level C-FIND identifier listing one series' instances."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = study_uid
    identifier.SeriesInstanceUID = series_uid
    identifier.SOPInstanceUID = ""
    return identifier


def _associate(
    calling_ae: str,
    ae_title: str,
    host: str,
    port: int,
    sop_class: str,
    timeout: float,
    tls: ssl.SSLContext | None,
) -> Association:
    """An established association for C-FINDs of `sop_class`.

    Raises
    ------
    AssociationFailed
        The site refused, or did not answer in time.
    """
    assoc = associate(
        calling_ae=calling_ae,
        ae_title=ae_title,
        host=host,
        port=port,
        contexts=[(sop_class, None)],
        timeout=timeout,
        tls=tls,
    )
    if not assoc.is_established:
        raise AssociationFailed(refused_text(ae_title))
    return assoc


def _responses(
    assoc: Association, identifier: Dataset, ae_title: str, sop_class: str = SOP_CLASS
) -> Iterator[Dataset]:
    """The pending responses' identifiers of one C-FIND; raises on failure."""
    for status, rsp in assoc.send_c_find(identifier, sop_class):
        code = int(status.get("Status", -1)) if status else -1
        if code in PENDING:
            if rsp is not None:
                yield rsp
        elif code == SUCCESS:
            return
        elif code == -1:
            raise AssociationFailed(f"{ae_title} aborted or timed out during C-FIND")
        else:
            raise DimseFailure(f"C-FIND at {ae_title} failed (0x{code:04X})", code)


def _instance_uid(rsp: Dataset, study_uid: str, series_uid: str) -> str | None:
    """The SOP Instance UID of one IMAGE-level response, if it is of the
    series asked for (a study or series the site leaves empty is trusted)."""
    uid = str(rsp.get("SOPInstanceUID", "") or "").strip(" \x00")
    study = str(rsp.get("StudyInstanceUID", "") or "").strip(" \x00")
    series = str(rsp.get("SeriesInstanceUID", "") or "").strip(" \x00")
    if not uid or (study and study != study_uid) or (series and series != series_uid):
        return None
    return uid
