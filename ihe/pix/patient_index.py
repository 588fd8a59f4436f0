"""The PIX Manager's cross-reference: linking identifiers from authoritative feeds.

Identifiers are linked only on authoritative evidence:

* one feed carries them together (an ADT with several PID-3 repetitions, a
  FHIR Patient with several identifiers); or
* they share an INS whose identity status is VALI or QUAL (a qualified
  national identity, checked against the INSi teleservice).

An INS with another status (PROV, RECUP) or on an identity marked fictitious
(FICT) or doubtful (DOUT) is kept on the patient as sent
(``Patient.ins_value``) but links nothing. A fictitious or doubtful identity
is never linked automatically at all: a feed that would add an identifier of
another domain to such a patient, or create one with identifiers from several
domains, is refused; joining such records takes an explicit merge. An INS
that links to a patient whose birth date or sex differs from the feed's is
refused as an identity collision. Names and birth dates never link two
records: two patients with the same name and birth date stay two patients.

A link made by an INS lasts as long as the INS is trusted. Each identifier
an INS joined to a patient (the feed shared nothing else with the patient)
is marked so in the history (``linked``, detail ``by INS``). When a feed
brings that INS back with a status that does not link (PROV, RECUP, FICT or
DOUT), the INS is unlinked and those identifiers are split off into a new
patient record with the same demographics, unless the feed itself carries
them (then the feed links them). The registrations of the first patient are
told (:func:`server.workflow.identity_changes.after_unlink`): their studies
found under a split identifier are flagged for identity review and not
retrieved.

A feed whose identifiers already belong to one patient updates that patient
and adds the new identifiers, unless its demographics disagree with the
index (name, birth date or sex, compared as identity vigilance compares
them): a correction of the patient's traits comes alone, then the new
identifier. A feed whose identifiers belong to two
different patients is refused: joining them is a merge, which needs an
explicit merge message.

A merge (ITI-8/ITI-30 A40, :func:`merge`) moves the absorbed patient's
identifiers and registrations to the survivor and leaves the absorbed patient
inactive; a self-merge and the inverse of a merge already made are refused,
and a merge sent again changes nothing. An identifier change (A47,
:func:`change_identifier`) renames one identifier within its domain. Every
merge, link and change is written to the patient's history.

Limitations
-----------
A merge cannot be undone (no A37 unlink), and a merge of two identifiers that
a feed already linked to one patient is refused rather than taken as done. An
explicit merge (A40) is trusted even for a fictitious or doubtful identity:
it is a human decision at the sending system.
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
from server.models import (
    Patient,
    PatientHistory,
    PatientIdentifier,
    Registration,
    new_id,
)

logger = logging.getLogger(__name__)

LOG_PATIENT_CREATED = "patient created in the index"
LOG_PATIENT_UPDATED = "patient updated in the index"
LOG_PATIENTS_MERGED = "patients merged in the index"
LOG_IDENTIFIER_CHANGED = "patient identifier changed in the index"
LOG_INS_HELD = "INS kept without linking"
LOG_INS_UNLINKED = "INS no longer trusted: identifiers it linked split off"
LINKED_BY_INS = "by INS"
# The demographic columns a patient split off takes from the one it leaves.
TRAITS = (
    "family_name",
    "given_names",
    "birth_family_name",
    "birth_date",
    "sex",
    "birth_place",
    "family_fold",
    "birth_family_fold",
    "given_fold",
)
# RNIV identity statuses under which an INS links records (qualified identity).
TRUSTED_INS_STATUSES = frozenset({"VALI", "QUAL"})
UNLINKABLE_ATTRIBUTES = frozenset({"FICT", "DOUT"})


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
    survivor.history.append(PatientHistory(kind="merged", other_patient_id=absorbed.id))
    absorbed.history.append(
        PatientHistory(kind="absorbed", other_patient_id=survivor.id)
    )
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
    patient.history.append(
        PatientHistory(
            kind="identifier-changed",
            system=old.system,
            old_value=old.value,
            new_value=new.value,
        )
    )
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
        The identifiers belong to different patients, `patient_id` names a
        patient other than the one the identifiers belong to or a merged
        patient, a new identifier would be linked to a patient whose
        demographics the feed changes, a fictitious or
        doubtful identity would be linked, or the INS collides with a patient
        of another birth date or sex.
    """
    _check_one_per_domain(record)
    linking = linking_identifiers(record)
    # A feed carrying only an INS that no longer links (status downgraded)
    # is about the patient it was linked on while trusted: that patient is
    # updated and the link undone. With any other identifier, an untrusted
    # INS never finds a patient.
    lookup = linking or list(record.identifiers)
    owners = {p.id: p for i in lookup if (p := find_patient(session, i))}
    if patient_id is not None:
        existing = session.get(Patient, patient_id)
        if existing is not None and existing.merged_into:
            raise IdentityError(
                f"Patient/{patient_id} was merged into Patient/{existing.merged_into}:"
                " update the surviving patient"
            )
        if existing is not None:
            owners.setdefault(existing.id, existing)
    if len(owners) > 1:
        raise IdentityError(
            "these identifiers belong to different patients; joining them is a merge"
        )
    patient = next(iter(owners.values()), None)
    if patient is not None:
        patient = _undo_ins_links(session, patient, record) or patient
    _check_ins_collision(session, record, linking)
    _check_unlinkable(record, linking, patient)
    created = patient is None
    if patient is None:
        # The id is set now, so that what is logged before the flush names it.
        patient = Patient(id=patient_id or new_id())
        session.add(patient)
        patient.history.append(PatientHistory(kind="created"))
    elif patient_id is not None and patient.id != patient_id:
        raise IdentityError(
            f"these identifiers belong to Patient/{patient.id}, "
            f"not Patient/{patient_id}"
        )
    else:
        patient.version += 1
    _apply(patient, record, resource, linking, created=created)
    session.flush()
    logger.info(
        LOG_PATIENT_CREATED if created else LOG_PATIENT_UPDATED,
        extra={"patient": patient.id},
    )
    return FeedResult(patient, created)


