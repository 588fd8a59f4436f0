"""Prefetch: retrieve one selected study into the cache and prove it complete.

When a retrieve starts, the site is asked for the study's series and their
instance counts (a SERIES-level C-FIND, :func:`query_series`, or a QIDO-RS
series search for a site queried over DICOMweb), kept as ``prefetch_series``
rows. The study is ``ready`` only when the cache holds, for every series, at
least as many instances as the site announced. A site that does not answer
that query falls back to the study's count: NumberOfStudyRelatedInstances
from discovery, or the C-MOVE's completed counter when the site gave no
count. Whatever the site's final status says, the count in the cache decides.

Only what is missing is asked for, so nothing the cache holds is fetched
again: with nothing of the study cached, the whole study (STUDY level);
otherwise each series of which nothing is cached whole (SERIES level), and
for each partly cached series the site's SOP Instance UIDs of it (an
IMAGE-level C-FIND, :func:`query_instances`, or a QIDO-RS instance search)
less those the cache holds (IMAGE level for C-MOVE and C-GET, one WADO-RS
request per instance). A site that does not answer the series query at all
is not asked for the study either: the attempt ends as an aborted
association and is retried.

Before contacting a site the worker checks its maintenance windows (a
retrieve due inside one waits for the window's end) and takes one of the
site's association slots (:mod:`server.workflow.site_slots`), shared by every
worker on every host; with all slots in use the prefetch waits
:data:`WAIT_FOR_SLOT_SECONDS` and is tried again. While it runs, the worker
renews its lease on the prefetch; if the worker dies the lease expires and
the dispatcher hands the prefetch to another worker
(:func:`requeue_abandoned`), which asks only for what is still missing.

A study of several series retrieved by C-MOVE is shared out over several
associations at once (:func:`~server.workflow.transports.retrieve_split`):
as many as it has series to ask for, at most ``SPIDERS_RETRIEVE_PARALLEL``,
and only as many as the site has slots free at that moment besides the one
held (:func:`~server.workflow.site_slots.spare`); with none free, one
association asks for everything, as it would for a single series. The
further slots are released when the retrieve ends. The completeness proof
and the retries do not change: the cache's count decides. ``spiders
retrieve`` runs the same retrieve (:func:`retrieve_now`) outside any
prefetch, taking only the slots free at that moment.

Failures that may pass (aborted association, a site unable to process, some
sub-operations failed) are retried with exponential backoff from
``SPIDERS_RETRY_BASE_SECONDS`` (20 s, then 40 s), up to :data:`MAX_ATTEMPTS`;
a site that does not know our AE title (0xA801) is reported at once and not
retried, since only its administrator can fix it.

Limitations
-----------
Completeness is judged by count, series by series, not by SOP Instance UID.
A site that cannot list its series with their counts gets the whole study
asked for again on a retry, and instances already cached are received again
and replace their copy. A partly cached series is asked for whole when the
site cannot list its instances (no IMAGE-level C-FIND, a failed search) or
lists fewer than it counts (a capped answer). Instance lists are not paged:
a QIDO-RS service that truncates its answer falls in the last case. A site
that files two patients' instances under one Study Instance UID is not
detected as such: the cache keeps only the patient asked for, and the study
ends partial with the site's failure status rather than an identity flag.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased

from ihe.dicom.archive import Archive
from ihe.dicomweb.rad129_qido_rs_query import (
    search_for_instances,
    search_for_series,
)
from ihe.qr.rad14_query_images import query_instances, query_series
from ihe.qr.rad16_retrieve_images import MoveOutcome
from server import audit
from server.config import Settings, Site
from server.db import Database
from server.errors import AssociationFailed, ConfigurationError, SpidersError
from server.models import (
    CachedInstance,
    Candidate,
    PatientIdentifier,
    Prefetch,
    PrefetchSeries,
    PrefetchState,
    Registration,
    SiteRecord,
    utcnow,
)
from server.peers import site_call, site_endpoint
from server.workflow import site_slots, transports
from server.workflow.site_slots import worker_id
from server.workflow.vigilance import UID_COLLISION, flag, needs_review

logger = logging.getLogger(__name__)

LOG_NOT_FETCHED = "prefetch stopped: study deselected or awaiting identity review"
LOG_UID_COLLISION = "prefetch stopped: Study Instance UID held for another patient"

LOG_PREFETCH_DONE = "prefetch finished"
LOG_DEFERRED = "prefetch deferred"
LOG_LEASE_LOST = "prefetch taken over by another worker; result not recorded"
LOG_RESUMED = "prefetches of a stopped worker sent again"
LOG_NO_SERIES = "series counts unavailable, the study count decides"
LOG_NO_INSTANCES = "instance list unavailable, the series is asked whole"
LOG_ASKED = "prefetch asks for what is missing"
MAX_ATTEMPTS = 3
RETRY_BASE_SECONDS = 20
RETRYABLE = frozenset({"association_aborted", "unable_to_process", "partial"})
WAIT_FOR_TWIN_SECONDS = 5
WAIT_FOR_SLOT_SECONDS = 3
# A site whose windows never end is tried again after this long.
MAINTENANCE_HORIZON = timedelta(days=8)


def claim(db: Database, prefetch_id: str, lease_seconds: float = 60) -> bool:
    """Move a queued prefetch to running; False if another worker has it.

    The prefetch is leased to this worker for `lease_seconds`, renewed while
    the retrieve runs. A study already being retrieved for another
    registration is not asked for twice at once: this prefetch goes back to
    ``scheduled`` for :data:`WAIT_FOR_TWIN_SECONDS`, and then usually finds
    the study cached.
    """
    twin = aliased(Prefetch)
    running_twin = (
        select(twin.id)
        .where(
            twin.study_uid == Prefetch.study_uid,
            twin.state == PrefetchState.RUNNING,
            twin.id != Prefetch.id,
        )
        .exists()
    )
    now = utcnow()
    with db.session() as session:
        result = session.execute(
            update(Prefetch)
            .where(
                Prefetch.id == prefetch_id,
                Prefetch.state == PrefetchState.QUEUED,
                ~running_twin,
            )
            .values(
                state=PrefetchState.RUNNING,
                started_at=now,
                attempts=Prefetch.attempts + 1,
                worker=worker_id(),
                lease_expires_at=now + timedelta(seconds=lease_seconds),
            )
        )
        if getattr(result, "rowcount", 0):
            return True
        session.execute(
            update(Prefetch)
            .where(Prefetch.id == prefetch_id, Prefetch.state == PrefetchState.QUEUED)
            .values(
                state=PrefetchState.SCHEDULED,
                due_at=now + timedelta(seconds=WAIT_FOR_TWIN_SECONDS),
                reason="the study is being retrieved for another case",
            )
        )
        return False


def run(settings: Settings, db: Database, archive: Archive, prefetch_id: str) -> str:
    """Retrieve the study of a claimed prefetch; returns the state it ends in."""
    with db.session() as session:
        prefetch = session.get(Prefetch, prefetch_id)
        if prefetch is None:
            return "missing"
        site_name, study_uid = prefetch.site_name, prefetch.study_uid
        expected = prefetch.expected_instances
        known = {s.series_uid: s.expected for s in prefetch.series}
        stopped = _not_to_fetch(session, prefetch)
        if stopped is not None:
            return stopped
    if _already_cached(db, study_uid, expected, known):
        # Cached for another case, or by an earlier attempt.
        outcome = MoveOutcome("success", error_comment="already in the cache")
        return _finish(db, prefetch_id, outcome, settings.retry_base_seconds)
    try:
        site = settings.directory.site(site_name)
    except ConfigurationError as exc:
        outcome = MoveOutcome("unable_to_process", error_comment=str(exc))
        return _finish(db, prefetch_id, outcome, settings.retry_base_seconds)
    now = utcnow()
    if site.in_maintenance(now):
        until = maintenance_end(site, now)
        reason = (
            f"site {site.name} is in a maintenance window until "
            f"{until.isoformat(timespec='minutes')}"
        )
        return defer(db, prefetch_id, until, reason)
    seconds = settings.worker_lease_seconds
    lease = site_slots.acquire(
        db, site.name, site.max_associations, seconds=seconds, prefetch_id=prefetch_id
    )
    if lease is None:
        reason = (
            f"all {site.max_associations} association(s) with site {site.name} "
            "are in use; waiting for one"
        )
        return defer(
            db, prefetch_id, now + timedelta(seconds=WAIT_FOR_SLOT_SECONDS), reason
        )
    renewals = [
        lambda: site_slots.renew(db, lease, seconds),
        lambda: renew(db, prefetch_id, seconds),
    ]
    try:
        with site_slots.kept_alive(renewals, interval=seconds / 3):
            outcome = _fetch(settings, db, archive, site, prefetch_id, study_uid)
    finally:
        site_slots.release(db, lease)
    return _finish(db, prefetch_id, outcome, settings.retry_base_seconds)


def _not_to_fetch(session: Session, prefetch: Prefetch) -> str | None:
    """Stop a prefetch whose study must not be fetched; the state it ends in.

    Its candidate was deselected or flagged for identity review since it was
    scheduled (a retry included); or the Study Instance UID is held in the
    cache, or asked for by another case, for another patient: the same UID
    under two patients is a data error at a site, and the study is flagged
    for a person to decide.
    """
    candidate = prefetch.candidate
    if candidate is None:
        return None
    if not candidate.selected or needs_review(candidate):
        logger.info(LOG_NOT_FETCHED, extra={"prefetch": prefetch.id})
        return _stop(
            prefetch,
            PrefetchState.CANCELLED,
            "not retrieved: deselected or awaiting identity review",
        )
    registration = candidate.registration
    if registration is None or not _shared_with_another_patient(
        session, prefetch, registration.patient_id
    ):
        return None
    candidate.warning, candidate.review = UID_COLLISION, None
    candidate.selected, candidate.selected_by = False, "identity"
    for other in _other_patients_candidates(
        session, prefetch.study_uid, registration.patient_id
    ):
        flag(other, UID_COLLISION)
    logger.warning(LOG_UID_COLLISION, extra={"prefetch": prefetch.id})
    return _stop(prefetch, PrefetchState.FAILED, UID_COLLISION)


def _stop(prefetch: Prefetch, state: PrefetchState, reason: str) -> str:
    """End the claimed `prefetch` before asking the site anything."""
    prefetch.state, prefetch.reason = state, reason
    prefetch.finished_at = utcnow()
    prefetch.lease_expires_at = None
    return str(state)


def _shared_with_another_patient(
    session: Session, prefetch: Prefetch, patient_id: str
) -> bool:
    """True when the cache holds `prefetch`'s study for another patient, or
    another active prefetch asks for it for another patient."""
    others = session.execute(
        select(Registration.patient_id)
        .join(Prefetch, Prefetch.registration_id == Registration.id)
        .where(
            Prefetch.study_uid == prefetch.study_uid,
            Prefetch.id != prefetch.id,
            Prefetch.state.in_(
                [
                    PrefetchState.SCHEDULED,
                    PrefetchState.QUEUED,
                    PrefetchState.RUNNING,
                    PrefetchState.READY,
                ]
            ),
            Registration.patient_id != patient_id,
        )
        .limit(1)
    ).first()
    if others is not None:
        return True
    held = session.execute(
        select(CachedInstance.source_ae, CachedInstance.patient_id)
        .where(CachedInstance.study_uid == prefetch.study_uid)
        .distinct()
    ).all()
    for source_ae, local_id in held:
        local = (local_id or "").strip()
        if not local:
            continue  # no patient named: no evidence either way
        domains = session.scalars(
            select(SiteRecord.patient_id_domain).where(SiteRecord.ae_title == source_ae)
        ).all()
        if not domains:
            # Not from a known site: judged by the identifier alone.
            if local != (prefetch.candidate.patient_id_at_site or "").strip():
                return True
            continue
        owner = session.scalar(
            select(PatientIdentifier.patient_id).where(
                PatientIdentifier.system.in_(domains),
                PatientIdentifier.value == local,
            )
        )
        if owner != patient_id:
            return True
    return False


def _other_patients_candidates(
    session: Session, study_uid: str, patient_id: str
) -> Sequence[Candidate]:
    """The other patients' candidates of `study_uid` not flagged yet, to be
    told of the collision."""
    return session.scalars(
        select(Candidate)
        .join(Registration, Registration.id == Candidate.registration_id)
        .where(
            Candidate.study_uid == study_uid,
            Registration.patient_id != patient_id,
            Candidate.warning.is_(None),
        )
    ).all()


def conclude(
    prefetch: Prefetch,
    outcome: MoveOutcome,
    received: int,
    retry_base: float = RETRY_BASE_SECONDS,
) -> str:
    """Set the prefetch's state from the site's outcome and the cache's counts.

    With series counts from the site, every series must be complete; without,
    the study's count decides. A retry waits `retry_base` seconds after the
    first attempt, twice as long after each further one.
    """
    series = list(prefetch.series)
    if series:
        expected: int | None = sum(s.expected for s in series)
        prefetch.expected_instances = expected
        complete = all(s.complete for s in series)
    else:
        expected = prefetch.expected_instances
        if expected is None and outcome.completed:
            expected = prefetch.expected_instances = outcome.completed
        complete = expected is not None and received >= expected
    prefetch.received_instances = received
    prefetch.dimse_status = outcome.status
    prefetch.finished_at = utcnow()
    prefetch.lease_expires_at = None
    if complete and expected:
        prefetch.state, prefetch.reason = PrefetchState.READY, None
    elif outcome.outcome in RETRYABLE and prefetch.attempts < MAX_ATTEMPTS:
        delay = retry_base * 2 ** (prefetch.attempts - 1)
        prefetch.state = PrefetchState.SCHEDULED
        prefetch.due_at = utcnow() + timedelta(seconds=delay)
        prefetch.reason = (
            f"retry {prefetch.attempts + 1} in {delay:g} s: {outcome.reason}"
        )
    else:
        prefetch.state = PrefetchState.PARTIAL if received else PrefetchState.FAILED
        prefetch.reason = _reason(outcome, received, expected, series)
    return str(prefetch.state)


def incomplete_series(
    expected: Mapping[str, int], held: Mapping[str, int]
) -> list[str]:
    """The series of which the cache holds fewer instances than the site."""
    return sorted(uid for uid, count in expected.items() if held.get(uid, 0) < count)


def held_by_series(db: Database, study_uid: str) -> dict[str, int]:
    """How many instances of each series of `study_uid` the cache holds."""
    with db.session() as session:
        rows = session.execute(
            select(CachedInstance.series_uid, func.count())
            .where(CachedInstance.study_uid == study_uid)
            .group_by(CachedInstance.series_uid)
        ).all()
    return {str(uid): int(count) for uid, count in rows}


def maintenance_end(site: Site, moment: datetime) -> datetime:
    """The first minute after `moment` that no maintenance window of `site` covers.

    Windows are set to the minute, so minutes are stepped through; a site
    covered for longer than :data:`MAINTENANCE_HORIZON` is tried again then.
    """
    start = moment.replace(second=0, microsecond=0)
    step = timedelta(minutes=1)
    at = start + step
    while at - start < MAINTENANCE_HORIZON:
        if not site.in_maintenance(at):
            return at
        at += step
    return at


def defer(db: Database, prefetch_id: str, until: datetime, reason: str) -> str:
    """Put a running prefetch back to ``scheduled`` until `until`, without
    counting an attempt: the site was not asked anything."""
    with db.session() as session:
        session.execute(
            update(Prefetch)
            .where(Prefetch.id == prefetch_id, Prefetch.state == PrefetchState.RUNNING)
            .values(
                state=PrefetchState.SCHEDULED,
                due_at=until,
                reason=reason,
                attempts=Prefetch.attempts - 1,
                started_at=None,
                worker=None,
                lease_expires_at=None,
            )
        )
    logger.info(LOG_DEFERRED, extra={"prefetch": prefetch_id, "until": until})
    return str(PrefetchState.SCHEDULED)


def renew(db: Database, prefetch_id: str, seconds: float) -> bool:
    """Extend this worker's lease on a running prefetch; False if not ours."""
    with db.session() as session:
        result = session.execute(
            update(Prefetch)
            .where(
                Prefetch.id == prefetch_id,
                Prefetch.state == PrefetchState.RUNNING,
                Prefetch.worker == worker_id(),
            )
            .values(lease_expires_at=utcnow() + timedelta(seconds=seconds))
        )
        return bool(getattr(result, "rowcount", 0))


