"""Discovery across a region of real PACS: two Orthanc instances and a dead site.

Site A is an Orthanc queried by C-FIND (Study Root, and Patient Root under a
second name); site B is an Orthanc with the DICOMweb plugin queried by
QIDO-RS. One study is held at both sites (all of it at A, part of it at B);
the patient has other studies at A. A site that accepts TCP but never
answers shows that a dead site times out alone.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from ihe.dicomweb.rad129_qido_rs_query import Endpoint, search_for_studies
from ihe.qr.rad14_query_images import query_studies
from server import tasks
from server.cli import main
from server.config import Directory, MaintenanceWindow, Settings, Site
from server.demo.studies import (
    DemoPatient,
    GeneratedStudy,
    SeriesSpec,
    StudySpec,
    generate_study,
)
from server.errors import PeerError
from server.models import Patient, PatientIdentifier, Registration, SiteSlotUse
from server.runtime import Runtime
from server.workflow import site_slots
from server.workflow.discovery import discover, failed_retry_delay
from tests.peers import LOCALHOST, OrthancPeer, require

pytestmark = pytest.mark.peer

A_DOMAIN, B_DOMAIN = "2.999.77.1", "2.999.77.2"
A_ID, B_ID = "IPP-A-7001", "IPP-B-7001"
DEAD_TIMEOUT = 2.0


@dataclass
class Region:
    a: OrthancPeer
    b: OrthancPeer
    shared: GeneratedStudy  # 3 instances at A, 2 at B
    only_a_ct: GeneratedStudy
    only_a_mr: GeneratedStudy
    other_patient: GeneratedStudy  # same site, another patient


def _person(local_id: str, issuer: str, domain: str) -> DemoPatient:
    return DemoPatient(local_id, issuer, domain, "BERTRAND", "Élise", "19610412", "F")


def _as_b(study: GeneratedStudy, out: Path) -> list[Path]:
    """The study's files as site B knows the patient (its own local ID)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for path in study.files:
        ds = pydicom.dcmread(path)
        ds.PatientID = B_ID
        ds.IssuerOfPatientID = "HOPITAL_B"
        target = out / path.name
        ds.save_as(target)
        paths.append(target)
    return paths


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    require("Orthanc", "orthanc")
    root = tmp_path_factory.mktemp("region")
    a_patient = _person(A_ID, "HOPITAL_A", A_DOMAIN)
    ct = SeriesSpec("CT", "Thorax", 3, 32, 32)

    def make(who: DemoPatient, seed: int, accession: str, modality: str = "CT") -> Any:
        series = ct if modality == "CT" else SeriesSpec(modality, "T1", 2, 32, 32)
        spec = StudySpec(who, "20240301", "Bilan", (series,), accession)
        return generate_study(spec, root / "gen", seed=seed)

    shared = make(a_patient, 771, "ACC-771")
    only_a_ct = make(a_patient, 772, "ACC-772")
    only_a_mr = make(a_patient, 773, "ACC-773", "MR")
    other = make(_person("IPP-A-7002", "HOPITAL_A", A_DOMAIN), 774, "ACC-774")
    with OrthancPeer("HOPITAL_A") as a, OrthancPeer("HOPITAL_B", dicomweb=True) as b:
        a.upload(shared.files + only_a_ct.files + only_a_mr.files + other.files)
        b.upload(_as_b(shared, root / "b")[:2])
        yield Region(a, b, shared, only_a_ct, only_a_mr, other)


def _site(name: str, port: int, domain: str, **options: object) -> Site:
    return Site(
        name, name.upper().replace("-", "_"), LOCALHOST, port, domain, **options
    )


def _endpoint(region: Region) -> Endpoint:
    return Endpoint(f"{region.b.url}/dicom-web", timeout=10.0)


# Direct queries: Patient Root C-FIND and QIDO-RS against Orthanc.


