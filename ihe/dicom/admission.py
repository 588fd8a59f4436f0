"""Which C-STOREs the cache keeps: only those a retrieve asked for.

The cache's Storage SCP receives what sites send after SPIDERS asked them by
C-MOVE. An instance is admitted when a retrieve asked the calling site for
its study:

- a prefetch of that site (the calling AE title and address resolved to a
  site by :class:`~ihe.dicom.acceptance.CallerPolicy`) and that Study
  Instance UID is ``queued`` or ``running``, and the instance's PatientID is
  the candidate's ``patient_id_at_site`` (the patient the site was asked
  for) or an identifier that patient had at the site before an identifier
  change; or
- ``spiders retrieve`` holds a :class:`~server.models.RetrievePermit` for that site and
  study (:func:`retrieve_permit`), and the instance's PatientID is the one
  the cache already holds for the study, or with nothing held yet the one of
  the association's first instance of it.

Anything else is refused by the Storage SCP with 0x0124 (Refused: Not
Authorized): a study no one asked for, a study still waiting for identity
review (it has no prefetch until it is selected), an instance of another
patient carrying an asked-for Study Instance UID, and any C-STORE from a
caller that is not a site (a console). The decision is taken once per
association and study, with one database query, and kept for the
association's life: receiving a study costs no query per instance.

Instances a worker retrieves itself (C-GET, WADO-RS) are stored by the
worker through :class:`~ihe.dicom.archive.Archive` and never pass here.

Limitations
-----------
A decision holds for the whole association: a prefetch cancelled while its
site is sending still has the rest of that association's instances kept,
and a study refused at the start of an association stays refused on it even
if its prefetch is queued meanwhile. A permit does not name a patient: on a
study the cache does not hold yet, two associations of one ``spiders
retrieve`` each accept the PatientID of their own first instance. After an
identifier change (HL7 A47) a site may send the patient's former identifier
or the new one: both are admitted.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from server.models import (
    CachedInstance,
    Candidate,
    PatientHistory,
    Prefetch,
    PrefetchState,
    Registration,
    RetrievePermit,
    SiteRecord,
)
from server.models.base import utcnow

logger = logging.getLogger(__name__)

LOG_PERMIT_LOST = "retrieve permit could not be renewed"

# Prefetch states in which the site has been, or is about to be, asked.
ASKING = (PrefetchState.QUEUED, PrefetchState.RUNNING)

# Refusal reasons: the Error Comment (0000,0902) of the C-STORE response.
NOT_A_SITE = "the caller is not a site: only sites may store"
NOT_ASKED = "no retrieve asked this site for this study"
OTHER_PATIENT = "PatientID is not the patient the study was asked for"

TWO_PATIENTS = "this Study Instance UID is asked of the site for two patients at once"
PERMIT_SECONDS = 60


@dataclass(frozen=True)
class Verdict:
    """The answer for one instance.

    ``reason`` is ``None`` when the instance is admitted. ``first`` is true
    the first time a reason is given on an association for a study, so that
    a refused study is logged and audited once, not once per instance.
    """

    reason: str | None
    site: str | None
    first: bool = False


@dataclass
class _Decision:
    """What one association may store of one study."""

    site: str | None
    reason: str | None = None
    patient_ids: set[str] = field(default_factory=set)
    # A permit on a study not held yet: the first PatientID seen is the one.
    pin: bool = False
    reported: set[str] = field(default_factory=set)

    def refusal(self, patient_id: str) -> str | None:
        if self.reason is not None:
            return self.reason
        if self.pin:
            self.patient_ids, self.pin = {patient_id}, False
        return None if patient_id in self.patient_ids else OTHER_PATIENT


class StoreAdmission:
    """Decides, per association and study, whether a C-STORE was asked for.

    Parameters
    ----------
    sessions : sqlalchemy.orm.sessionmaker
        Sessions on the database holding the prefetches and permits.
    sites_of : callable
        Maps (calling AE title, address) to the names of the sites the caller
        is; an empty list for a caller that is not a site.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        sites_of: Callable[[str, str], Sequence[str]],
    ) -> None:
        self.sessions = sessions
        self.sites_of = sites_of
        self._lock = threading.Lock()
        self._decisions: weakref.WeakKeyDictionary[object, dict[str, _Decision]] = (
            weakref.WeakKeyDictionary()
        )

    def admit(
        self,
        assoc: object,
        calling_ae: str,
        address: str,
        study_uid: str,
        patient_id: str,
    ) -> Verdict:
        """Whether `assoc` may store an instance of `study_uid` for `patient_id`."""
        with self._lock:
            decision = self._decisions.get(assoc, {}).get(study_uid)
            if decision is not None:  # every instance but the first: no query
                return self._verdict(decision, patient_id)
        decided = self._decide(calling_ae, address, study_uid)
        with self._lock:
            studies = self._decisions.setdefault(assoc, {})
            return self._verdict(studies.setdefault(study_uid, decided), patient_id)

    @staticmethod
    def _verdict(decision: _Decision, patient_id: str) -> Verdict:
        """The verdict for one instance; the caller holds the lock."""
        reason = decision.refusal(patient_id.strip())
        first = reason is not None and reason not in decision.reported
        if first and reason is not None:
            decision.reported.add(reason)
        return Verdict(reason, decision.site, first)

    def forget(self, assoc: object) -> None:
        """Drop the decisions of an association that ended."""
        with self._lock:
            self._decisions.pop(assoc, None)

    def _decide(self, calling_ae: str, address: str, study_uid: str) -> _Decision:
        sites = list(self.sites_of(calling_ae, address))
        if not sites:
            return _Decision(None, NOT_A_SITE)
        with self.sessions() as session:
            asked = session.execute(
                select(Prefetch.site_name, Candidate.patient_id_at_site)
                .join(Candidate, Candidate.id == Prefetch.candidate_id)
                .where(
                    Prefetch.site_name.in_(sites),
                    Prefetch.study_uid == study_uid,
                    Prefetch.state.in_([str(state) for state in ASKING]),
                )
            ).all()
            if asked:
                ids = {str(patient_id).strip() for _, patient_id in asked}
                if len(ids) > 1:
                    # One UID asked for two patients: neither gets the other's.
                    return _Decision(str(asked[0][0]), TWO_PATIENTS)
                ids |= _former_ids(session, sites, study_uid)
                return _Decision(str(asked[0][0]), patient_ids=ids)
            permitted = session.scalars(
                select(RetrievePermit.site_name).where(
                    RetrievePermit.site_name.in_(sites),
                    RetrievePermit.study_uid == study_uid,
                    RetrievePermit.expires_at > utcnow(),
                )
            ).first()
            if permitted is None:
                return _Decision(sites[0], NOT_ASKED)
            held = session.scalars(
                select(CachedInstance.patient_id)
                .where(CachedInstance.study_uid == study_uid)
                .limit(1)
            ).first()
        if held is None:
            return _Decision(permitted, pin=True)
        return _Decision(permitted, patient_ids={str(held).strip()})


