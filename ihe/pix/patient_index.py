"""The PIX Manager's cross-reference: linking identifiers from authoritative feeds.

Identifiers are linked only when one authoritative message carries them
together (a Patient identity feed with several identifiers). Names and birth
dates never link two records: two patients with the same name and birth date
stay two patients.

A feed whose identifiers already belong to one patient updates that patient
and adds the new identifiers. A feed whose identifiers belong to two
different patients is refused: joining them is a merge, which needs an
explicit merge message.

A merge (ITI-8/ITI-30 A40, :func:`merge`) moves the absorbed patient's
identifiers and registrations to the survivor and leaves the absorbed patient
inactive; a self-merge and the inverse of a merge already made are refused,
and a merge sent again changes nothing. An identifier change (A47,
:func:`change_identifier`) renames one identifier within its domain.

Limitations
-----------
A merge cannot be undone (no A37 unlink), and a merge of two identifiers that
a feed already linked to one patient is refused rather than taken as done. The
identity status and attributes (PID-32) are stored as sent; an INS still
links only when it travels with a local identifier in the same message, and
nothing yet refuses a merge of a fictitious or doubtful identity.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ihe.pdq.patient_search import fold_name
from mappings.fhir_patient import PatientRecord
from mappings.identifiers import Identifier
from server.errors import IdentityError, UnknownReference
from server.models import Patient, PatientIdentifier, Registration

logger = logging.getLogger(__name__)

LOG_PATIENT_CREATED = "patient created in the index"
LOG_PATIENT_UPDATED = "patient updated in the index"
LOG_PATIENTS_MERGED = "patients merged in the index"
LOG_IDENTIFIER_CHANGED = "patient identifier changed in the index"


@dataclass(frozen=True)
class FeedResult:
    """What a feed did: the patient, and whether it was new."""

    patient: Patient
    created: bool


@dataclass(frozen=True)
class MergeResult:
    """What a merge did: the survivor, and the absorbed patient if merged now."""

    survivor: Patient
    absorbed: Patient | None


def find_patient(session: Session, ident: Identifier) -> Patient | None:
    """The patient holding `ident` in its domain, if any."""
    row = _row(session, ident)
    return row.patient if row is not None else None


def resolve(session: Session, identifiers: Iterable[Identifier]) -> Patient | None:
    """The one patient holding any of `identifiers`; None when none does.

    Raises
    ------
    IdentityError
        The identifiers belong to different patients.
    """
    owners = {p.id: p for i in identifiers if (p := find_patient(session, i))}
    if len(owners) > 1:
        raise IdentityError("these identifiers belong to different patients")
    return next(iter(owners.values()), None)


def merge(
    session: Session, survivor_ident: Identifier, absorbed_ident: Identifier
) -> MergeResult:
    """Merge the patient holding `absorbed_ident` into the one holding `survivor_ident`.

    The absorbed patient's identifiers move to the survivor (each remembering
    its origin), its registrations follow, and it is left inactive. A merge
    already made is not made again: ``absorbed`` is then None.

    Raises
    ------
    IdentityError
        A self-merge, the inverse of a merge already made, or two
        identifiers that already belong to one patient.
    UnknownReference
        Either identifier is unknown to the index.
    """
    if _key(survivor_ident) == _key(absorbed_ident):
        raise IdentityError("a patient cannot be merged into itself")
    survivor_row, absorbed_row = (
        _row(session, survivor_ident),
        _row(session, absorbed_ident),
    )
    if absorbed_row is None or survivor_row is None:
        raise UnknownReference("the patients to merge are not both in the index")
    survivor, absorbed = survivor_row.patient, absorbed_row.patient
    if survivor.id == absorbed.id:
        if absorbed_row.merged_from is not None:
            return MergeResult(survivor, None)
        if survivor_row.merged_from is not None:
            raise IdentityError("this merge is the inverse of a merge already made")
        raise IdentityError("both identifiers already belong to one patient")
    for ident in list(absorbed.identifiers):
        ident.merged_from = ident.merged_from or absorbed.id
        ident.patient = survivor
    session.execute(
        update(Registration)
        .where(Registration.patient_id == absorbed.id)
        .values(patient_id=survivor.id)
    )
    absorbed.active = False
    absorbed.merged_into = survivor.id
    absorbed.version += 1
    survivor.version += 1
    session.flush()
    logger.info(
        LOG_PATIENTS_MERGED, extra={"patient": survivor.id, "absorbed": absorbed.id}
    )
    return MergeResult(survivor, absorbed)


def change_identifier(session: Session, old: Identifier, new: Identifier) -> Patient:
    """Replace identifier `old` of a patient by `new`, in the same domain (A47).

    Raises
    ------
    UnknownReference
        `old` is not in the index.
    IdentityError
        `new` is in another domain, or already belongs to another patient.
    """
    row = _row(session, old)
    if row is None:
        raise UnknownReference("the identifier to change is not in the index")
    if new.system != old.system:
        raise IdentityError("an identifier can only change within its domain")
    patient = row.patient
    taken = _row(session, new)
    if taken is not None and taken.id != row.id:
        if taken.patient_id != row.patient_id:
            raise IdentityError("the new identifier belongs to another patient")
        session.delete(row)
    else:
        row.value = new.value
        row.type_code = new.type_code or row.type_code
    patient.version += 1
    session.flush()
    logger.info(LOG_IDENTIFIER_CHANGED, extra={"patient": patient.id})
    return patient


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


def _row(session: Session, ident: Identifier) -> PatientIdentifier | None:
    return session.scalar(
        select(PatientIdentifier).where(
            PatientIdentifier.system == ident.system,
            PatientIdentifier.value == ident.value,
        )
    )


def _key(ident: Identifier) -> tuple[str, str]:
    return ident.system, ident.value


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
    patient.birth_place = record.birth_place or patient.birth_place
    patient.family_fold = fold_name(record.family)
    patient.birth_family_fold = fold_name(record.birth_family)
    patient.given_fold = fold_name(" ".join(record.given))
    if record.identity_status is not None:
        patient.ins_status = record.identity_status
    if record.identity_attributes is not None:
        patient.identity_attributes = list(record.identity_attributes)
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