def requeue_abandoned(db: Database, now: datetime | None = None) -> list[str]:
    """Hand back to the queue the running prefetches whose lease expired.

    Their worker stopped renewing (it died or lost the database); each is
    moved to ``queued`` by a guarded UPDATE, so one dispatcher only sends it.
    """
    now = now or utcnow()
    expired = (
        Prefetch.state == PrefetchState.RUNNING,
        Prefetch.lease_expires_at.is_not(None),
        Prefetch.lease_expires_at < now,
    )
    with db.session() as session:
        candidates = session.scalars(select(Prefetch.id).where(*expired)).all()
    requeued = []
    for prefetch_id in candidates:
        with db.session() as session:
            result = session.execute(
                update(Prefetch)
                .where(Prefetch.id == prefetch_id, *expired)
                .values(
                    state=PrefetchState.QUEUED,
                    worker=None,
                    lease_expires_at=None,
                    reason="resumed: the worker running it stopped",
                )
            )
            if getattr(result, "rowcount", 0):
                requeued.append(prefetch_id)
    if requeued:
        logger.warning(LOG_RESUMED, extra={"prefetches": len(requeued)})
    return requeued


def cancel_for(session: Session, registration_id: str) -> int:
    """Cancel the scheduled or queued prefetches of a registration."""
    result = session.execute(
        update(Prefetch)
        .where(
            Prefetch.registration_id == registration_id,
            Prefetch.state.in_([PrefetchState.SCHEDULED, PrefetchState.QUEUED]),
        )
        .values(
            state=PrefetchState.CANCELLED,
            finished_at=utcnow(),
            reason="the registration was cancelled",
        )
    )
    return int(getattr(result, "rowcount", 0))