def test_query_studies_patient_root_same_studies_as_study_root(region: Region) -> None:
    def uids(model: str) -> dict[str, tuple[str | None, int | None]]:
        result = query_studies(
            calling_ae="SPIDERS",
            ae_title="HOPITAL_A",
            host=LOCALHOST,
            port=region.a.dicom_port,
            patient_id=A_ID,
            timeout=10.0,
            query_model=model,
        )
        return {
            s.study_uid: (s.patient_birth_date, s.num_instances) for s in result.studies
        }

    expected = {
        region.shared.study_uid: ("19610412", 3),
        region.only_a_ct.study_uid: ("19610412", 3),
        region.only_a_mr.study_uid: ("19610412", 2),
    }
    assert uids("study") == expected
    assert uids("patient") == expected


def test_search_for_studies_qido_rs_mapped_exactly(region: Region) -> None:
    result = search_for_studies(_endpoint(region), B_ID)

    [study] = result.studies
    assert (study.study_uid, study.patient_id, study.accession_number) == (
        region.shared.study_uid,
        B_ID,
        "ACC-771",
    )
    assert (study.modalities, study.num_series, study.num_instances) == (("CT",), 1, 2)
    assert (study.patient_birth_date, study.study_date) == ("19610412", "20240301")
    assert study.patient_name is not None and study.patient_name.startswith("BERTRAND^")
    assert result.queries[0].startswith(f"{region.b.url}/dicom-web/studies?".encode())


def test_search_for_studies_unknown_path_is_peer_error(region: Region) -> None:
    with pytest.raises(PeerError, match="answered HTTP 404"):
        search_for_studies(Endpoint(f"{region.b.url}/no-such-root"), B_ID)


