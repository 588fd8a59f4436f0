"""RAD-14 Query Images: Study Root C-FIND at a producing site (SCU side).

The query asks for the studies of one patient by the site's own local ID,
with return keys for everything a clinician needs to choose and the counts
that later prove a retrieve complete. PatientID is matched again on our side:
some PACS treat the key loosely and return other patients' studies.

Limitations
-----------
Study Root only (no Patient Root fallback); no date or modality narrowing
of the query; responses are not deduplicated across sites here.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from ihe.dicom.ae import make_ae
from ihe.dicom.sop_classes import StudyRootQueryRetrieveInformationModelFind
from mappings.dicom_study import StudyFound, study_from_identifier
from server.errors import AssociationFailed, DimseFailure

logger = logging.getLogger(__name__)

LOG_QUERY_DONE = "site query done"
SOP_CLASS = str(StudyRootQueryRetrieveInformationModelFind)
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


@dataclass(frozen=True)
class QueryResult:
    """The studies a site returned, and the identifier that asked for them."""

    studies: tuple[StudyFound, ...]
    ignored: int
    query: bytes


def build_identifier(patient_id: str) -> Dataset:
    """The Study Root C-FIND identifier for one patient's studies."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = patient_id
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, "")
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
) -> QueryResult:
    """Find the studies of `patient_id` at one site.

    Raises
    ------
    AssociationFailed
        The site refused, aborted or did not answer.
    DimseFailure
        The site answered the C-FIND with a failure status.
    """
    ae = make_ae(calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(SOP_CLASS)
    identifier = build_identifier(patient_id)
    tls_args = (tls, host) if tls is not None else None
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args)
    if not assoc.is_established:
        raise AssociationFailed(
            f"no association with {ae_title}: refused, unreachable or timed out"
        )
    studies: dict[str, StudyFound] = {}
    ignored = 0
    try:
        for status, rsp in assoc.send_c_find(identifier, SOP_CLASS):
            code = int(status.get("Status", -1)) if status else -1
            if code in (0xFF00, 0xFF01):
                found = study_from_identifier(rsp) if rsp is not None else None
                if found is None or found.patient_id != patient_id:
                    ignored += 1
                    continue
                studies.setdefault(found.study_uid, found)
            elif code == 0x0000:
                break
            elif code == -1:
                raise AssociationFailed(
                    f"{ae_title} aborted or timed out during C-FIND"
                )
            else:
                raise DimseFailure(f"C-FIND at {ae_title} failed (0x{code:04X})", code)
    finally:
        if assoc.is_established:
            assoc.release()
    if ignored:
        logger.warning(
            "responses for another patient ignored",
            extra={"site_ae": ae_title, "ignored": ignored},
        )
    logger.info(LOG_QUERY_DONE, extra={"site_ae": ae_title, "studies": len(studies)})
    return QueryResult(tuple(studies.values()), ignored, encode_identifier(identifier))