def retrieve_now(
    settings: Settings,
    db: Database,
    archive: Archive,
    site: Site,
    study_uid: str,
    on_progress: transports.Progress | None = None,
) -> MoveOutcome:
    """Retrieve the whole of `study_uid` from `site` outside any prefetch.

    What ``spiders retrieve`` runs: the site's series are asked for and the
    study shared out over the site's free slots as a prefetch's is, but no
    slot is waited for; with none free, one association asks for the study.
    A site that cannot list the series gets one STUDY-level retrieve.
    """
    try:
        counts = _site_series(settings, site, study_uid)
    except AssociationFailed:
        counts = None
    return _retrieve(
        settings,
        archive,
        site,
        study_uid,
        db=db,
        counts=counts,
        held=0,
        on_progress=on_progress,
    )


def _already_cached(
    db: Database, study_uid: str, expected: int | None, known: Mapping[str, int]
) -> bool:
    """True when the cache already holds everything the site announced."""
    held = held_by_series(db, study_uid)
    if known:
        return not incomplete_series(known, held)
    return bool(expected) and sum(held.values()) >= (expected or 0)


def _fetch(
    settings: Settings,
    db: Database,
    archive: Archive,
    site: Site,
    prefetch_id: str,
    study_uid: str,
) -> MoveOutcome:
    """Inside the site's slot: count its series, then ask for what is missing."""
    audit.prefetch_begins(db, settings, prefetch_id, site)
    try:
        counts = _site_series(settings, site, study_uid)
        if counts is None:
            return _retrieve(settings, archive, site, study_uid)
        _store_series(db, prefetch_id, counts)
        held = held_by_series(db, study_uid)
        missing = incomplete_series(counts, held)
        if not missing:
            return MoveOutcome("success", error_comment="already in the cache")
        if not any(held.get(uid, 0) for uid in counts):
            return _retrieve(
                settings,
                archive,
                site,
                study_uid,
                db=db,
                counts=counts,
                prefetch_id=prefetch_id,
            )
        whole, instances = _missing(settings, db, site, study_uid, missing, counts)
    except AssociationFailed as exc:
        # The site does not answer queries: a retrieve would fail alike.
        return MoveOutcome("association_aborted", error_comment=str(exc))
    logger.info(
        LOG_ASKED,
        extra={
            "prefetch": prefetch_id,
            "site": site.name,
            "series_whole": len(whole),
            "series_partial": len(instances),
            "instances": sum(len(uids) for uids in instances.values()),
        },
    )
    return _retrieve(
        settings,
        archive,
        site,
        study_uid,
        whole or None,
        instances or None,
        db=db,
        counts=counts,
        prefetch_id=prefetch_id,
    )


