"""End to end over HL7 v2: ``spiders serve`` takes an ADT and an SIU^S12 by MLLP."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from server.config import load_settings
from server.demo import run as demo
from tests.flow_support import assert_all_audit_valid
from tests.ihe.hl7v2.hl7v2_support import Client, adt, siu
from tests.peers import free_port

PID3 = (
    "40000160^^^CHU_BELLEVAL&2.999.1.9&ISO^PI"
    "~280019912300175^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS"
)


def test_flow_hl7_adt_then_siu_s12_registered_with_meeting_time(
    tmp_path: Path,
) -> None:
    sites = tmp_path / "sites.yaml"
    sites.write_text("sites: []\nconsoles: []\n", encoding="utf-8")
    http_port, mllp_port = free_port(), free_port()
    env = demo.server_env(
        load_settings({}), tmp_path / "data", sites, http_port, free_port(), mllp_port
    )
    server = demo.Server(env, http_port, tmp_path / "serve.log")
    try:
        server.wait_ready()
        with Client(mllp_port) as client:
            fed = client.exchange(adt("E2E-ADT-1", PID3, event="A28"))
            booked = client.exchange(
                siu("E2E-SIU-1", "S12", "RDV7001", PID3, "20250402143000")
            )
        assert fed.value("MSA-1") == "AA"
        assert (booked.value("MSA-1"), booked.value("MSA-2")) == ("AA", "E2E-SIU-1")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            (listed,) = server.get("/api/registrations")
            if listed["discovery"] == "done":
                break
            time.sleep(0.2)
        assert datetime.fromisoformat(listed["meetingStart"]) == datetime.fromisoformat(
            "2025-04-02T14:30:00+02:00"
        )
        assert listed["board"] == "Location?identifier=CHU_BELLEVAL|RCP-ONCO"
        assert listed["discovery"] == "done"
        patient = server.get(f"/fhir/{listed['patient']}")
        assert {i["value"] for i in patient["identifier"]} == {
            "40000160",
            "280019912300175",
        }
    finally:
        assert server.stop() == 0
    log = (tmp_path / "serve.log").read_text()
    assert "MLLP listener started" in log and "MLLP listener stopped" in log
    assert "Traceback" not in log
    assert "DUPONT" not in log and "40000160" not in log
    rows = assert_all_audit_valid(tmp_path / "data")
    events = [(event, action) for event, action, _ in rows]
    assert ("110110", "C") in events  # the ADT feed
    assert events[0] == ("110100", "E") and events[-1] == ("110100", "E")