def linking_identifiers(record: PatientRecord) -> list[Identifier]:
    """The identifiers of `record` that may link it to other records.

    Local identifiers always do (the feed carries them together); an INS
    does only under a trusted status and on an identity that is neither
    fictitious nor doubtful.
    """
    return [i for i in record.identifiers if not i.is_ins or ins_links(record)]


def ins_links(record: PatientRecord) -> bool:
    """True when the record's INS may link patients (VALI or QUAL, no FICT/DOUT)."""
    attributes = set(record.identity_attributes or ())
    return (
        record.identity_status in TRUSTED_INS_STATUSES
        and not attributes & UNLINKABLE_ATTRIBUTES
    )


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


def _check_ins_collision(
    session: Session, record: PatientRecord, linking: list[Identifier]
) -> None:
    """Refuse an INS link to a patient whose birth date or sex differs."""
    for ident in linking:
        if not ident.is_ins:
            continue
        holder = find_patient(session, ident)
        if holder is None:
            continue
        if (
            record.birth_date is not None
            and holder.birth_date is not None
            and record.birth_date != holder.birth_date
        ) or (
            record.sex in {"M", "F"}
            and holder.sex in {"M", "F"}
            and record.sex != holder.sex
        ):
            raise IdentityError(
                "the INS belongs to a patient of another birth date or sex: "
                "identity collision, nothing was linked"
            )


def _check_unlinkable(
    record: PatientRecord, linking: list[Identifier], patient: Patient | None
) -> None:
    """A fictitious or doubtful identity never joins identifiers of two domains."""
    attributes = set(record.identity_attributes or ())
    doubtful = bool(attributes & UNLINKABLE_ATTRIBUTES) or (
        patient is not None and patient.fictitious_or_doubtful
    )
    if not doubtful:
        return
    domains = {i.system for i in linking}
    if patient is not None:
        domains |= {i.system for i in patient.identifiers}
    if len(domains) > 1:
        raise IdentityError(
            "a fictitious or doubtful identity is not linked automatically: "
            "send each domain's identifier on its own and merge once checked"
        )


def _apply(
    patient: Patient,
    record: PatientRecord,
    resource: dict[str, object],
    linking: list[Identifier],
    *,
    created: bool,
) -> None:
    if not created:
        _check_demographics_for_links(patient, record, linking)
    # A trait the feed leaves out (an empty HL7 field, a partial FHIR date)
    # keeps its value: vigilance needs it, and an update that does not send a
    # trait does not say it is unknown.
    patient.family_name = record.family or patient.family_name
    patient.given_names = " ".join(record.given) or patient.given_names
    patient.birth_family_name = record.birth_family or patient.birth_family_name
    patient.birth_date = record.birth_date or patient.birth_date
    patient.sex = record.sex or patient.sex
    patient.birth_place = record.birth_place or patient.birth_place
    patient.family_fold = fold_name(patient.family_name)
    patient.birth_family_fold = fold_name(patient.birth_family_name)
    patient.given_fold = fold_name(patient.given_names)
    if record.identity_status is not None:
        patient.ins_status = record.identity_status
    if record.identity_attributes is not None:
        patient.identity_attributes = list(record.identity_attributes)
    _keep_ins(patient, record)
    known = {(i.system, i.value) for i in patient.identifiers}
    shared = [i for i in linking if (i.system, i.value) in known]
    by_ins = bool(shared) and all(i.is_ins for i in shared)
    for ident in linking:
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
            if not created:
                patient.history.append(
                    PatientHistory(
                        kind="linked",
                        system=ident.system,
                        new_value=ident.value,
                        detail=LINKED_BY_INS if by_ins and not ident.is_ins else None,
                    )
                )
    patient.resource = resource


