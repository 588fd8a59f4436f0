"""Discovery: find a registered patient's studies at every site, in parallel.

For each site the patient index gives the patient's identifier in that site's
domain; a site where the patient has none is not queried (there is nothing
safe to ask). The C-FINDs run concurrently, each with its own time-out, so a
slow or dead site delays only itself and the other sites' results are kept.

A returned study whose patient birth date or family name disagrees with the
index is kept with a warning and never selected automatically.

Limitations
-----------
Studies found at two sites under the same Study Instance UID stay two
candidates; the rule selects the first one only. Study UID hints from the
appointment are recorded but do not narrow the query.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy.orm import Session

from ihe.qr import rad14_query_images as rad14
from mappings.dicom_study import StudyFound
from mappings.identifiers import Identifier, to_cx
from mappings.names import fold
from server import audit
from server.config import Settings, Site
from server.errors import PeerError
from server.models import Candidate, Registration, SiteQuery, utcnow
from server.peers import site_tls

logger = logging.getLogger(__name__)

LOG_DISCOVERY_DONE = "discovery done"
MAX_PARALLEL_SITES = 16


@dataclass
class SiteAnswer:
    """The outcome of one site's query."""

    site: Site
    local_id: str | None
    result: rad14.QueryResult | None = None
    error: str | None = None


def discover(settings: Settings, session: Session, registration: Registration) -> None:
    """Query every site for `registration`'s patient and record what was found.

    The registration must be attached to `session`, which the caller commits.
    """
    patient = registration.patient
    answers = _query_sites(
        settings,
        [
            (site, patient.identifier_in(site.patient_id_domain))
            for site in settings.directory.sites
        ],
    )
    registration.site_queries.clear()
    session.flush()
    for answer in answers:
        _record(settings, session, registration, answer)
    registration.discovery = "done"
    found = sum(len(a.result.studies) for a in answers if a.result)
    logger.info(
        LOG_DISCOVERY_DONE,
        extra={
            "registration": registration.id,
            "sites": len(answers),
            "studies": found,
            "failed_sites": sum(1 for a in answers if a.error),
        },
    )


def _query_sites(
    settings: Settings, targets: list[tuple[Site, str | None]]
) -> list[SiteAnswer]:
    answers = [SiteAnswer(site, local_id) for site, local_id in targets]
    todo = [a for a in answers if a.local_id]
    if not todo:
        return answers
    with ThreadPoolExecutor(
        max_workers=min(len(todo), MAX_PARALLEL_SITES), thread_name_prefix="cfind"
    ) as pool:
        futures = {
            pool.submit(_query_one, settings, a.site, a.local_id or ""): a for a in todo
        }
        for future, answer in futures.items():
            try:
                answer.result = future.result()
            except PeerError as exc:
                answer.error = str(exc)
                logger.warning(
                    "site query failed",
                    extra={"site": answer.site.name, "error": str(exc)},
                )
    return answers


def _query_one(settings: Settings, site: Site, local_id: str) -> rad14.QueryResult:
    return rad14.query_studies(
        calling_ae=settings.ae_title,
        ae_title=site.ae_title,
        host=site.host,
        port=site.port,
        patient_id=local_id,
        timeout=site.timeout,
        tls=site_tls(site),
    )


def _record(
    settings: Settings, session: Session, registration: Registration, answer: SiteAnswer
) -> None:
    site = answer.site
    if answer.local_id is None:
        registration.site_queries.append(
            SiteQuery(
                site_name=site.name,
                status="no-identifier",
                reason="the patient has no identifier in this site's domain",
                finished_at=utcnow(),
            )
        )
        return
    cx = to_cx(Identifier(site.patient_id_domain, answer.local_id))
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
    audit.site_query(
        session,
        settings,
        site_ae=site.ae_title,
        site_host=site.host,
        query=answer.result.query
        if answer.result
        else rad14.encode_identifier(rad14.build_identifier(answer.local_id)),
        patient_cx_value=cx,
        sop_class_uid=rad14.SOP_CLASS,
        outcome=8 if answer.error else 0,
        registration_id=registration.id,
    )
    existing = {(c.site_name, c.study_uid) for c in registration.candidates}
    for study in studies:
        if (site.name, study.study_uid) in existing:
            continue
        registration.candidates.append(
            Candidate(
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
                warning=identity_warning(registration, study),
            )
        )


def identity_warning(registration: Registration, study: StudyFound) -> str | None:
    """Why the study's patient may not be the registered one, or ``None``."""
    patient = registration.patient
    reasons = []
    if (
        patient.birth_date
        and study.patient_birth_date
        and study.patient_birth_date != patient.birth_date.strftime("%Y%m%d")
    ):
        reasons.append("birth date differs from the patient index")
    if patient.family_name and study.patient_name:
        family = study.patient_name.split("=", 1)[0].split("^", 1)[0]
        known = {fold(patient.family_name)}
        if patient.birth_family_name:
            known.add(fold(patient.birth_family_name))
        if fold(family) not in known:
            reasons.append("family name differs from the patient index")
    return "; ".join(reasons) or None
