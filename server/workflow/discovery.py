"""Discovery: find a registered patient's studies at every site, in parallel.

For each site the patient index gives the patient's identifier in that site's
domain; a site where the patient has none is not queried (there is nothing
safe to ask), and a site inside one of its maintenance windows is not queried
either (its row says until when). The other sites are queried concurrently,
each with its own time-out, so a slow or dead site delays only itself and the
other sites' results are kept. A site is asked by C-FIND (Study Root, or
Patient Root when its ``query_model`` is ``patient``) or by QIDO-RS when its
``query`` is ``qido-rs``; a failure of either is recorded the same way.

Order and appointment hints (``accessionNumbers``, ``studyInstanceUIDs`` of
the registration) narrow extra queries: the hint values are sent as matching
keys beside the patient's ID, never instead of it. The broad query by patient
ID still runs, because a board also needs the patient's earlier studies. A
study a hint names is marked ``hinted`` and selected for retrieve (unless it
carries an identity warning), whatever its modality or date.

The same Study Instance UID found at several sites is one candidate. It is
retrieved from the site that announced the most instances (a complete copy
beats a partial one); on a tie, from the site listed first in the sites
file. The other sites are kept in ``also_at`` with their counts.

A returned study whose patient birth date or family name disagrees with the
index is kept with a warning and never selected automatically; for a study
held at several sites, a warning from any copy applies.

A site whose query failed (refused, unreachable, timed out, an error
status) is asked again, with the other sites, by a later discovery: first
:data:`FAILED_RETRY_MIN` after, then less and less often as the case ages
(half its age, at most :data:`FAILED_RETRY_MAX`), until the meeting starts.
What the other sites answered is kept meanwhile.

Limitations
-----------
A candidate found again on a later discovery keeps its site even if another
copy now has more instances. A site's query waits at most its ``timeout`` for
a free association slot; the site is then reported busy and asked again
:data:`BUSY_RETRY` later, not sooner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from ihe.dicomweb import rad129_qido_rs_query as rad129
from ihe.qr import rad14_query_images as rad14
from mappings.dicom_study import QueryResult, StudyFound
from mappings.identifiers import Identifier, to_cx
from server import audit
from server.config import Settings, Site
from server.db import Database
from server.errors import PeerError
from server.models import Candidate, Registration, SiteQuery, utcnow
from server.peers import site_call, site_endpoint
from server.workflow import pix_source, site_slots
from server.workflow.vigilance import identity_warning

logger = logging.getLogger(__name__)

LOG_DISCOVERY_DONE = "discovery done"
LOG_SITE_FAILED = "site query failed"
LOG_SITE_IN_MAINTENANCE = "site in maintenance, not queried"
LOG_SITE_BUSY = "site busy, not queried"
# A busy site (every association slot taken) is asked again this much later.
BUSY_RETRY = timedelta(seconds=30)
FAILED_RETRY_MIN = timedelta(minutes=10)
FAILED_RETRY_MAX = timedelta(hours=2)
SLOT_POLL_SECONDS = 0.2
MAX_PARALLEL_SITES = 16
# Keys of Registration.hints, as the order and appointment intake write them.
ACCESSION_HINTS = "accessionNumbers"
STUDY_HINTS = "studyInstanceUIDs"
HINT_SELECTOR = "hint"


@dataclass(frozen=True)
class Hints:
    """Values from orders and appointments that narrow the queries."""

    study_uids: tuple[str, ...] = ()
    accession_numbers: tuple[str, ...] = ()

    def names(self, study: StudyFound) -> bool:
        """True when `study` is one the hints name."""
        return study.study_uid in self.study_uids or (
            study.accession_number is not None
            and study.accession_number in self.accession_numbers
        )


@dataclass
class SiteAnswer:
    """The outcome of one site's query."""

    site: Site
    local_id: str | None
    result: QueryResult | None = None
    error: str | None = None
    maintenance_until: datetime | None = None
    busy: bool = False


@dataclass
class _Copies:
    """Every site's copy of one study, in sites-file order."""

    copies: list[tuple[Site, StudyFound]] = field(default_factory=list)

    def holder(self) -> tuple[Site, StudyFound]:
        """The copy to retrieve: most instances, then first listed."""
        # max() keeps the first of equal copies: sites-file order breaks ties.
        return max(self.copies, key=lambda copy: copy[1].num_instances or -1)