def test_search_for_studies_silent_server_times_out(region: Region) -> None:
    with socket.socket() as silent:
        silent.bind((LOCALHOST, 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(PeerError, match="did not answer in time"):
            search_for_studies(
                Endpoint(f"http://{LOCALHOST}:{port}", timeout=1.0), B_ID
            )
        assert time.monotonic() - started < 3.0


def test_query_studies_hint_of_another_patient_finds_nothing_more(
    region: Region,
) -> None:
    # Identity safety: the hint names another patient's study at the same
    # site; PatientID stays a key, so it is not returned.
    result = query_studies(
        calling_ae="SPIDERS",
        ae_title="HOPITAL_A",
        host=LOCALHOST,
        port=region.a.dicom_port,
        patient_id=A_ID,
        timeout=10.0,
        study_uids=[region.other_patient.study_uid, region.only_a_mr.study_uid],
        accession_numbers=["ACC-774"],
    )

    assert region.other_patient.study_uid not in {s.study_uid for s in result.studies}
    assert len(result.queries) == 3
    assert result.ignored == 0


# The whole discovery, through the database.


# Registered six hours before the discoveries below, a week before its meeting.
CREATED = datetime(2025, 6, 2, 3, 0, tzinfo=UTC)
MEETING = datetime(2025, 6, 9, 14, 0, tzinfo=UTC)


def _registration(
    rt: Runtime, hints: dict[str, list[str]], meeting: datetime = MEETING
) -> str:
    with rt.db.session() as session:
        patient = Patient(
            id="p-7001",
            family_name="BERTRAND",
            given_names="Élise",
            birth_date=date(1961, 4, 12),
        )
        patient.identifiers = [
            PatientIdentifier(system=A_DOMAIN, value=A_ID),
            PatientIdentifier(system=B_DOMAIN, value=B_ID),
        ]
        session.add(
            Registration(
                id="r-7001",
                status="booked",
                patient=patient,
                hints=hints,
                created_at=CREATED,
                meeting_start=meeting,
            )
        )
    return "r-7001"


def _region_settings(rt: Runtime, region: Region, hung_port: int) -> Settings:
    sites = (
        _site("site-a", region.a.dicom_port, A_DOMAIN),
        _site(
            "site-b",
            region.b.dicom_port,
            B_DOMAIN,
            query="qido-rs",
            dicomweb_url=f"{region.b.url}/dicom-web",
        ),
        _site("site-dead", hung_port, A_DOMAIN, timeout=DEAD_TIMEOUT),
        _site(
            "site-maint",
            region.a.dicom_port,
            B_DOMAIN,
            maintenance=(
                MaintenanceWindow(frozenset(range(1, 8)), *_times("10:00", "12:00")),
            ),
        ),
    )
    return dataclasses.replace(rt.settings, directory=Directory(sites=sites))


def _times(start: str, end: str) -> tuple[object, object]:
    from datetime import time as clock

    return clock.fromisoformat(start), clock.fromisoformat(end)


def _discover(rt: Runtime, settings: Settings, registration_id: str) -> float:
    # 11:00 in Paris (summer time): inside site-maint's window.
    now = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
    started = time.monotonic()
    with rt.db.session() as session:
        registration = session.get(Registration, registration_id)
        assert registration is not None
        discover(settings, session, registration, now=now)
    return time.monotonic() - started


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def test_discover_region_dedupe_dead_site_and_maintenance(
    rt: Runtime, region: Region, hung_port: int
) -> None:
    settings = _region_settings(rt, region, hung_port)
    reg_id = _registration(rt, {})

    elapsed = _discover(rt, settings, reg_id)

    with rt.db.session() as session:
        reg = session.get(Registration, reg_id)
        assert reg is not None
        rows = {q.site_name: (q.status, q.studies_found) for q in reg.site_queries}
        reasons = {q.site_name: q.reason for q in reg.site_queries}
        candidates = {
            c.study_uid: (c.site_name, c.num_instances, c.also_at, c.hinted)
            for c in reg.candidates
        }
        rediscover_at = reg.rediscover_at
    assert rows == {
        "site-a": ("ok", 3),
        "site-b": ("ok", 1),
        "site-dead": ("failed", 0),
        "site-maint": ("maintenance", 0),
    }
    # Asked again when the window ends: 12:00 in Paris is 10:00 UTC.
    assert rediscover_at == datetime(2025, 6, 2, 10, 0, tzinfo=UTC)
    assert reasons["site-maint"] == (
        "in a maintenance window until 2025-06-02 12:00 (Europe/Paris); not queried"
    )
    # The shared study is one candidate, from the site with all 3 instances.
    assert candidates == {
        region.shared.study_uid: (
            "site-a",
            3,
            [{"site": "site-b", "instances": 2}],
            None,
        ),
        region.only_a_ct.study_uid: ("site-a", 3, None, None),
        region.only_a_mr.study_uid: ("site-a", 2, None, None),
    }
    # The dead site cost its own time-out, once, not more.
    assert elapsed < DEAD_TIMEOUT + 4.0


@pytest.mark.parametrize(
    ("meeting", "again"),
    [
        # Six hours old: asked again in half that, at most two hours...
        (MEETING, datetime(2025, 6, 2, 11, 0, tzinfo=UTC)),
        # ... unless the meeting has started by then.
        (datetime(2025, 6, 2, 11, 0, tzinfo=UTC), None),
    ],
)
def test_discover_failed_site_asked_again_later(
    rt: Runtime, meeting: datetime, again: datetime | None, hung_port: int
) -> None:
    site = _site("site-down", hung_port, A_DOMAIN, timeout=1)
    settings = dataclasses.replace(rt.settings, directory=Directory(sites=(site,)))
    reg_id = _registration(rt, {}, meeting=meeting)

    _discover(rt, settings, reg_id)

    with rt.db.session() as session:
        reg = session.get(Registration, reg_id)
        assert reg is not None
        assert [(q.site_name, q.status) for q in reg.site_queries] == [
            ("site-down", "failed")
        ]
        assert reg.rediscover_at == again
    env = {"SPIDERS_DATA_DIR": str(rt.settings.data_dir), "COLUMNS": "200"}
    lines = CliRunner().invoke(main, ["status"], env=env).output.splitlines()
    assert [x for x in lines if x.startswith("  site site-down failed: ")] != []
    asked = [x for x in lines if x.startswith("  sites asked again at ")]
    assert asked == (
        [f"  sites asked again at {again:%Y-%m-%d %H:%M} UTC"] if again else []
    )


def test_failed_retry_delay_grows_with_the_case_age() -> None:
    now = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
    delays = [
        failed_retry_delay(now - timedelta(minutes=age), now)
        for age in (0, 30, 120, 600)
    ]
    assert delays == [
        timedelta(minutes=10),
        timedelta(minutes=15),
        timedelta(hours=1),
        timedelta(hours=2),
    ]


def test_discover_hints_mark_and_select_hinted_study(
    rt: Runtime, region: Region, hung_port: int
) -> None:
    settings = _region_settings(rt, region, hung_port)
    reg_id = _registration(
        rt,
        {
            "studyInstanceUIDs": [region.only_a_mr.study_uid],
            "accessionNumbers": ["ACC-771", "ACC-774"],
        },
    )

    _discover(rt, settings, reg_id)

    with rt.db.session() as session:
        reg = session.get(Registration, reg_id)
        assert reg is not None
        chosen = {
            c.study_uid: (bool(c.hinted), c.selected, c.selected_by)
            for c in reg.candidates
        }
    assert chosen == {
        region.shared.study_uid: (True, True, "hint"),
        region.only_a_ct.study_uid: (False, False, None),
        region.only_a_mr.study_uid: (True, True, "hint"),
    }


def test_discover_site_with_every_slot_taken_is_busy_and_asked_again(
    rt: Runtime, region: Region
) -> None:
    site = _site("site-a", region.a.dicom_port, A_DOMAIN, max_associations=1, timeout=1)
    settings = dataclasses.replace(rt.settings, directory=Directory(sites=(site,)))
    reg_id = _registration(rt, {})
    held = site_slots.acquire(rt.db, "site-a", 1, seconds=60, holder="other:1")
    assert held is not None
    now = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
    with rt.db.session() as session:
        registration = session.get(Registration, reg_id)
        assert registration is not None
        discover(settings, session, registration, now=now, db=rt.db)
        rows = [(q.site_name, q.status, q.reason) for q in registration.site_queries]
        assert registration.rediscover_at == datetime(2025, 6, 2, 9, 0, 30, tzinfo=UTC)
    assert rows == [
        (
            "site-a",
            "busy",
            "all 1 association(s) with the site were in use for 1 s; "
            "asked again in 30 s",
        )
    ]
    # Once the slot is free, the query holds it and gives it back.
    site_slots.release(rt.db, held)
    with rt.db.session() as session:
        registration = session.get(Registration, reg_id)
        assert registration is not None
        discover(settings, session, registration, now=now, db=rt.db)
        assert [(q.status, q.studies_found) for q in registration.site_queries] == [
            ("ok", 3)
        ]
        assert registration.rediscover_at is None
    with rt.db.session() as session:
        uses = session.scalars(select(SiteSlotUse).order_by(SiteSlotUse.id)).all()
        assert [(u.holder, u.ended_at is not None) for u in uses] == [
            ("other:1", True),
            (site_slots.worker_id(), True),
        ]


def test_dispatch_sends_discovery_again_when_due(rt: Runtime) -> None:
    reg_id = _registration(rt, {})
    with rt.db.session() as session:
        registration = session.get(Registration, reg_id)
        assert registration is not None
        registration.discovery = "done"
        registration.rediscover_at = datetime(2025, 6, 2, 10, 0, tzinfo=UTC)
    tasks.dispatch_due()
    with rt.db.session() as session:
        registration = session.get(Registration, reg_id)
        assert registration is not None
        assert (registration.discovery, registration.rediscover_at) == ("queued", None)
