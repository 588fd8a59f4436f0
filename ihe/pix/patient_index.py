"""The PIX Manager's cross-reference: linking identifiers from authoritative feeds.

Identifiers are linked only when one authoritative message carries them
together (a Patient identity feed with several identifiers). Names and birth
dates never link two records: two patients with the same name and birth date
stay two patients.

A feed whose identifiers already belong to one patient updates that patient
and adds the new identifiers. A feed whose identifiers belong to two
different patients is refused: joining them is a merge, which needs an
explicit merge message.

Limitations
-----------
No merge (ITI-8 A40) or identifier change (A47) yet, and the INS identity
status (PROV, RECUP, VALI, QUAL) is not read from the feed, so an INS links
only when it travels with a local identifier in the same message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from mappings.fhir_patient import PatientRecord
from mappings.identifiers import Identifier
from server.errors import IdentityError
from server.models import Patient, PatientIdentifier

logger = logging.getLogger(__name__)

LOG_PATIENT_CREATED = "patient created in the index"
LOG_PATIENT_UPDATED = "patient updated in the index"


@dataclass(frozen=True)
class FeedResult:
    """What a feed did: the patient, and whether it was new."""

    patient: Patient
    created: bool


def find_patient(session: Session, ident: Identifier) -> Patient | None:
    """The patient holding `ident` in its domain, if any."""
    row = session.scalar(
        select(PatientIdentifier).where(
            PatientIdentifier.system == ident.system,
            PatientIdentifier.value == ident.value,
        )
    )
    return row.patient if row is not None else None


def feed(
    session: Session,
    record: PatientRecord,
    resource: dict[str, object],
    patient_id: str | None = None,
) -> FeedResult:
    """Create or update a patient from an identity feed.

    Parameters
    ----------
    session : Session
        The caller commits.
    record : PatientRecord
        The mapped feed.
    resource : dict
        The FHIR Patient as received, kept for read-back.
    patient_id : str, optional
        The logical id when the client chose it (FHIR update-as-create).

    Raises
    ------
    IdentityError
        The identifiers belong to different patients, or `patient_id` names a
        patient other than the one the identifiers belong to.
    """
    _check_one_per_domain(record)
    owners = {p.id: p for i in record.identifiers if (p := find_patient(session, i))}
    if patient_id is not None:
        existing = session.get(Patient, patient_id)
        if existing is not None:
            owners.setdefault(existing.id, existing)
    if len(owners) > 1:
        raise IdentityError(
            "these identifiers belong to different patients; joining them is a merge"
        )
    patient = next(iter(owners.values()), None)
    created = patient is None
    if patient is None:
        patient = Patient(id=patient_id) if patient_id else Patient()
        session.add(patient)
    elif patient_id is not None and patient.id != patient_id:
        raise IdentityError(
            f"these identifiers belong to Patient/{patient.id}, "
            f"not Patient/{patient_id}"
        )
    else:
        patient.version += 1
    _apply(patient, record, resource)
    session.flush()
    logger.info(
        LOG_PATIENT_CREATED if created else LOG_PATIENT_UPDATED,
        extra={"patient": patient.id},
    )
    return FeedResult(patient, created)


def _check_one_per_domain(record: PatientRecord) -> None:
    seen: dict[str, str] = {}
    for ident in record.identifiers:
        if seen.get(ident.system, ident.value) != ident.value:
            raise IdentityError(
                f"two different identifiers in domain {ident.system} for one patient"
            )
        seen[ident.system] = ident.value


def _apply(
    patient: Patient, record: PatientRecord, resource: dict[str, object]
) -> None:
    patient.family_name = record.family
    patient.given_names = " ".join(record.given) or None
    patient.birth_family_name = record.birth_family
    patient.birth_date = record.birth_date
    patient.sex = record.sex
    known = {(i.system, i.value) for i in patient.identifiers}
    for ident in record.identifiers:
        if (
            ident.system in {i.system for i in patient.identifiers}
            and (ident.system, ident.value) not in known
        ):
            raise IdentityError(
                f"the patient already has another identifier in domain {ident.system}"
            )
        if (ident.system, ident.value) not in known:
            patient.identifiers.append(
                PatientIdentifier(
                    system=ident.system, value=ident.value, type_code=ident.type_code
                )
            )
    patient.resource = resource