def discover(
    settings: Settings,
    session: Session,
    registration: Registration,
    now: datetime | None = None,
    db: Database | None = None,
) -> None:
    """Query every site for `registration`'s patient and record what was found.

    The registration must be attached to `session`, which the caller commits.
    `now` (aware) decides which sites are in a maintenance window. With `db`,
    each query holds one of the site's association slots (shared by every
    worker); a site skipped for maintenance or because it was busy makes the
    registration due for another discovery (``rediscover_at``).
    """
    patient = registration.patient
    hints = hints_of(registration)
    # The patient's identifier in each site's domain, from the index or the
    # region's PIX Manager (asked once for every site).
    ids = pix_source.site_identifiers(settings, session, patient, registration.id)
    registration.identity_source = ids.source.value + (
        " (unavailable: local index used)" if ids.fallback else ""
    )
    answers = _query_sites(
        settings,
        [(site, ids.get(site.patient_id_domain)) for site in settings.directory.sites],
        hints,
        now or utcnow(),
        db,
    )
    registration.rediscover_at = _rediscover_at(answers, now or utcnow(), registration)
    registration.site_queries.clear()
    session.flush()
    for answer in answers:
        _record_site(settings, session, registration, answer)
    _record_candidates(registration, answers, hints)
    registration.discovery = "done"
    found = sum(len(a.result.studies) for a in answers if a.result)
    logger.info(
        LOG_DISCOVERY_DONE,
        extra={
            "registration": registration.id,
            "sites": len(answers),
            "studies": found,
            "failed_sites": sum(1 for a in answers if a.error),
            "pix_source": ids.source.value,
            "pix_fallback": ids.fallback,
        },
    )


def hints_of(registration: Registration) -> Hints:
    """The registration's study UID and accession number hints."""
    stored = registration.hints or {}

    def values(key: str) -> tuple[str, ...]:
        found = stored.get(key) or []
        return tuple(dict.fromkeys(str(v).strip() for v in found if str(v).strip()))

    return Hints(values(STUDY_HINTS), values(ACCESSION_HINTS))


def maintenance_end(site: Site, moment: datetime) -> datetime | None:
    """When the maintenance window covering `moment` ends (site's time), or
    ``None`` when the site is not in maintenance."""
    if not site.in_maintenance(moment):
        return None
    local = moment.astimezone(ZoneInfo(site.timezone))
    ends = []
    for window in site.maintenance:
        if window.covers(local):
            end = local.replace(
                hour=window.end.hour, minute=window.end.minute, second=0, microsecond=0
            )
            ends.append(end if end > local else end + timedelta(days=1))
    return max(ends) if ends else None


def _query_sites(
    settings: Settings,
    targets: list[tuple[Site, str | None]],
    hints: Hints,
    moment: datetime,
    db: Database | None = None,
) -> list[SiteAnswer]:
    answers = [SiteAnswer(site, local_id) for site, local_id in targets]
    for answer in answers:
        if answer.local_id:
            answer.maintenance_until = maintenance_end(answer.site, moment)
            if answer.maintenance_until is not None:
                logger.info(LOG_SITE_IN_MAINTENANCE, extra={"site": answer.site.name})
    todo = [a for a in answers if a.local_id and a.maintenance_until is None]
    if not todo:
        return answers
    with ThreadPoolExecutor(
        max_workers=min(len(todo), MAX_PARALLEL_SITES), thread_name_prefix="discover"
    ) as pool:
        futures = {
            pool.submit(
                _query_slotted, settings, db, a.site, a.local_id or "", hints
            ): a
            for a in todo
        }
        for future, answer in futures.items():
            try:
                answer.result = future.result()
            except PeerError as exc:
                answer.error = str(exc)
                logger.warning(
                    LOG_SITE_FAILED,
                    extra={"site": answer.site.name, "error": str(exc)},
                )
                continue
            if answer.result is None:
                answer.busy = True
                logger.info(LOG_SITE_BUSY, extra={"site": answer.site.name})
    return answers


def _query_slotted(
    settings: Settings, db: Database | None, site: Site, local_id: str, hints: Hints
) -> QueryResult | None:
    """Query `site` while holding one of its association slots (when `db`);
    ``None`` when every slot stayed taken for the site's whole timeout."""
    if db is None:
        return _query_one(settings, site, local_id, hints)
    deadline = time.monotonic() + site.timeout
    lease_seconds = max(settings.worker_lease_seconds, site.timeout * 3)
    while True:
        lease = site_slots.acquire(
            db, site.name, site.max_associations, seconds=lease_seconds
        )
        if lease is not None:
            break
        if time.monotonic() >= deadline:
            return None
        time.sleep(SLOT_POLL_SECONDS)
    try:
        return _query_one(settings, site, local_id, hints)
    finally:
        site_slots.release(db, lease)


def _rediscover_at(
    answers: list[SiteAnswer], now: datetime, registration: Registration
) -> datetime | None:
    """When to ask again the sites that were skipped (busy, in maintenance) or
    failed; None when every site answered."""
    moments = [a.maintenance_until for a in answers if a.maintenance_until]
    moments += [now + BUSY_RETRY for a in answers if a.busy]
    if any(a.error and not a.busy for a in answers):
        moments.append(now + failed_retry_delay(registration.created_at, now))
    soonest = min(moments, default=None)
    meeting = registration.meeting_start
    if soonest is not None and meeting is not None and soonest >= meeting:
        return None
    return soonest


def failed_retry_delay(created: datetime | None, now: datetime) -> timedelta:
    """How long to wait before asking a failed site again: half the case's
    age, between :data:`FAILED_RETRY_MIN` and :data:`FAILED_RETRY_MAX`."""
    age = now - created if created is not None else timedelta(0)
    return min(FAILED_RETRY_MAX, max(FAILED_RETRY_MIN, age / 2))


