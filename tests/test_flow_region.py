"""A region of four sites, one of which crashes mid-retrieve and one that does
not know the cache.

Three private Orthanc instances are retrieved from by C-MOVE (``site-a``),
C-GET (``site-b``) and WADO-RS after a QIDO-RS search (``site-c``, through
the DICOMweb plugin); dcmtk's ``dcmqrscp`` is a fourth site (``site-d``)
whose configuration does not list SPIDERS as a move destination. Each site
has its own patient ID domain; one patient, known at the four sites, is
registered with one study at each (the ``site-d`` study is named by the
Appointment, since ``dcmqrscp`` does not return ModalitiesInStudy for the
rule to select it).

While the C-MOVE of the ``site-a`` study (3 series of 80 instances) is under
way, that Orthanc is killed once part of the study is cached, and started
again on the same ports and storage two seconds later. The retry (1 s
backoff base through ``SPIDERS_RETRY_BASE_SECONDS``) must ask only for what
is missing: the Storage SCP's 110104 audit records, which count what each
association delivered, must add up to exactly the study's instance count.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from server.config import load_settings
from server.demo import run as demo
from server.demo import scenario
from server.demo.studies import (
    DemoPatient,
    GeneratedStudy,
    SeriesSpec,
    StudySpec,
    generate_study,
)
from tests.flow_support import assert_all_audit_valid
from tests.peers import DcmQrScp, OrthancPeer, free_port, require

pytestmark = pytest.mark.peer

INS = "urn:oid:1.2.250.1.213.1.4.8"
DICOM_UID = "urn:dicom:uid"
LOCALHOST = "127.0.0.1"
SERIES_A = (80, 80, 80)
INSTANCES_STORED = re.compile(r'NumberOfInstances="(\d+)"')
RESUME_AFTER_SECONDS = 2.0
FLOW_TIMEOUT = 150


@dataclass(frozen=True)
class SiteDef:
    name: str
    ae_title: str
    domain: str
    local_id: str


SITES = (
    SiteDef("site-a", "SITE_A", "2.999.41.1", "A-1001"),
    SiteDef("site-b", "SITE_B", "2.999.41.2", "B-2002"),
    SiteDef("site-c", "SITE_C", "2.999.41.3", "C-3003"),
    SiteDef("site-d", "SITE_D", "2.999.41.4", "D-4004"),
)


@dataclass
class Region:
    root: Path
    engine: Engine
    studies: dict[str, GeneratedStudy]
    final: dict[str, Any]


def make_studies(root: Path) -> dict[str, GeneratedStudy]:
    """One study per site for the same person, each under the site's own ID."""
    when = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y%m%d")
    series = {
        "site-a": tuple(
            SeriesSpec("CT", f"Thorax {n + 1}", count, 32, 32)
            for n, count in enumerate(SERIES_A)
        ),
        "site-b": (
            SeriesSpec("CT", "Abdomen", 6, 32, 32),
            SeriesSpec("CT", "Pelvis", 4, 32, 32),
        ),
        "site-c": (SeriesSpec("MR", "T2", 5, 32, 32),),
        "site-d": (SeriesSpec("CT", "Crane", 3, 32, 32),),
    }
    made = {}
    for n, site in enumerate(SITES):
        who = DemoPatient(
            site.local_id,
            site.ae_title,
            site.domain,
            "BERNARD",
            "Louise",
            "19610305",
            "F",
        )
        spec = StudySpec(who, when, "Bilan", series[site.name], f"ACC{n}")
        made[site.name] = generate_study(spec, root / site.name, seed=4100 + n)
    return made


def sites_yaml(
    path: Path, a: OrthancPeer, b: OrthancPeer, c: OrthancPeer, d: DcmQrScp
) -> None:
    entries: list[dict[str, Any]] = []
    for site, port, extra in (
        (SITES[0], a.dicom_port, {"retrieve": "c-move"}),
        (SITES[1], b.dicom_port, {"retrieve": "c-get"}),
        (
            SITES[2],
            c.dicom_port,
            {
                "query": "qido-rs",
                "retrieve": "wado-rs",
                "dicomweb": {"url": f"{c.url}/dicom-web"},
            },
        ),
        (SITES[3], d.port, {"retrieve": "c-move"}),
    ):
        entries.append(
            {
                "name": site.name,
                "ae_title": site.ae_title,
                "host": LOCALHOST,
                "port": port,
                "patient_id_domain": site.domain,
                "timeout": 10,
                **extra,
            }
        )
    path.write_text(yaml.safe_dump({"sites": entries}), encoding="utf-8")


def start_server(root: Path, sites_file: Path, dicom_port: int) -> demo.Server:
    """``spiders serve`` with the retry delay starting at 1 s."""
    http_port = free_port()
    env = demo.server_env(
        load_settings({}), root / "spiders", sites_file, http_port, dicom_port
    )
    env["SPIDERS_LOG_LEVEL"] = "INFO"
    env["SPIDERS_RETRY_BASE_SECONDS"] = "1"
    server = demo.Server(env, http_port, root / "spiders.log")
    server.wait_ready()
    return server


def register(server: demo.Server, hinted: str) -> str:
    status, patient = server.request(
        "POST",
        "/fhir/Patient",
        {
            "resourceType": "Patient",
            "identifier": [{"system": INS, "value": "261036912345678"}]
            + [
                {"system": f"urn:oid:{site.domain}", "value": site.local_id}
                for site in SITES
            ],
            "name": [{"family": "BERNARD", "given": ["Louise"]}],
            "birthDate": "1961-03-05",
        },
    )
    assert status == 201, patient
    meeting = datetime.now(UTC) + timedelta(hours=5)
    appointment = scenario.appointment_resource(
        patient["id"],
        meeting.isoformat(),
        (meeting + timedelta(hours=1)).isoformat(),
        "REGION",
    )
    appointment["supportingInformation"] = [
        {"identifier": {"system": DICOM_UID, "value": f"urn:oid:{hinted}"}}
    ]
    status, appt = server.request("POST", "/fhir/Appointment", appointment)
    assert status == 201, appt
    return str(appt["id"])


