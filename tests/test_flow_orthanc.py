"""The registration flow with two Orthanc instances as the sites' PACS.

Orthanc (Debian package) plays two producing sites, each with its own patient
ID domain; SPIDERS runs as ``spiders serve`` with a sites file naming them.
The registered patient has studies at both sites under two local IDs; a
homonym has a study at the first site. Also covers ``spiders retrieve``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.demo import run as demo
from server.demo.studies import (
    DemoPatient,
    GeneratedStudy,
    SeriesSpec,
    StudySpec,
    generate_study,
)
from tests.flow_support import assert_all_audit_valid, cached_counts, start_server
from tests.peers import OrthancPeer, free_port, require

pytestmark = pytest.mark.peer

INS = "urn:oid:1.2.250.1.213.1.4.8"
A_DOMAIN, B_DOMAIN = "2.999.5.1", "2.999.5.2"


@dataclass
class OrthancFlow:
    root: Path
    server: demo.Server
    sites_file: Path
    dicom_port: int
    site_a: OrthancPeer
    site_b: OrthancPeer
    wanted: dict[str, int]
    homonym: GeneratedStudy
    old: GeneratedStudy
    final: dict[str, Any]


def person(local_id: str, issuer: str, domain: str) -> DemoPatient:
    return DemoPatient(
        local_id, issuer, domain, "MARTIN-DUPRÉ", "Anaïs", "19640229", "F"
    )


def study(
    tmp: Path, who: DemoPatient, days: int, seed: int, series: tuple[SeriesSpec, ...]
) -> GeneratedStudy:
    when = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y%m%d")
    return generate_study(StudySpec(who, when, "Bilan", series), tmp, seed=seed)


@pytest.fixture(scope="module")
def orthanc_flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancFlow]:
    require("Orthanc", "orthanc")
    root = tmp_path_factory.mktemp("orthanc-flow")
    gen = root / "generated"
    a_patient = person("IPP-A-5501", "HOPITAL_A", A_DOMAIN)
    b_patient = person("IPP-B-0777", "HOPITAL_B", B_DOMAIN)
    twin = person("IPP-A-5502", "HOPITAL_A", A_DOMAIN)
    ct = SeriesSpec("CT", "Thorax", 12, 256, 256)
    mr = SeriesSpec("MR", "T2", 8, 256, 256)
    a_ct = study(
        gen, a_patient, 40, 501, (ct, SeriesSpec("CT", "Abdomen", 6, 256, 256))
    )
    b_mr = study(gen, b_patient, 100, 502, (mr,))
    old = study(gen, a_patient, 2000, 503, (ct,))
    homonym = study(gen, twin, 10, 504, (ct,))
    dicom_port = free_port()
    spiders = {"spiders": ("SPIDERS", "127.0.0.1", dicom_port)}
    with (
        OrthancPeer("HOPITAL_A", spiders) as site_a,
        OrthancPeer("HOPITAL_B", spiders) as site_b,
    ):
        assert site_a.upload(a_ct.files + old.files + homonym.files) == 42
        assert site_b.upload(b_mr.files) == 8
        sites_file = root / "sites.yaml"
        sites_file.write_text(
            yaml.safe_dump(
                {
                    "sites": [
                        {
                            "name": "hopital-a",
                            "ae_title": "HOPITAL_A",
                            "host": "127.0.0.1",
                            "port": site_a.dicom_port,
                            "patient_id_domain": A_DOMAIN,
                        },
                        {
                            "name": "hopital-b",
                            "ae_title": "HOPITAL_B",
                            "host": "127.0.0.1",
                            "port": site_b.dicom_port,
                            "patient_id_domain": B_DOMAIN,
                        },
                    ]
                }
            ),
            encoding="utf-8",
        )
        server = start_server(root, sites_file, dicom_port=dicom_port)
        try:
            final = register(server)
            yield OrthancFlow(
                root,
                server,
                sites_file,
                dicom_port,
                site_a,
                site_b,
                {a_ct.study_uid: 18, b_mr.study_uid: 8},
                homonym,
                old,
                final,
            )
        finally:
            server.stop()


def register(server: demo.Server) -> dict[str, Any]:
    for ins, ids in (
        ("264029912345601", (("IPP-A-5501", A_DOMAIN), ("IPP-B-0777", B_DOMAIN))),
        ("264029998765402", (("IPP-A-5502", A_DOMAIN),)),
    ):
        status, patient = server.request(
            "POST",
            "/fhir/Patient",
            {
                "resourceType": "Patient",
                "identifier": [{"system": INS, "value": ins}]
                + [
                    {"system": f"urn:oid:{domain}", "value": value}
                    for value, domain in ids
                ],
                "name": [{"family": "MARTIN-DUPRÉ", "given": ["Anaïs"]}],
                "birthDate": "1964-02-29",
            },
        )
        assert status == 201, patient
        if len(ids) == 2:
            patient_id = patient["id"]
    meeting = datetime.now(UTC) + timedelta(hours=5)
    status, appt = server.request(
        "POST",
        "/fhir/Appointment",
        demo.scenario.appointment_resource(
            patient_id,
            meeting.isoformat(),
            (meeting + timedelta(hours=1)).isoformat(),
            "ORTHANC",
        ),
    )
    assert status == 201, appt
    final = demo.follow(server, {"case": appt["id"]}, None, timeout=120)
    return dict(final["case"])


def test_orthanc_flow_case_ready_with_exact_studies(orthanc_flow: OrthancFlow) -> None:
    reg = orthanc_flow.final
    assert reg["state"] == "ready", reg
    fetched = {
        c["studyInstanceUID"]: (c["site"], c["prefetch"]["receivedInstances"])
        for c in reg["candidates"]
        if c["prefetch"]
    }
    a_uid, b_uid = list(orthanc_flow.wanted)
    assert fetched == {a_uid: ("hopital-a", 18), b_uid: ("hopital-b", 8)}
    found = {c["studyInstanceUID"]: c for c in reg["candidates"]}
    assert found[a_uid]["numberOfSeries"] == 2
    assert found[a_uid]["modalities"] == ["CT"]
    assert not found[orthanc_flow.old.study_uid]["selected"]


def test_orthanc_flow_cache_holds_exactly_the_selected_studies(
    orthanc_flow: OrthancFlow,
) -> None:
    cached = cached_counts(orthanc_flow.root / "spiders")
    assert cached == orthanc_flow.wanted
    assert orthanc_flow.homonym.study_uid not in cached


def test_orthanc_flow_audit_valid(orthanc_flow: OrthancFlow) -> None:
    rows = assert_all_audit_valid(orthanc_flow.root / "spiders")
    events = [(e, a) for e, a, _ in rows]
    assert events.count(("110112", "E")) == 2
    assert ("110104", "C") in events


def spiders_cli(
    flow: OrthancFlow, *args: str, ae_title: str = "SPIDERS"
) -> subprocess.CompletedProcess[str]:
    env = demo.environ_without_settings()
    env.update(
        {
            "SPIDERS_DATA_DIR": str(flow.root / "spiders"),
            "SPIDERS_SITES_FILE": str(flow.sites_file),
            "SPIDERS_AE_TITLE": ae_title,
            "SPIDERS_DICOM_PORT": str(flow.dicom_port),
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_retrieve_command_pulls_one_study_again(orthanc_flow: OrthancFlow) -> None:
    uid = next(iter(orthanc_flow.wanted))
    proc = spiders_cli(orthanc_flow, "retrieve", "--site", "hopital-a", "--study", uid)
    assert proc.returncode == 0, proc.stderr
    said = " ".join(proc.stderr.split())
    assert "success: the site reported success (0x0000)" in said
    assert "cache holds 18 instance(s) of the study (0 new)" in said


def test_retrieve_command_unknown_site_exits_2(orthanc_flow: OrthancFlow) -> None:
    proc = spiders_cli(orthanc_flow, "retrieve", "--site", "nowhere", "--study", "1.2")
    assert proc.returncode == 2
    assert "no site named 'nowhere'" in proc.stderr


def test_retrieve_command_destination_unknown_to_site_fails_at_once(
    orthanc_flow: OrthancFlow,
) -> None:
    uid = next(iter(orthanc_flow.wanted))
    proc = spiders_cli(
        orthanc_flow,
        "retrieve",
        "--site",
        "hopital-a",
        "--study",
        uid,
        ae_title="UNKNOWN_AE",
    )
    assert proc.returncode == 1
    # Orthanc 1.10 answers an unknown move destination with 0xC000, not 0xA801.
    said = " ".join(proc.stderr.split())
    assert "unable_to_process: the site could not process the retrieve (0xC000)" in (
        said
    ), said
    assert "(0 new)" in said