def _missing(
    settings: Settings,
    db: Database,
    site: Site,
    study_uid: str,
    missing: list[str],
    counts: Mapping[str, int],
) -> tuple[list[str], dict[str, list[str]]]:
    """The series to ask for whole and the instances to ask for, by series.

    A series of which nothing is cached is asked for whole; of a partly cached
    one, the instances the site lists less those the cache holds. A site that
    cannot list a series, or lists fewer instances than it counts, gets the
    series asked for whole.
    """
    held = held_by_series(db, study_uid)
    whole = [uid for uid in missing if not held.get(uid, 0)]
    partly = [uid for uid in missing if held.get(uid, 0)]
    listed = _site_instances(settings, site, study_uid, partly) if partly else {}
    cached = cached_uids(db, study_uid, partly)
    instances: dict[str, list[str]] = {}
    for uid in partly:
        at_site = listed.get(uid)
        if at_site is None or len(at_site) < counts[uid]:
            whole.append(uid)
            continue
        wanted = [sop for sop in at_site if sop not in cached.get(uid, set())]
        if wanted:
            instances[uid] = wanted
        else:
            whole.append(uid)
    return sorted(whole), instances


def cached_uids(
    db: Database, study_uid: str, series_uids: Sequence[str]
) -> dict[str, set[str]]:
    """The SOP Instance UIDs the cache holds of some series of `study_uid`."""
    if not series_uids:
        return {}
    with db.session() as session:
        rows = session.execute(
            select(CachedInstance.series_uid, CachedInstance.sop_instance_uid).where(
                CachedInstance.study_uid == study_uid,
                CachedInstance.series_uid.in_(list(series_uids)),
            )
        ).all()
    found: dict[str, set[str]] = {}
    for series_uid, sop_uid in rows:
        found.setdefault(str(series_uid), set()).add(str(sop_uid))
    return found