def cached_uids(engine: Engine, study_uid: str) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT sop_instance_uid FROM cached_instance WHERE study_uid = :u"),
            {"u": study_uid},
        )
        return {row[0] for row in rows}


def stored_by_audit(engine: Engine, study_uid: str) -> int:
    """Instances received for a study, summed over the 110104 records (one per
    study and association for the Storage SCP, per retrieve for C-GET and
    WADO-RS), whether new or replacing a copy."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT xml FROM audit_record WHERE event_id = '110104' "
                "AND xml LIKE :uid"
            ),
            {"uid": f"%{study_uid}%"},
        ).scalars()
        return sum(int(n) for xml in rows for n in INSTANCES_STORED.findall(xml))


def halt_mid_retrieve(engine: Engine, study: GeneratedStudy, site: OrthancPeer) -> None:
    """Kill `site` once more than a series' worth of `study` is cached, and not
    all of it; start it again :data:`RESUME_AFTER_SECONDS` later."""
    total = sum(SERIES_A)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        held = len(cached_uids(engine, study.study_uid))
        if held >= total:
            raise AssertionError("the study was cached whole before it could be cut")
        if held > SERIES_A[0]:
            site.halt()
            time.sleep(RESUME_AFTER_SECONDS)
            site.resume()
            return
        time.sleep(0.05)
    raise AssertionError("the C-MOVE of the big study never started")


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    require("Orthanc", "orthanc")
    root = tmp_path_factory.mktemp("region")
    studies = make_studies(root / "generated")
    dicom_port = free_port()
    spiders = {"spiders": ("SPIDERS", LOCALHOST, dicom_port)}
    with (
        OrthancPeer("SITE_A", spiders) as a,
        OrthancPeer("SITE_B") as b,
        OrthancPeer("SITE_C", dicomweb=True) as c,
        # Knows another AE as a move destination, not SPIDERS.
        DcmQrScp("SITE_D", {"VIEWER": (LOCALHOST, free_port())}) as d,
    ):
        assert a.upload(studies["site-a"].files) == sum(SERIES_A)
        assert b.upload(studies["site-b"].files) == 10
        assert c.upload(studies["site-c"].files) == 5
        assert d.load(studies["site-d"].files) == 3
        sites_file = root / "sites.yaml"
        sites_yaml(sites_file, a, b, c, d)
        server = start_server(root, sites_file, dicom_port)
        engine = create_engine(f"sqlite:///{root / 'spiders' / 'spiders.sqlite'}")
        try:
            case = register(server, studies["site-d"].study_uid)
            halt_mid_retrieve(engine, studies["site-a"], a)
            final = demo.follow(server, {"case": case}, None, timeout=FLOW_TIMEOUT)
            yield Region(root, engine, studies, dict(final["case"]))
        finally:
            server.stop()
            engine.dispose()


def prefetches(region: Region) -> dict[str, dict[str, Any]]:
    """Each site's prefetch, by site name."""
    return {
        c["site"]: c["prefetch"] for c in region.final["candidates"] if c["prefetch"]
    }


def test_region_three_studies_ready_with_exactly_the_sites_instances(
    region: Region,
) -> None:
    found = prefetches(region)
    assert region.final["state"] == "partial", region.final
    assert {name: p["state"] for name, p in found.items()} == {
        "site-a": "ready",
        "site-b": "ready",
        "site-c": "ready",
        "site-d": "failed",
    }
    for name in ("site-a", "site-b", "site-c"):
        study = region.studies[name]
        assert found[name]["receivedInstances"] == len(study.sop_instance_uids)
        assert found[name]["expectedInstances"] == len(study.sop_instance_uids)
        assert cached_uids(region.engine, study.study_uid) == set(
            study.sop_instance_uids
        )


def test_region_site_not_knowing_the_cache_failed_at_once_with_a801(
    region: Region,
) -> None:
    d = prefetches(region)["site-d"]
    assert d["attempts"] == 1
    assert d["reason"] == (
        "0 instance(s) received; the site announced no count; the site does "
        "not know this cache's AE title: SITE_D does not know move destination "
        "SPIDERS (0xA801)"
    )
    assert cached_uids(region.engine, region.studies["site-d"].study_uid) == set()


def test_region_site_killed_mid_retrieve_resumed_nothing_fetched_twice(
    region: Region,
) -> None:
    study = region.studies["site-a"]
    a = prefetches(region)["site-a"]
    # Killed mid-way (see halt_mid_retrieve), so at least one retry was needed.
    assert a["attempts"] >= 2
    assert cached_uids(region.engine, study.study_uid) == set(study.sop_instance_uids)
    assert stored_by_audit(region.engine, study.study_uid) == sum(SERIES_A)
    for name in ("site-b", "site-c"):
        other = region.studies[name]
        assert stored_by_audit(region.engine, other.study_uid) == len(
            other.sop_instance_uids
        )


def test_region_audit_records_all_schema_valid(region: Region) -> None:
    rows = assert_all_audit_valid(region.root / "spiders")
    events = [(event, action) for event, action, _ in rows]
    # Two queries at each site: by patient ID, and narrowed by the hinted UID.
    assert events.count(("110112", "E")) == 8
    # One Begin Transferring per retrieve attempt: one at each site but site-a.
    attempts_a = prefetches(region)["site-a"]["attempts"]
    assert events.count(("110102", "E")) == 3 + attempts_a