def _query_one(
    settings: Settings, site: Site, local_id: str, hints: Hints
) -> QueryResult:
    if site.query == "qido-rs":
        return rad129.search_for_studies(
            site_endpoint(site),
            local_id,
            study_uids=hints.study_uids,
            accession_numbers=hints.accession_numbers,
        )
    return rad14.query_studies(
        **site_call(settings, site),
        patient_id=local_id,
        query_model=site.query_model,
        study_uids=hints.study_uids,
        accession_numbers=hints.accession_numbers,
    )


def _record_site(
    settings: Settings, session: Session, registration: Registration, answer: SiteAnswer
) -> None:
    site = answer.site
    if answer.local_id is None or answer.maintenance_until is not None or answer.busy:
        if answer.local_id is None:
            status = "no-identifier"
            reason = "the patient has no identifier in this site's domain"
        elif answer.busy:
            status = "busy"
            reason = (
                f"all {site.max_associations} association(s) with the site were in "
                f"use for {site.timeout:g} s; asked again in "
                f"{int(BUSY_RETRY.total_seconds())} s"
            )
        else:
            status, reason = "maintenance", _maintenance_reason(answer)
        registration.site_queries.append(
            SiteQuery(
                site_name=site.name,
                status=status,
                reason=reason,
                finished_at=utcnow(),
            )
        )
        return
    studies = answer.result.studies if answer.result else ()
    registration.site_queries.append(
        SiteQuery(
            site_name=site.name,
            status="failed" if answer.error else "ok",
            studies_found=len(studies),
            reason=answer.error,
            finished_at=utcnow(),
        )
    )
    _audit_queries(settings, session, registration, answer)


def _maintenance_reason(answer: SiteAnswer) -> str:
    until = answer.maintenance_until
    assert until is not None
    return (
        f"in a maintenance window until {until:%Y-%m-%d %H:%M} "
        f"({answer.site.timezone}); not queried"
    )


def _audit_queries(
    settings: Settings, session: Session, registration: Registration, answer: SiteAnswer
) -> None:
    """One Query audit message (110112) per query sent to the site."""
    site, local_id = answer.site, answer.local_id or ""
    cx = to_cx(Identifier(site.patient_id_domain, local_id))
    if answer.result is not None:
        queries: Sequence[bytes] = answer.result.queries
        sop_class = answer.result.sop_class_uid
    elif site.query == "qido-rs":
        params = urlencode({"PatientID": local_id})
        queries = [f"{(site.dicomweb_url or '').rstrip('/')}/studies?{params}".encode()]
        sop_class = rad129.SOP_CLASS
    else:
        identifier = rad14.build_identifier(local_id, query_model=site.query_model)
        queries = [rad14.encode_identifier(identifier)]
        sop_class = rad14.sop_class_for(site.query_model)
    host = (
        urlsplit(site.dicomweb_url).hostname or site.host
        if site.query == "qido-rs" and site.dicomweb_url
        else site.host
    )
    for query in queries:
        audit.site_query(
            session,
            settings,
            site_ae=site.ae_title,
            site_host=host,
            query=query,
            patient_cx_value=cx,
            sop_class_uid=sop_class,
            outcome=8 if answer.error else 0,
            registration_id=registration.id,
        )


def _record_candidates(
    registration: Registration, answers: Sequence[SiteAnswer], hints: Hints
) -> None:
    """One candidate per Study Instance UID, whichever sites hold it."""
    by_uid: dict[str, _Copies] = {}
    for answer in answers:
        for study in answer.result.studies if answer.result else ():
            by_uid.setdefault(study.study_uid, _Copies()).copies.append(
                (answer.site, study)
            )
    existing = {c.study_uid: c for c in registration.candidates}
    for study_uid, copies in by_uid.items():
        site, study = copies.holder()
        candidate = existing.get(study_uid)
        warning = _warning(registration, copies)
        if candidate is None:
            candidate = _candidate(site, study, warning)
            if hints.names(study):
                candidate.hinted = True
                if warning is None:
                    candidate.selected, candidate.selected_by = True, HINT_SELECTOR
            registration.candidates.append(candidate)
        others: list[dict[str, object]] = [
            {"site": s.name, "instances": found.num_instances}
            for s, found in copies.copies
            if s.name != candidate.site_name
        ]
        candidate.also_at = others or None


def _candidate(site: Site, study: StudyFound, warning: str | None) -> Candidate:
    return Candidate(
        site_name=site.name,
        study_uid=study.study_uid,
        patient_id_at_site=study.patient_id,
        study_date=study.study_date,
        study_time=study.study_time,
        accession_number=study.accession_number,
        modalities=list(study.modalities),
        description=study.description,
        num_series=study.num_series,
        num_instances=study.num_instances,
        warning=warning,
    )


def _warning(registration: Registration, copies: _Copies) -> str | None:
    reasons: list[str] = []
    for _, study in copies.copies:
        for reason in (identity_warning(registration, study) or "").split("; "):
            if reason and reason not in reasons:
                reasons.append(reason)
    return "; ".join(reasons) or None