def _retrieve(
    settings: Settings,
    archive: Archive,
    site: Site,
    study_uid: str,
    series_uids: list[str] | None = None,
    instance_uids: Mapping[str, list[str]] | None = None,
    *,
    db: Database | None = None,
    counts: Mapping[str, int] | None = None,
    held: int = 1,
    prefetch_id: str | None = None,
    on_progress: transports.Progress | None = None,
) -> MoveOutcome:
    """Ask `site` for the study, or only for the series and instances named.

    Given the site's series of the study and their `counts`, on as many
    associations as the setting and the site's slots allow: `held` slots
    the caller holds already, and those of `db` free now. Without, or with
    no slot at all, on one association.
    """
    if db is None or not counts:
        return transports.retrieve(
            settings, archive, site, study_uid, series_uids, instance_uids, on_progress
        )
    items = len(series_uids or ()) + len(instance_uids or {}) or len(counts)
    wanted = transports.parallel_for(settings, site, items)
    with site_slots.spare(
        db,
        site.name,
        site.max_associations,
        wanted - held,
        seconds=settings.worker_lease_seconds,
        prefetch_id=prefetch_id,
    ) as extra:
        return transports.retrieve_split(
            settings,
            archive,
            site,
            study_uid,
            max(1, held + len(extra)),
            counts,
            series_uids,
            instance_uids,
            on_progress,
        )


