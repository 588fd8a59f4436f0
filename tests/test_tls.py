"""TLS on every link of the flow: HTTPS intake, DICOM TLS to a site and back,
and the cache's listener refusing clients without a certificate from our CA.

A test CA is generated for the run. The site is a simulated archive listening
with TLS; ``spiders serve`` talks to it with the site's ``tls`` settings, and
the site sends the study back to the cache's TLS listener with its client
certificate.
"""

from __future__ import annotations

import base64
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from ihe.tls import client_context, server_context
from server.config import load_settings
from server.demo import run as demo
from server.demo import scenario
from server.demo.site import SimulatedSite
from server.demo.studies import GeneratedStudy, generate_study
from tests.peers import free_port, require, run_dcmtk
from tests.tls_ca import Issued, TestCA


@dataclass
class TlsRegion:
    ca: TestCA
    console: Issued
    server: demo.Server
    dicom_port: int
    http_port: int
    studies: list[GeneratedStudy]
    final: dict[str, object]
    data_dir: Path


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRegion]:
    tmp = tmp_path_factory.mktemp("tls")
    ca = TestCA(tmp / "pki")
    cache_cert, site_cert, console = (ca.issue(n) for n in ("cache", "site", "console"))
    who = scenario.person("desoeuvres")
    site_def = scenario.site("clinique-sud")
    site = SimulatedSite(site_def.name, site_def.ae_title, tmp / "site")
    made = [
        generate_study(s.spec, tmp / "gen", seed=s.seed)
        for s in scenario.studies(datetime.now(UTC).date())
        if s.person == who.key
    ]
    for study in made:
        site.load(study.files)
    dicom_port, http_port = free_port(), free_port()
    back = client_context(ca.pem, site_cert.cert, site_cert.key)
    site.destinations["SPIDERS"] = (
        "127.0.0.1",
        dicom_port,
        {"tls_args": (back, "127.0.0.1")},
    )
    site.start(free_port(), tls=server_context(site_cert.cert, site_cert.key, ca.pem))
    sites_file = tmp / "sites.yaml"
    sites_file.write_text(
        yaml.safe_dump(
            {
                "sites": [
                    {
                        "name": site.name,
                        "ae_title": site.ae_title,
                        "host": "127.0.0.1",
                        "port": site.port,
                        "patient_id_domain": site_def.domain,
                        "tls": {
                            "ca": str(ca.pem),
                            "cert": str(cache_cert.cert),
                            "key": str(cache_cert.key),
                        },
                    }
                ],
                "consoles": [
                    {
                        "name": "salle",
                        "ae_title": "CONSOLE",
                        "host": "127.0.0.1",
                        "port": 11113,
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    env = demo.server_env(
        load_settings({}), tmp / "data", sites_file, http_port, dicom_port
    )
    env.update(
        {
            "SPIDERS_HTTP_TLS_CERT": str(cache_cert.cert),
            "SPIDERS_HTTP_TLS_KEY": str(cache_cert.key),
            "SPIDERS_DICOM_TLS_CERT": str(cache_cert.cert),
            "SPIDERS_DICOM_TLS_KEY": str(cache_cert.key),
            "SPIDERS_DICOM_TLS_CLIENT_CA": str(ca.pem),
        }
    )
    https = ssl.create_default_context(cafile=str(ca.pem))
    server = demo.Server(env, http_port, tmp / "serve.log", tls=https)
    try:
        server.wait_ready()
        cases = demo.register_cases(server, datetime.now(UTC) + timedelta(hours=2))
        final = demo.follow(server, {who.key: cases[who.key]}, None, timeout=120)
        yield TlsRegion(
            ca, console, server, dicom_port, http_port, made, final, tmp / "data"
        )
    finally:
        server.stop()
        site.stop()


def test_tls_flow_over_https_and_dicom_tls_case_ready(region: TlsRegion) -> None:
    reg = region.final["desoeuvres"]
    assert isinstance(reg, dict)
    assert reg["state"] == "ready", reg
    received = {
        c["studyInstanceUID"]: c["prefetch"]["receivedInstances"]
        for c in reg["candidates"]
        if c["prefetch"]
    }
    assert received == {s.study_uid: len(s.files) for s in region.studies}


def test_tls_http_plain_connection_refused(region: TlsRegion) -> None:
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(
            f"http://127.0.0.1:{region.http_port}/healthz", timeout=5
        )


def test_tls_http_untrusted_client_refuses_our_certificate(region: TlsRegion) -> None:
    strict = ssl.create_default_context()  # system CAs only: our test CA unknown
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(
            f"https://127.0.0.1:{region.http_port}/healthz", timeout=5, context=strict
        )


@pytest.mark.peer
def test_tls_dicom_console_with_certificate_accepted(region: TlsRegion) -> None:
    proc = run_dcmtk(
        "echoscu",
        "+tls",
        str(region.console.key),
        str(region.console.cert),
        "+cf",
        str(region.ca.pem),
        "-aet",
        "CONSOLE",
        "-aec",
        "SPIDERS",
        "127.0.0.1",
        str(region.dicom_port),
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.peer
def test_tls_dicom_client_without_certificate_refused(region: TlsRegion) -> None:
    require("echoscu", "dcmtk")
    anonymous = run_dcmtk(
        "echoscu",
        "+tla",
        "+cf",
        str(region.ca.pem),
        "-aet",
        "CONSOLE",
        "-aec",
        "SPIDERS",
        "127.0.0.1",
        str(region.dicom_port),
    )
    assert anonymous.returncode != 0
    plain = run_dcmtk(
        "echoscu",
        "-aet",
        "CONSOLE",
        "-aec",
        "SPIDERS",
        "127.0.0.1",
        str(region.dicom_port),
        timeout=30,
    )
    assert plain.returncode != 0


@pytest.mark.peer
def test_tls_failed_handshakes_audited_as_security_alerts(region: TlsRegion) -> None:
    from tests.flow_support import audit_rows

    run_dcmtk(
        "echoscu",
        "+tla",
        "+cf",
        str(region.ca.pem),
        "-aet",
        "CONSOLE",
        "-aec",
        "SPIDERS",
        "127.0.0.1",
        str(region.dicom_port),
    )
    with pytest.raises(OSError):
        urllib.request.urlopen(
            f"http://127.0.0.1:{region.http_port}/healthz", timeout=5
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        detail = base64.b64encode(b"TLS handshake failed").decode()[:24]
        alerts = [
            xml
            for event, _, xml in audit_rows(region.data_dir)
            if event == "110113" and detail in xml
        ]
        links = {
            link
            for link in ("dicom://", "https://")
            if any(link in xml for xml in alerts)
        }
        if links == {"dicom://", "https://"}:
            break
        time.sleep(0.2)
    assert links == {"dicom://", "https://"}
    for xml in alerts:
        assert 'csd-code="110126"' in xml


def test_tls_every_audit_message_valid(region: TlsRegion) -> None:
    from tests.flow_support import assert_all_audit_valid

    rows = assert_all_audit_valid(region.data_dir)
    assert ("110104", "C") in [(event, action) for event, action, _ in rows]
