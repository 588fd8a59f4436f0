"""StoreAdmission's decisions and permits, over a real SQLite database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, select

from ihe.dicom.admission import (
    NOT_A_SITE,
    NOT_ASKED,
    OTHER_PATIENT,
    TWO_PATIENTS,
    StoreAdmission,
    retrieve_permit,
)
from server.db import Database
from server.models import (
    CachedInstance,
    Candidate,
    PatientHistory,
    PrefetchState,
    Registration,
    RetrievePermit,
    utcnow,
)
from tests.ihe.dicom.dicom_support import ask_site

SITE, STUDY, PID = "chu-nord", "2.999.7.10", "NORD-0042"


class Assoc:
    """Stands for a pynetdicom association: only its identity matters."""


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'spiders.sqlite'}")
    database.create_schema()
    try:
        yield database
    finally:
        database.dispose()


def sites_of(calling_ae: str, _address: str) -> list[str]:
    return [SITE] if calling_ae == "CHU_NORD" else []


def ask(db: Database, state: str, study_uid: str = STUDY) -> None:
    ask_site(db, SITE, study_uid, state, PID)


def count_queries(db: Database) -> list[str]:
    seen: list[str] = []

    def record(*args: object) -> None:
        seen.append(str(args[2]))

    event.listen(db.engine, "before_cursor_execute", record)
    return seen


def test_admission_running_prefetch_admits_its_patient_one_query_per_study(
    db: Database,
) -> None:
    ask(db, PrefetchState.RUNNING)
    admission = StoreAdmission(db.sessions, sites_of)
    assoc = Assoc()
    queries = count_queries(db)

    verdicts = [admission.admit(assoc, "CHU_NORD", "127.0.0.1", STUDY, PID)]
    deciding = len(queries)
    verdicts += [
        admission.admit(assoc, "CHU_NORD", "127.0.0.1", STUDY, PID) for _ in range(49)
    ]

    assert {v.reason for v in verdicts} == {None}
    assert verdicts[0].site == SITE
    assert 0 < deciding == len(queries)  # no query for the next 49 instances


def test_admission_other_patient_refused_first_only_reported(db: Database) -> None:
    ask(db, PrefetchState.QUEUED)
    admission = StoreAdmission(db.sessions, sites_of)
    assoc = Assoc()

    first = admission.admit(assoc, "CHU_NORD", "127.0.0.1", STUDY, "NORD-0999")
    second = admission.admit(assoc, "CHU_NORD", "127.0.0.1", STUDY, "NORD-0999")
    right = admission.admit(assoc, "CHU_NORD", "127.0.0.1", STUDY, PID)

    assert (first.reason, first.first) == (OTHER_PATIENT, True)
    assert (second.reason, second.first) == (OTHER_PATIENT, False)
    assert right.reason is None


def test_admission_one_uid_asked_for_two_patients_refused(db: Database) -> None:
    ask(db, PrefetchState.RUNNING)
    ask(db, PrefetchState.QUEUED)
    with db.session() as session:
        second = session.scalars(select(Candidate).order_by(Candidate.id)).all()[1]
        second.patient_id_at_site = "NORD-0777"
    admission = StoreAdmission(db.sessions, sites_of)

    for patient_id in (PID, "NORD-0777"):
        verdict = admission.admit(Assoc(), "CHU_NORD", "h", STUDY, patient_id)
        assert verdict.reason == TWO_PATIENTS


def test_admission_former_identifier_after_a47_admitted(db: Database) -> None:
    from server import site_directory
    from server.config import Directory, Site

    site_directory.sync(
        db, Directory(sites=(Site(SITE, "CHU_NORD", "127.0.0.1", 104, "2.999.7"),))
    )
    ask(db, PrefetchState.RUNNING)
    with db.session() as session:
        (registration,) = session.scalars(select(Registration)).all()
        session.add(
            PatientHistory(
                patient_id=registration.patient_id,
                kind="identifier-changed",
                system="2.999.7",
                old_value="NORD-0001",
                new_value=PID,
            )
        )
    admission = StoreAdmission(db.sessions, sites_of)

    for patient_id in ("NORD-0001", PID):
        assert (
            admission.admit(Assoc(), "CHU_NORD", "h", STUDY, patient_id).reason is None
        )
    other = admission.admit(Assoc(), "CHU_NORD", "h", STUDY, "NORD-0002")
    assert other.reason == OTHER_PATIENT


@pytest.mark.parametrize(
    "state",
    [
        PrefetchState.SCHEDULED,
        PrefetchState.READY,
        PrefetchState.PARTIAL,
        PrefetchState.FAILED,
        PrefetchState.CANCELLED,
    ],
)
def test_admission_prefetch_not_asking_refused(db: Database, state: str) -> None:
    ask(db, state)
    admission = StoreAdmission(db.sessions, sites_of)

    verdict = admission.admit(Assoc(), "CHU_NORD", "127.0.0.1", STUDY, PID)

    assert verdict.reason == NOT_ASKED


def test_admission_caller_not_a_site_refused(db: Database) -> None:
    ask(db, PrefetchState.RUNNING)
    admission = StoreAdmission(db.sessions, sites_of)

    verdict = admission.admit(Assoc(), "RCP_CONSOLE", "127.0.0.1", STUDY, PID)

    assert verdict.reason == NOT_A_SITE


def test_admission_decision_kept_per_association_until_forgotten(
    db: Database,
) -> None:
    admission = StoreAdmission(db.sessions, sites_of)
    assoc = Assoc()
    before = admission.admit(assoc, "CHU_NORD", "127.0.0.1", STUDY, PID)
    ask(db, PrefetchState.RUNNING)

    same = admission.admit(assoc, "CHU_NORD", "127.0.0.1", STUDY, PID)
    admission.forget(assoc)
    after = admission.admit(assoc, "CHU_NORD", "127.0.0.1", STUDY, PID)

    assert (before.reason, same.reason, after.reason) == (NOT_ASKED, NOT_ASKED, None)


def test_permit_admits_while_held_pins_first_patient_then_refuses(
    db: Database,
) -> None:
    admission = StoreAdmission(db.sessions, sites_of)
    inside = Assoc()

    with retrieve_permit(db.sessions, SITE, STUDY, seconds=30):
        first = admission.admit(inside, "CHU_NORD", "127.0.0.1", STUDY, "X-1")
        mixed = admission.admit(inside, "CHU_NORD", "127.0.0.1", STUDY, "X-2")
    after = admission.admit(Assoc(), "CHU_NORD", "127.0.0.1", STUDY, "X-1")

    assert (first.reason, mixed.reason, after.reason) == (
        None,
        OTHER_PATIENT,
        NOT_ASKED,
    )
    with db.session() as session:
        assert session.scalars(select(RetrievePermit)).all() == []


def test_permit_study_held_admits_only_held_patient(db: Database) -> None:
    with db.session() as session:
        session.add(
            CachedInstance(
                sop_instance_uid="2.999.7.10.1.1",
                study_uid=STUDY,
                series_uid="2.999.7.10.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                patient_id=PID,
                path="x.dcm",
                size=1,
                transfer_syntax="1.2.840.10008.1.2.1",
            )
        )
    admission = StoreAdmission(db.sessions, sites_of)

    with retrieve_permit(db.sessions, SITE, STUDY):
        other = admission.admit(Assoc(), "CHU_NORD", "127.0.0.1", STUDY, "X-1")
        held = admission.admit(Assoc(), "CHU_NORD", "127.0.0.1", STUDY, PID)

    assert (other.reason, held.reason) == (OTHER_PATIENT, None)


def test_permit_expired_refused(db: Database) -> None:
    with db.session() as session:
        session.add(
            RetrievePermit(
                site_name=SITE,
                study_uid=STUDY,
                holder="gone:1",
                expires_at=utcnow() - timedelta(seconds=1),
            )
        )
    admission = StoreAdmission(db.sessions, sites_of)

    verdict = admission.admit(Assoc(), "CHU_NORD", "127.0.0.1", STUDY, PID)

    assert verdict.reason == NOT_ASKED
