"""FHIR R4 Patient to the patient index, HL7 v2 PID fields and DICOM attributes.

The FHIR input is validated with ``fhir.resources`` (its R4B models, the nearest
to R4 in that package). Primitives that carry only an extension, such as a
masked ``_birthDate``, are legal and map to empty values.

Limitations
-----------
Only the first ``official`` (or, failing that, first) name is the used name and
the first ``maiden`` name the birth name. The FR Core identity-reliability
extension gives the INS identity status and attributes (HL7 France table
0445 codes, as in PID-32); the birth place is the INSEE code of the
``patient-birthPlace`` address when it has one, else its text or city.
Addresses and telecoms are kept only in the stored resource.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from fhir.resources.R4B.patient import Patient as FhirPatient
from pydantic import ValidationError
from pydicom.dataset import Dataset

from mappings.fhir_validation import issues_from_validation
from mappings.identifiers import Identifier, system_to_authority, to_cx
from mappings.names import to_dicom_pn
from server.errors import InvalidResource

MAX_IDENTIFIER = 128  # the index's column width; HL7 CX.1 allows less
RELIABILITY_URL = (
    "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability"
)
BIRTH_PLACE_URL = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
INSEE_CODE_URL = (
    "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code"
)
# RNIV identity status (exclusive) and attributes: HL7 France table 0445,
# as in PID-32 and the FR Core identity-reliability extension.
IDENTITY_STATUS = frozenset({"PROV", "RECUP", "VALI", "QUAL"})
IDENTITY_ATTRIBUTES = frozenset(
    {
        "DOUT",
        "FICT",
        "HOMA",
        "VIDE",
        "DOUB",
        "DESA",
        "DPOT",
        "DOUA",
        "COLP",
        "COLV",
        "FILI",
        "CACH",
        "ANOM",
        "IDVER",
        "RECD",
        "IDRA",
        "USUR",
        "HOMD",
        "INVA",
    }
)

# FHIR administrative gender → HL7 table 0001 and DICOM (0010,0040).
GENDER_TO_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
SEX_TO_GENDER = {"M": "male", "F": "female", "O": "other", "U": "unknown"}


@dataclass(frozen=True)
class PatientRecord:
    """What the patient index keeps of a FHIR Patient."""

    identifiers: tuple[Identifier, ...]
    family: str | None = None
    given: tuple[str, ...] = ()
    birth_family: str | None = None
    birth_date: date | None = None
    sex: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # RNIV identity status and attributes (HL7 PID-32); None: not sent.
    identity_status: str | None = None
    identity_attributes: tuple[str, ...] | None = None
    # PID-23 / patient-birthPlace: an INSEE code when sent, else a place name.
    birth_place: str | None = None


def parse_patient(data: Any) -> PatientRecord:
    """Validate a FHIR Patient given as parsed JSON and map it.

    Raises
    ------
    InvalidResource
        The resource is not a valid Patient, or has no usable identifier.
    """
    if not isinstance(data, dict) or data.get("resourceType") != "Patient":
        raise InvalidResource(
            "the body is not a Patient resource",
            [("Patient", "resourceType must be Patient")],
        )
    try:
        patient = FhirPatient.model_validate(data)
    except ValidationError as exc:
        raise InvalidResource(
            "the Patient does not conform to FHIR R4",
            issues_from_validation(exc, "Patient"),
        ) from exc
    identifiers = _identifiers(patient)
    family, given, birth_family = _names(patient)
    status, attributes = _reliability(data)
    return PatientRecord(
        identifiers=identifiers,
        family=family,
        given=given,
        birth_family=birth_family,
        birth_date=_birth_date(patient),
        sex=GENDER_TO_SEX.get(patient.gender or ""),
        identity_status=status,
        identity_attributes=attributes,
        birth_place=_birth_place(data),
    )


def to_pid_fields(record: PatientRecord) -> dict[str, str]:
    """Map a patient to HL7 v2 PID-3, PID-5, PID-7 and PID-8 (ER7 text)."""
    xpn = []
    if record.family or record.given:
        xpn.append("^".join([record.family or "", *record.given[:2]]).rstrip("^"))
    return {
        "PID-3": "~".join(to_cx(i) for i in record.identifiers),
        "PID-5": "~".join(xpn),
        "PID-7": record.birth_date.strftime("%Y%m%d") if record.birth_date else "",
        "PID-8": record.sex or "",
    }


def to_dicom_patient(record: PatientRecord, primary_authority: str | None) -> Dataset:
    """Map a patient to the DICOM Patient module.

    The identifier in `primary_authority` (an OID, or a namespace ID as HL7
    CX-4.1 names it) becomes Patient ID with its issuer; the others go to
    Other Patient IDs Sequence (0010,1002).
    """
    idents = list(record.identifiers)
    wanted = [i for i in idents if primary_authority in (i.system, i.namespace)]
    primary = wanted[0] if primary_authority and wanted else None
    primary = primary or (idents[0] if idents else None)
    ds = Dataset()
    ds.PatientName = to_dicom_pn(record.family, list(record.given))
    ds.PatientBirthDate = (
        record.birth_date.strftime("%Y%m%d") if record.birth_date else ""
    )
    ds.PatientSex = record.sex or ""
    if primary is not None:
        ds.PatientID = primary.value
        _set_issuer(ds, primary)
        others = []
        for ident in idents:
            if ident is primary:
                continue
            item = Dataset()
            item.PatientID = ident.value
            _set_issuer(item, ident)
            others.append(item)
        if others:
            ds.OtherPatientIDsSequence = others
    return ds


def _set_issuer(ds: Dataset, ident: Identifier) -> None:
    ds.IssuerOfPatientID = ident.namespace or ("" if ident.is_oid else ident.system)
    if ident.is_oid:
        qualifier = Dataset()
        qualifier.UniversalEntityID = ident.system
        qualifier.UniversalEntityIDType = "ISO"
        ds.IssuerOfPatientIDQualifiersSequence = [qualifier]


def _identifiers(patient: FhirPatient) -> tuple[Identifier, ...]:
    found: list[Identifier] = []
    for index, ident in enumerate(patient.identifier or []):
        if not (ident.system or "").strip() or not (ident.value or "").strip():
            raise InvalidResource(
                "every Patient identifier needs a system and a value",
                [(f"Patient.identifier[{index}]", "system and value are required")],
            )
        if len(ident.value or "") > MAX_IDENTIFIER or len(ident.system or "") > 128:
            raise InvalidResource(
                "an identifier is longer than SPIDERS keeps",
                [
                    (
                        f"Patient.identifier[{index}]",
                        f"value at most {MAX_IDENTIFIER} characters, "
                        "system at most 128",
                    )
                ],
            )
        type_code = None
        if ident.type and ident.type.coding:
            type_code = ident.type.coding[0].code
        found.append(
            Identifier(
                system_to_authority(ident.system or ""),
                (ident.value or "").strip(),
                type_code,
            )
        )
    if not found:
        raise InvalidResource(
            "the Patient has no identifier: "
            "the index links patients only by identifiers",
            [("Patient.identifier", "at least one identifier is required")],
        )
    return tuple(found)


def _names(patient: FhirPatient) -> tuple[str | None, tuple[str, ...], str | None]:
    names = patient.name or []
    used = next((n for n in names if n.use == "official"), names[0] if names else None)
    birth = next((n for n in names if n.use == "maiden"), None)
    family = used.family if used else None
    given = tuple(g for g in (used.given or []) if g) if used else ()
    return family, given, birth.family if birth else None


def _birth_date(patient: FhirPatient) -> date | None:
    value = patient.birthDate
    if isinstance(value, date):
        return value
    return None


def _reliability(data: dict[str, Any]) -> tuple[str | None, tuple[str, ...] | None]:
    """FR Core identity reliability: (status, attributes); (None, None) if absent."""
    found = [
        ext
        for ext in data.get("extension") or []
        if isinstance(ext, dict) and ext.get("url") == RELIABILITY_URL
    ]
    if not found:
        return None, None
    status: str | None = None
    attributes: list[str] = []
    for index, ext in enumerate(found):
        for code in _codes(ext):
            where = f"Patient.extension[{index}]"
            if code in IDENTITY_STATUS:
                if status not in (None, code):
                    raise InvalidResource(
                        "the Patient carries two identity statuses",
                        [(where, f"identity status {code} after {status}")],
                    )
                status = code
            elif code in IDENTITY_ATTRIBUTES:
                if code not in attributes:
                    attributes.append(code)
            else:
                raise InvalidResource(
                    f"identity reliability code {code!r} is unknown",
                    [(where, "codes come from HL7 France table 0445")],
                )
    return status, tuple(attributes)


def _codes(ext: dict[str, Any]) -> list[str]:
    """Every coding code in an extension and its sub-extensions."""
    codes = []
    coding = ext.get("valueCoding")
    if isinstance(coding, dict) and coding.get("code"):
        codes.append(str(coding["code"]).strip().upper())
    concept = ext.get("valueCodeableConcept")
    if isinstance(concept, dict):
        for item in concept.get("coding") or []:
            if isinstance(item, dict) and item.get("code"):
                codes.append(str(item["code"]).strip().upper())
    for sub in ext.get("extension") or []:
        if isinstance(sub, dict) and sub.get("url") in (
            "identityStatus",
            "identityReliability",
            "identityAttribute",
        ):
            codes.extend(_codes(sub))
    return codes


def _birth_place(data: dict[str, Any]) -> str | None:
    for ext in data.get("extension") or []:
        if not isinstance(ext, dict) or ext.get("url") != BIRTH_PLACE_URL:
            continue
        address = ext.get("valueAddress")
        if not isinstance(address, dict):
            return None
        for sub in address.get("extension") or []:
            if isinstance(sub, dict) and sub.get("url") == INSEE_CODE_URL:
                coding = sub.get("valueCoding")
                if isinstance(coding, dict) and coding.get("code"):
                    return str(coding["code"])[:128]
        text = address.get("text") or address.get("city")
        return str(text)[:128] if text else None
    return None
