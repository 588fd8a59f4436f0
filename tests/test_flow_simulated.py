"""The whole registration flow on the simulated region, with dcmtk as the console.

Three simulated sites (real pynetdicom Q/R archives on loopback), ``spiders
serve`` as a child process, FHIR intake, and dcmtk's findscu, movescu and getscu
against the cache, as a console would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from server.demo import run as demo
from server.demo import scenario
from tests.flow_support import (
    assert_all_audit_valid,
    cached_counts,
    findscu_values,
    start_server,
)
from tests.peers import StoreSCP, require, run_dcmtk

pytestmark = pytest.mark.peer


@dataclass
class Flow:
    root: Path
    network: demo.DemoNetwork
    server: demo.Server
    cases: dict[str, str]
    final: dict[str, Any]
    console: StoreSCP
    dicom_port: int


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    require("findscu", "dcmtk")
    root = tmp_path_factory.mktemp("flow")
    network = demo.build_network(root)
    with StoreSCP(aet=demo.CONSOLE_AE) as console:
        dicom_port = demo.free_port()
        sites_file = root / "sites.yaml"
        demo.write_sites_file(sites_file, network, "SPIDERS", dicom_port, console.port)
        server = start_server(root, sites_file, dicom_port=dicom_port)
        try:
            meeting = datetime.now(UTC) + timedelta(hours=3)
            cases = demo.register_cases(server, meeting)
            final = demo.follow(server, cases, None, timeout=120)
            yield Flow(root, network, server, cases, final, console, dicom_port)
        finally:
            server.stop()
            network.stop()


def expected_studies(flow: Flow, person: str) -> dict[str, int]:
    return {
        made.study_uid: len(made.files)
        for study, made in flow.network.studies
        if study.person == person and study.expect_selected
    }


def test_flow_every_registered_case_ready_with_exact_counts(flow: Flow) -> None:
    for person in ("leveque", "desoeuvres"):
        reg = flow.final[person]
        assert reg["state"] == "ready", reg
        fetched = {
            c["studyInstanceUID"]: c["prefetch"]["receivedInstances"]
            for c in reg["candidates"]
            if c["prefetch"]
        }
        assert fetched == expected_studies(flow, person)
        for cand in reg["candidates"]:
            if cand["prefetch"]:
                assert cand["prefetch"]["state"] == "ready"
                assert (
                    cand["prefetch"]["expectedInstances"]
                    == cand["prefetch"]["receivedInstances"]
                )


def test_flow_patient_found_at_two_sites_under_two_local_ids(flow: Flow) -> None:
    reg = flow.final["leveque"]
    assert {s["site"]: s["status"] for s in reg["sites"]} == {
        "chu-nord": "ok",
        "ch-valmont": "ok",
        "clinique-sud": "no-identifier",
    }
    by_site = {}
    for cand in reg["candidates"]:
        by_site.setdefault(cand["site"], set()).add(cand["studyInstanceUID"])
    all_of = {
        site: {
            made.study_uid
            for study, made in flow.network.studies
            if study.person == "leveque" and study.site == site
        }
        for site in ("chu-nord", "ch-valmont")
    }
    assert by_site == all_of


def test_flow_rule_leaves_old_and_unselected_modalities_out(flow: Flow) -> None:
    reg = flow.final["leveque"]
    selected = {c["studyInstanceUID"] for c in reg["candidates"] if c["selected"]}
    not_selected = {
        made.study_uid
        for study, made in flow.network.studies
        if study.person == "leveque" and not study.expect_selected
    }
    assert len(not_selected) == 2
    assert not (selected & not_selected)
    assert all(c["selectedBy"] == "rule" for c in reg["candidates"] if c["selected"])


def test_flow_homonym_studies_never_in_cache(flow: Flow) -> None:
    homonym = {
        made.study_uid
        for study, made in flow.network.studies
        if study.person == "leveque-homonym"
    }
    assert len(homonym) == 2
    cached = cached_counts(flow.root / "spiders")
    assert not (homonym & set(cached))
    expected = {
        **expected_studies(flow, "leveque"),
        **expected_studies(flow, "desoeuvres"),
    }
    assert cached == expected


def test_flow_task_resources_report_each_prefetch(flow: Flow) -> None:
    reg_id = flow.cases["leveque"]
    bundle = flow.server.get(f"/fhir/Task?based-on=Appointment/{reg_id}")
    assert bundle["total"] == 2
    statuses = {e["resource"]["status"] for e in bundle["entry"]}
    assert statuses == {"completed"}
    from tests.fhir_schema import assert_valid_fhir

    assert_valid_fhir(bundle)


def test_console_findscu_study_level_answers_counts_from_cache(flow: Flow) -> None:
    study_uid, instances = next(iter(expected_studies(flow, "leveque").items()))
    series = {
        len(made.series_uids)
        for _, made in flow.network.studies
        if made.study_uid == study_uid
    }.pop()
    proc = run_dcmtk(
        "findscu",
        "-S",
        "-aet",
        demo.CONSOLE_AE,
        "-aec",
        "SPIDERS",
        "127.0.0.1",
        str(flow.dicom_port),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        "-k",
        "NumberOfStudyRelatedSeries",
        "-k",
        "NumberOfStudyRelatedInstances",
        "-k",
        "PatientName",
    )
    assert proc.returncode == 0, proc.stderr
    assert findscu_values(proc, "(0020,000d)") == [study_uid]
    assert findscu_values(proc, "(0020,1206)") == [str(series)]
    assert findscu_values(proc, "(0020,1208)") == [str(instances)]


def test_console_findscu_by_patient_id_lists_cached_studies(flow: Flow) -> None:
    proc = run_dcmtk(
        "findscu",
        "-S",
        "-aet",
        demo.CONSOLE_AE,
        "-aec",
        "SPIDERS",
        "127.0.0.1",
        str(flow.dicom_port),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "PatientID=NORD-100234",
        "-k",
        "StudyInstanceUID",
    )
    assert proc.returncode == 0, proc.stderr
    nord = {
        made.study_uid
        for study, made in flow.network.studies
        if study.person == "leveque"
        and study.site == "chu-nord"
        and study.expect_selected
    }
    assert set(findscu_values(proc, "(0020,000d)")) == nord


def test_console_movescu_pulls_study_to_console(flow: Flow) -> None:
    study_uid, instances = next(iter(expected_studies(flow, "desoeuvres").items()))
    proc = run_dcmtk(
        "movescu",
        "-S",
        "-aet",
        demo.CONSOLE_AE,
        "-aec",
        "SPIDERS",
        "-aem",
        demo.CONSOLE_AE,
        "127.0.0.1",
        str(flow.dicom_port),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(flow.console.files()) == instances


def test_console_movescu_to_unknown_destination_refused_a801(flow: Flow) -> None:
    study_uid = next(iter(expected_studies(flow, "desoeuvres")))
    proc = run_dcmtk(
        "movescu",
        "-v",
        "-S",
        "-aet",
        demo.CONSOLE_AE,
        "-aec",
        "SPIDERS",
        "-aem",
        "NOT_A_CONSOLE",
        "127.0.0.1",
        str(flow.dicom_port),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
    )
    # dcmtk names status 0xA801 "Refused: MoveDestinationUnknown".
    assert (
        "final move response (refused: movedestinationunknown)"
        in (proc.stdout + proc.stderr).lower()
    )
    from tests.flow_support import audit_rows

    alerts = [
        xml
        for event, _, xml in audit_rows(flow.root / "spiders")
        if event == "110113" and f"dicom://{demo.CONSOLE_AE}@" in xml
    ]
    assert len(alerts) == 1
    assert 'csd-code="110132"' in alerts[0]


def test_console_getscu_retrieves_study(flow: Flow, tmp_path: Path) -> None:
    study_uid, instances = next(iter(expected_studies(flow, "leveque").items()))
    out = tmp_path / "get"
    out.mkdir()
    proc = run_dcmtk(
        "getscu",
        "-S",
        "-aet",
        demo.CONSOLE_AE,
        "-aec",
        "SPIDERS",
        "127.0.0.1",
        str(flow.dicom_port),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        "-od",
        str(out),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.iterdir())) == instances


def test_flow_every_audit_message_valid_and_each_step_audited(flow: Flow) -> None:
    rows = assert_all_audit_valid(flow.root / "spiders")
    events = [(event, action) for event, action, _ in rows]
    assert events[0] == ("110100", "E")
    assert events.count(("110110", "C")) == len(scenario.PEOPLE)
    # One C-FIND per site where a registered patient has an identifier.
    queried = sum(len(p.local_ids) for p in scenario.PEOPLE if p.registered)
    queries = [xml for event, _, xml in rows if event == "110112"]
    console = [xml for xml in queries if f"AETITLES={demo.CONSOLE_AE}" in xml]
    assert len(queries) - len(console) == queried
    # The console's C-FINDs answered by the cache (the findscu tests above).
    assert len(console) >= 1
    # Reads of the registrations over HTTP (the demo follows their progress).
    assert ("110111", "R") in events
    assert events.count(("110111", "C")) == len(
        [p for p in scenario.PEOPLE if p.registered]
    )
    transferred = [e for e in events if e[0] == "110104"]
    assert len(transferred) >= 3


def test_flow_registration_trail_from_intake_to_console(flow: Flow) -> None:
    person = next(p for p in scenario.PEOPLE if p.key == "desoeuvres")
    selected = expected_studies(flow, "desoeuvres")

    bundle = flow.server.get(f"/api/registrations/{flow.cases['desoeuvres']}/audit")

    entries = [e["resource"] for e in bundle["entry"]]
    events = [(e["type"]["code"], e["action"]) for e in entries]
    assert events[:2] == [("110110", "C"), ("110111", "C")]
    assert events.count(("110112", "E")) == len(person.local_ids)
    assert events.count(("110102", "E")) >= len(selected)
    into_cache = {
        e["entity"][0]["what"]["identifier"]["value"]
        for e in entries
        if (e["type"]["code"], e["action"]) == ("110104", "C")
    }
    assert into_cache == set(selected)
    to_console = [
        e
        for e in entries
        if (e["type"]["code"], e["action"]) == ("110104", "R")
        and e["agent"][1]["who"]["identifier"]["value"] == demo.CONSOLE_AE
    ]
    assert to_console, events
    patients = {
        entity["what"].get("reference")
        for e in entries
        for entity in e.get("entity", [])
        if entity["role"]["code"] == "1"
    }
    assert len(patients) == 1 and None not in patients


def test_flow_logs_carry_no_patient_data(flow: Flow) -> None:
    log = (flow.root / "spiders.log").read_text(encoding="utf-8", errors="replace")
    assert "patient created in the index" in log
    lines = log.splitlines()
    assert len(lines) > 20
    for person in scenario.PEOPLE:
        birth = person.birth_date
        secrets = (
            person.family,
            person.given,
            person.ins,
            birth,
            f"{birth[:4]}-{birth[4:6]}-{birth[6:]}",
            *person.local_ids.values(),
        )
        for line in lines:
            for secret in secrets:
                assert secret.lower() not in line.lower(), (secret, line)


def test_status_command_shows_each_case_ready(flow: Flow) -> None:
    import subprocess
    import sys

    env = demo.environ_without_settings()
    env["SPIDERS_DATA_DIR"] = str(flow.root / "spiders")
    env["COLUMNS"] = "200"
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    studies = [x for x in lines if x.startswith("  ") and x.rstrip().endswith(" ready")]
    assert len(studies) == 3  # two studies of one case, one of the other
    for reg_id in flow.cases.values():
        header = next(x for x in lines if x.startswith(f"case {reg_id[:8]}"))
        assert header.endswith("  ready")
