"""Identity changes reaching the work in flight: merges (A40), identifier changes (A47).

The patient index moves identifiers and registrations itself
(:mod:`ihe.pix.patient_index`). What depends on a site-local identifier
outside the index is brought in line here, in the same transaction:

* candidate studies recorded under the old identifier at a site of that
  identifier's domain now carry the identifier the index holds;
* the cache index (``cached_instance.patient_id``) of instances received from
  such a site follows too, so the console's C-FIND by patient finds them;
* after a merge, the survivor's open registrations are queried again: the
  survivor may now have identifiers at sites that were never asked. Queued
  and running retrieves carry on, since they name studies, not patients, and
  their registrations already belong to the survivor.

When an INS that linked a patient's identifiers stops being trusted, the
patient index splits them off (:mod:`ihe.pix.patient_index`);
:func:`after_unlink` then flags, in the first patient's registrations, every
candidate study found under a split identifier: it gets an identity warning,
leaves the selection and loses its retrieve if that has not started, and
waits for a person's review like any other flagged study.

Limitations
-----------
Files in the cache keep the Patient ID they were received with (the cache
stores instances exactly as sent); only the index answering queries changes.
A registration whose discovery is running when the merge arrives is not
queried again automatically; its coordinator can ask for a retry. Studies of
a split identifier already in the cache stay there (flagged on the case).
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mappings.identifiers import Identifier
from server.config import Settings
from server.models import (
    CachedInstance,
    Candidate,
    Patient,
    Registration,
    SiteRecord,
    utcnow,
)
from server.workflow import vigilance

logger = logging.getLogger(__name__)

LOG_WORK_UPDATED = "identity change applied to work in flight"
FINISHED_STATUSES = frozenset({"cancelled", "fulfilled", "noshow", "entered-in-error"})


def after_merge(
    session: Session, settings: Settings, survivor: Patient, absorbed_id: str
) -> dict[str, int]:
    """Bring candidates, the cache index and discovery in line with a merge.

    Returns the counts of rows changed, for the log and the tests.
    """
    counts = {"candidates": 0, "cached_instances": 0, "rediscover": 0}
    for row in list(survivor.identifiers):
        if row.merged_from != absorbed_id:
            continue
        current = survivor.identifier_in(row.system)
        if current is None or current == row.value:
            continue
        moved = _relabel(
            session,
            settings,
            Identifier(row.system, row.value),
            current,
            survivor.id,
        )
        counts["candidates"] += moved[0]
        counts["cached_instances"] += moved[1]
    counts["rediscover"] = _rediscover(session, survivor.id)
    logger.info(LOG_WORK_UPDATED, extra={"patient": survivor.id, **counts})
    return counts


def after_identifier_change(
    session: Session, settings: Settings, patient: Patient, old: Identifier, new: str
) -> dict[str, int]:
    """Bring candidates and the cache index in line with an A47 change."""
    candidates, instances = _relabel(session, settings, old, new, patient.id)
    counts = {"candidates": candidates, "cached_instances": instances}
    logger.info(LOG_WORK_UPDATED, extra={"patient": patient.id, **counts})
    return counts


UNLINKED_WARNING = (
    "found under an identifier that an INS had linked to this patient; the INS "
    "is no longer trusted"
)


def after_unlink(
    session: Session, patient_id: str, identifiers: list[Identifier]
) -> int:
    """Flag the studies of `patient_id`'s registrations found under
    `identifiers`, which no longer belong to the patient; returns how many."""
    flagged = 0
    for ident in identifiers:
        sites = session.scalars(
            select(SiteRecord.name).where(SiteRecord.patient_id_domain == ident.system)
        ).all()
        if not sites:
            continue
        candidates = session.scalars(
            select(Candidate).where(
                Candidate.registration_id.in_(
                    select(Registration.id).where(Registration.patient_id == patient_id)
                ),
                Candidate.site_name.in_(sites),
                Candidate.patient_id_at_site == ident.value,
            )
        ).all()
        for candidate in candidates:
            vigilance.flag(candidate, UNLINKED_WARNING)
            # The identifier is another patient's now: out of this case's
            # selection even if its retrieve has started.
            if candidate.selected:
                candidate.selected, candidate.selected_by = False, "identity"
            flagged += 1
    logger.info(LOG_WORK_UPDATED, extra={"patient": patient_id, "flagged": flagged})
    return flagged


def _relabel(
    session: Session, settings: Settings, old: Identifier, new: str, patient_id: str
) -> tuple[int, int]:
    sites = [s for s in settings.directory.sites if s.patient_id_domain == old.system]
    if not sites:
        return 0, 0
    registrations = select(Registration.id).where(Registration.patient_id == patient_id)
    candidates = session.execute(
        update(Candidate)
        .where(
            Candidate.registration_id.in_(registrations),
            Candidate.site_name.in_([s.name for s in sites]),
            Candidate.patient_id_at_site == old.value,
        )
        .values(patient_id_at_site=new)
        .execution_options(synchronize_session="fetch")
    )
    instances = session.execute(
        update(CachedInstance)
        .where(
            CachedInstance.source_ae.in_([s.ae_title for s in sites]),
            CachedInstance.patient_id == old.value,
        )
        .values(patient_id=new)
        .execution_options(synchronize_session="fetch")
    )
    return (
        int(getattr(candidates, "rowcount", 0)),
        int(getattr(instances, "rowcount", 0)),
    )


def _rediscover(session: Session, patient_id: str) -> int:
    result = session.execute(
        update(Registration)
        .where(
            Registration.patient_id == patient_id,
            Registration.discovery.in_(["done", "failed"]),
            Registration.status.not_in(FINISHED_STATUSES),
            (Registration.meeting_start.is_(None))
            | (Registration.meeting_start > utcnow()),
        )
        .values(discovery="pending")
        .execution_options(synchronize_session="fetch")
    )
    return int(getattr(result, "rowcount", 0))