def _former_ids(session: Session, sites: list[str], study_uid: str) -> set[str]:
    """Identifiers the patients asked for had at these sites before an
    identifier change (HL7 A47): a site may still send those."""
    rows = session.scalars(
        select(PatientHistory.old_value)
        .join(Registration, Registration.patient_id == PatientHistory.patient_id)
        .join(Prefetch, Prefetch.registration_id == Registration.id)
        .join(SiteRecord, SiteRecord.name == Prefetch.site_name)
        .where(
            Prefetch.site_name.in_(sites),
            Prefetch.study_uid == study_uid,
            Prefetch.state.in_([str(state) for state in ASKING]),
            PatientHistory.kind == "identifier-changed",
            PatientHistory.system == SiteRecord.patient_id_domain,
        )
    ).all()
    return {str(value).strip() for value in rows if value}


@contextmanager
def retrieve_permit(
    sessions: sessionmaker[Session],
    site_name: str,
    study_uid: str,
    seconds: float = PERMIT_SECONDS,
) -> Iterator[None]:
    """Let `site_name` store `study_uid` in the cache while the block runs.

    For ``spiders retrieve``, which asks a site for a study outside any
    prefetch. The permit is renewed every third of `seconds` and deleted
    when the block ends, whatever happens. Its table is created with the
    schema by any process that imported this module first.
    """
    with sessions() as session, session.begin():
        permit = RetrievePermit(
            site_name=site_name,
            study_uid=study_uid,
            holder=f"{socket.gethostname()}:{os.getpid()}",
            expires_at=utcnow() + timedelta(seconds=seconds),
        )
        session.add(permit)
        session.flush()
        permit_id = permit.id
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew,
        args=(sessions, permit_id, seconds, stop),
        name="retrieve-permit",
        daemon=True,
    )
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        with sessions() as session, session.begin():
            session.execute(
                delete(RetrievePermit).where(RetrievePermit.id == permit_id)
            )


def _renew(
    sessions: sessionmaker[Session],
    permit_id: int,
    seconds: float,
    stop: threading.Event,
) -> None:
    while not stop.wait(seconds / 3):
        try:
            with sessions() as session, session.begin():
                session.execute(
                    update(RetrievePermit)
                    .where(RetrievePermit.id == permit_id)
                    .values(expires_at=utcnow() + timedelta(seconds=seconds))
                )
        except Exception:
            logger.warning(LOG_PERMIT_LOST, exc_info=True)