def _site_series(
    settings: Settings, site: Site, study_uid: str
) -> dict[str, int] | None:
    """The site's series and counts; None when it cannot say (a failed
    search, no series, or a series without a count).

    Raises
    ------
    AssociationFailed
        A site queried by C-FIND refused or dropped the association.
    """
    if site.query == "qido-rs" and not site.dicomweb_url:
        return None
    try:
        if site.query == "qido-rs":
            found = search_for_series(site_endpoint(site), study_uid)
        else:
            found = query_series(**site_call(settings, site), study_uid=study_uid)
    except AssociationFailed:
        raise
    except (SpidersError, OSError, ValueError) as exc:
        logger.warning(
            LOG_NO_SERIES, extra={"site": site.name, "error": type(exc).__name__}
        )
        return None
    counts = {uid: n for uid, n in found.items() if n is not None}
    if not found or len(counts) < len(found):
        logger.warning(LOG_NO_SERIES, extra={"site": site.name, "series": len(found)})
        return None
    return counts


def _site_instances(
    settings: Settings, site: Site, study_uid: str, series_uids: list[str]
) -> dict[str, list[str]]:
    """The site's SOP Instance UIDs of each of `series_uids` it could list.

    Raises
    ------
    AssociationFailed
        A site queried by C-FIND refused or dropped the association.
    """
    if site.query == "qido-rs":
        listed: dict[str, list[str]] = {}
        for uid in series_uids:
            try:
                listed[uid] = search_for_instances(site_endpoint(site), study_uid, uid)
            except (SpidersError, OSError, ValueError) as exc:
                _no_instances(site, exc)
        return listed
    try:
        return query_instances(
            **site_call(settings, site), study_uid=study_uid, series_uids=series_uids
        )
    except AssociationFailed:
        raise
    except (SpidersError, OSError, ValueError) as exc:
        _no_instances(site, exc)
        return {}


