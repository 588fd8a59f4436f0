"""End to end: ``spiders serve`` answers PIX (ITI-9) and PDQ (ITI-21) queries
sent by python-hl7's ``mllp_send`` over MLLP, paging included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ihe.hl7v2 import er7, mllp
from server.config import load_settings
from server.demo import run as demo
from tests.flow_support import assert_all_audit_valid
from tests.ihe.hl7v2.hl7v2_support import Client
from tests.ihe.pix.query_support import feed, qbp_q22, qbp_q23, raw_field
from tests.peers import free_port, require

DOMAIN = "2.999.1.9"
INS_OID = "1.2.250.1.213.1.4.8"
PID3 = (
    f"40000160^^^CHU_BELLEVAL&{DOMAIN}&ISO^PI"
    f"~280019912300175^^^ASIP-SANTE-INS-NIR&{INS_OID}&ISO^INS"
)


def send(
    mllp_send: str, port: int, folder: Path, *payloads: bytes
) -> list[er7.Message]:
    """Send `payloads` with mllp_send; the responses, parsed, in order."""
    batch = folder / "batch.hl7"
    batch.write_bytes(b"".join(mllp.frame(p) for p in payloads))
    proc = subprocess.run(
        [mllp_send, "--file", str(batch), "--port", str(port), "127.0.0.1"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    answers = [line for line in proc.stdout.split(b"\n") if b"MSA|" in line]
    return [
        er7.parse_bytes(line.strip(b"\x0b\x1c\r"), "UNICODE UTF-8") for line in answers
    ]


@pytest.mark.peer
def test_flow_hl7_pix_and_pdq_queries_answered_by_spiders_serve(
    tmp_path: Path,
) -> None:
    mllp_send = require(str(Path(sys.executable).parent / "mllp_send"), "python3-hl7")
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
            feed(client, "E2E-A28-1", PID3, "Lévêque^Hélène^^^^^L")
            for n in range(3):
                feed(
                    client,
                    f"E2E-A28-B{n}",
                    f"4100016{n}^^^CHU_BELLEVAL&{DOMAIN}&ISO^PI",
                    f"BERNARD^Anne{n}^^^^^L",
                )
        pix, pdq, first = send(
            mllp_send,
            mllp_port,
            tmp_path,
            qbp_q23("E2E-Q23-1", f"40000160^^^CHU_BELLEVAL&{DOMAIN}&ISO"),
            qbp_q22("E2E-Q22-1", "@PID.5.1.1^LEVEQUE~@PID.7.1^19700101"),
            qbp_q22("E2E-Q22-2", "@PID.5.1.1^BERN*", limit="2^RD"),
        )
        pointer = first.value("DSC-1")
        (last,) = send(
            mllp_send,
            mllp_port,
            tmp_path,
            qbp_q22("E2E-Q22-3", "@PID.5.1.1^BERN*", limit="2^RD", pointer=pointer),
        )
    finally:
        assert server.stop() == 0
    assert raw_field(pix, "MSH", 9) == "RSP^K23^RSP_K23"
    assert (pix.value("MSA-1"), pix.value("MSA-2"), pix.value("QAK-2")) == (
        "AA",
        "E2E-Q23-1",
        "OK",
    )
    assert raw_field(pix, "PID", 3) == f"280019912300175^^^&{INS_OID}&ISO^INS"
    assert raw_field(pdq, "MSH", 9) == "RSP^K22^RSP_K21"
    assert (pdq.value("MSA-1"), pdq.value("QAK-2")) == ("AA", "OK")
    assert pdq.value("PID-5.1") == "Lévêque"
    assert [len(first.all("PID")), len(last.all("PID"))] == [2, 1]
    assert pointer and raw_field(first, "QAK", 6) == "1"
    assert last.segment("DSC") is None
    log = (tmp_path / "serve.log").read_text(encoding="utf-8")
    assert "query answered" in log and "Traceback" not in log
    for value in ("40000160", "280019912300175", "LEVEQUE", "Lévêque", "BERN"):
        assert value not in log
    rows = assert_all_audit_valid(tmp_path / "data")
    queries = [xml for event, _, xml in rows if event == "110112"]
    assert sum('csd-code="ITI-9"' in xml for xml in queries) == 1
    assert sum('csd-code="ITI-21"' in xml for xml in queries) == 3