def _check_demographics_for_links(
    patient: Patient, record: PatientRecord, linking: list[Identifier]
) -> None:
    """Refuse a feed that links a new local identifier to `patient` while its
    demographics disagree with the index (see :mod:`server.workflow.vigilance`).

    Such a feed is either another person's record carrying a wrong
    identifier, or a correction of the patient's identity: the second must
    come alone first, so that no identifier is linked on traits that were
    just rewritten.
    """
    held = {(i.system, i.value) for i in patient.identifiers}
    new = [i for i in linking if not i.is_ins and (i.system, i.value) not in held]
    if not new:
        return
    from server.workflow.vigilance import disagreements

    name = "^".join([record.family or "", " ".join(record.given)]).strip("^")
    reasons = disagreements(
        patient,
        name=name or None,
        birth_date=record.birth_date.strftime("%Y%m%d") if record.birth_date else None,
        sex=record.sex,
    )
    if reasons:
        raise IdentityError(
            "a new identifier is not linked to a patient whose demographics this "
            f"feed changes ({'; '.join(reasons)}): send the correction alone first"
        )


def _undo_ins_links(
    session: Session, patient: Patient, record: PatientRecord
) -> Patient | None:
    """Split off what a no longer trusted INS linked; the patient the feed is
    about afterwards when that changed, else None.

    Runs when `record` carries, with a status that does not link, the INS
    `patient` holds linked. Each identifier the INS joined to `patient` goes
    to a new patient of its own, except those the feed carries together with
    one of the patient's other identifiers (the feed links them). Those the
    feed carries without any other identifier of the patient go to one new
    patient together, which the feed then updates.
    """
    ins = next((i for i in record.identifiers if i.is_ins), None)
    if ins is None or ins_links(record):
        return None
    if not any(
        (r.system, r.value) == (ins.system, ins.value) for r in patient.identifiers
    ):
        return None
    by_ins: set[tuple[str | None, str | None]] = set()
    for h in sorted(patient.history, key=lambda h: (h.at, h.id or 0)):
        if h.kind == "linked" and h.detail == LINKED_BY_INS:
            by_ins.add((h.system, h.new_value))
        elif h.kind == "identifier-changed" and (h.system, h.old_value) in by_ins:
            # Renamed since (A47): the link is the same.
            by_ins.add((h.system, h.new_value))
    # The INS leaves the patient whichever record the feed is about.
    for row in list(patient.identifiers):
        if row.system == ins.system:
            patient.identifiers.remove(row)
    rows = [r for r in patient.identifiers if (r.system, r.value) in by_ins]
    sent = {(i.system, i.value) for i in record.identifiers if not i.is_ins}
    held = {(r.system, r.value) for r in patient.identifiers}
    if sent & (held - by_ins):
        rows = [r for r in rows if (r.system, r.value) not in sent]
    if not rows:
        return None
    groups: list[list[PatientIdentifier]] = []
    together = [r for r in rows if (r.system, r.value) in sent]
    if together:
        groups.append(together)
    groups += [[r] for r in rows if (r.system, r.value) not in sent]
    split: list[Identifier] = []
    target = None
    for group in groups:
        other = _split_off(session, patient, group)
        split += [Identifier(r.system, r.value) for r in group]
        if group is together:
            target = other
    session.flush()
    from server.workflow import identity_changes

    identity_changes.after_unlink(session, patient.id, split)
    logger.warning(
        LOG_INS_UNLINKED,
        extra={"patient": patient.id, "patients_created": len(groups)},
    )
    return target


def _split_off(
    session: Session, patient: Patient, rows: list[PatientIdentifier]
) -> Patient:
    """A new patient with `patient`'s demographics holding `rows`."""
    other = Patient(id=new_id(), **{t: getattr(patient, t) for t in TRAITS})
    from server.workflow.registrations import stamp

    # The first patient's resource as fed, less what is its own; each read
    # adds the identifiers the index holds.
    kept = {
        k: v
        for k, v in (patient.resource or {}).items()
        if k not in ("id", "meta", "identifier", "link")
    }
    other.resource = stamp({**kept, "resourceType": "Patient"}, other.id, 1)
    session.add(other)
    other.history.append(
        PatientHistory(
            kind="created",
            other_patient_id=patient.id,
            detail="split off: the INS that linked it is no longer trusted",
        )
    )
    for row in rows:
        # The row itself moves: one identifier, never deleted and re-inserted.
        patient.identifiers.remove(row)
        other.identifiers.append(row)
        patient.history.append(
            PatientHistory(
                kind="unlinked",
                system=row.system,
                old_value=row.value,
                other_patient_id=other.id,
                detail="the INS that linked it is no longer trusted",
            )
        )
    return other


def _keep_ins(patient: Patient, record: PatientRecord) -> None:
    """Keep the INS as sent; unlink a linked INS whose status is no longer trusted."""
    ins = next((i for i in record.identifiers if i.is_ins), None)
    if ins is None:
        return
    patient.ins_system, patient.ins_value = ins.system, ins.value
    if ins_links(record):
        return
    for row in list(patient.identifiers):
        if row.system == ins.system:
            patient.identifiers.remove(row)
    patient.history.append(
        PatientHistory(
            kind="ins-held",
            system=ins.system,
            detail=f"status {record.identity_status or 'none'}"
            + (
                f", attributes {','.join(record.identity_attributes)}"
                if record.identity_attributes
                else ""
            ),
        )
    )
    logger.info(LOG_INS_HELD, extra={"patient": patient.id})