def _no_instances(site: Site, exc: Exception) -> None:
    logger.warning(
        LOG_NO_INSTANCES, extra={"site": site.name, "error": type(exc).__name__}
    )


def _store_series(db: Database, prefetch_id: str, counts: Mapping[str, int]) -> None:
    """Make the prefetch's series rows what the site announced just now."""
    with db.session() as session:
        prefetch = session.get(Prefetch, prefetch_id)
        if prefetch is None:
            return
        rows = {s.series_uid: s for s in prefetch.series}
        for uid, row in rows.items():
            if uid not in counts:
                prefetch.series.remove(row)
        for uid, count in counts.items():
            if uid in rows:
                rows[uid].expected = count
            else:
                prefetch.series.append(
                    PrefetchSeries(series_uid=uid, expected=count, received=0)
                )


def _finish(
    db: Database, prefetch_id: str, outcome: MoveOutcome, retry_base: float
) -> str:
    """Count what the cache holds and conclude, if the prefetch is still ours."""
    with db.session() as session:
        prefetch = session.get(Prefetch, prefetch_id)
        if prefetch is None:
            return "missing"
        study_uid = prefetch.study_uid
    held = held_by_series(db, study_uid)
    with db.session() as session:
        prefetch = session.get(Prefetch, prefetch_id)
        if prefetch is None:
            return "missing"
        if prefetch.state != PrefetchState.RUNNING or prefetch.worker != worker_id():
            logger.warning(LOG_LEASE_LOST, extra={"prefetch": prefetch_id})
            return str(prefetch.state)
        for row in prefetch.series:
            row.received = held.get(row.series_uid, 0)
        state = conclude(prefetch, outcome, sum(held.values()), retry_base)
        _log_done(prefetch, outcome)
    return state


def _reason(
    outcome: MoveOutcome,
    received: int,
    expected: int | None,
    series: list[PrefetchSeries],
) -> str:
    if expected is None:
        count = f"{received} instance(s) received; the site announced no count"
    else:
        count = f"{received} of {expected} instance(s) received"
    incomplete = sum(1 for s in series if not s.complete)
    if incomplete:
        count += f" ({incomplete} of {len(series)} series incomplete)"
    if outcome.outcome == "success":
        return count
    return f"{count}; {outcome.reason}"


def _log_done(prefetch: Prefetch, outcome: MoveOutcome) -> None:
    # A retrieve that gave up needs an operator: WARNING. One to be retried,
    # or that succeeded, is the normal life of a prefetch: INFO.
    failed = prefetch.state in (PrefetchState.FAILED, PrefetchState.PARTIAL)
    logger.log(
        logging.WARNING if failed else logging.INFO,
        LOG_PREFETCH_DONE,
        extra={
            "prefetch": prefetch.id,
            "site": prefetch.site_name,
            "state": prefetch.state,
            "received": prefetch.received_instances,
            "expected": prefetch.expected_instances,
            "outcome": outcome.outcome,
            "attempt": prefetch.attempts,
        },
    )
