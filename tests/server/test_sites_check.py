"""``spiders sites check`` against two real Orthanc instances and a dead port.

Site A is an Orthanc told to refuse JPEG 2000; site B an Orthanc
with default transfer syntaxes and the DICOMweb plugin, queried by QIDO-RS;
the third site's port has nobody listening.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from server.cli import main
from tests.peers import LOCALHOST, OrthancPeer, free_port, require

# pynetdicom 3.0.4 leaves the refused socket of the dead site to the garbage
# collector (its shutdown() of the unconnected socket raises before close()).
pytestmark = [
    pytest.mark.peer,
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

ALL_SYNTAXES = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
]
WITHOUT_J2K = [
    uid
    for uid in ALL_SYNTAXES
    if uid not in {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
]


def _site(name: str, port: int, **options: Any) -> dict[str, Any]:
    return {
        "name": name,
        "ae_title": name.upper().replace("-", "_"),
        "host": LOCALHOST,
        "port": port,
        "patient_id_domain": "2.999.88.1",
        "timeout": 5,
        **options,
    }


@pytest.fixture(scope="module")
def sites_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    require("Orthanc", "orthanc")
    root = tmp_path_factory.mktemp("sites-check")
    refuse = {"Jpeg2000TransferSyntaxAccepted": False}
    with (
        OrthancPeer("SITE_A", extra_config=refuse) as a,
        OrthancPeer("SITE_B", dicomweb=True) as b,
    ):
        sites_file = root / "sites.yaml"
        sites = [
            _site("site-a", a.dicom_port),
            _site(
                "site-b",
                b.dicom_port,
                query="qido-rs",
                dicomweb={"url": f"{b.url}/dicom-web"},
            ),
            _site("site-dead", free_port()),
        ]
        sites_file.write_text(yaml.safe_dump({"sites": sites}), encoding="utf-8")
        yield {
            "SPIDERS_SITES_FILE": str(sites_file),
            "SPIDERS_DATA_DIR": str(root / "var"),
        }


def _run(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(main, ["sites", "check", *args], env=env)


def test_sites_check_json_exact_values(sites_env: dict[str, str]) -> None:
    result = _run(sites_env, "--json")

    assert result.exit_code == 1, result.output
    checks = json.loads(result.stdout)
    dead_port = yaml.safe_load(Path(sites_env["SPIDERS_SITES_FILE"]).read_text())[
        "sites"
    ][2]["port"]
    latencies = [c.pop("latency_ms") for c in checks]
    web_latency = checks[1]["dicomweb"].pop("latency_ms")
    url = checks[1]["dicomweb"].pop("url")
    assert checks == [
        {
            "site": "site-a",
            "reachable": True,
            "tls": False,
            "transfer_syntaxes": WITHOUT_J2K,
            "dicomweb": None,
            "error": None,
        },
        {
            "site": "site-b",
            "reachable": True,
            "tls": False,
            "transfer_syntaxes": ALL_SYNTAXES,
            "dicomweb": {"status": 200},
            "error": None,
        },
        {
            "site": "site-dead",
            "reachable": False,
            "tls": False,
            "transfer_syntaxes": [],
            "dicomweb": None,
            "error": f"no association with SITE_DEAD at 127.0.0.1:{dead_port}: "
            "refused, unreachable or timed out",
        },
    ]
    assert url.endswith("/dicom-web")
    assert all(isinstance(ms, int) and 0 <= ms < 5000 for ms in latencies[:2])
    assert latencies[2] is None
    assert isinstance(web_latency, int) and web_latency >= 0


def test_sites_check_table_rows(sites_env: dict[str, str]) -> None:
    result = _run(sites_env)

    assert result.exit_code == 1
    rows = {
        cells[0]: cells[1:]
        for line in result.stdout.splitlines()
        if line.startswith("│")
        and (cells := [c.strip() for c in line.strip("│").split("│")])[0]
    }
    assert rows["site-a"][0] == "yes" and rows["site-a"][2:4] == ["no", ""]
    assert rows["site-b"][0:1] + rows["site-b"][2:4] == ["yes", "no", "HTTP 200"]
    assert rows["site-dead"][0:4] == ["no", "", "no", ""]
    assert rows["site-dead"][5].startswith(
        "no association with SITE_DEAD at 127.0.0.1:"
    )
    assert rows["site-a"][4].startswith("Implicit VR LE, Explicit VR LE, Deflated")
    assert "JPEG 2000" not in rows["site-a"][4]


def test_sites_check_all_reachable_exit_zero(
    sites_env: dict[str, str], tmp_path: Path
) -> None:
    data = yaml.safe_load(Path(sites_env["SPIDERS_SITES_FILE"]).read_text())
    only_alive = tmp_path / "sites.yaml"
    only_alive.write_text(yaml.safe_dump({"sites": data["sites"][:2]}))

    result = _run({**sites_env, "SPIDERS_SITES_FILE": str(only_alive)}, "--json")

    assert result.exit_code == 0, result.output
    assert [c["reachable"] for c in json.loads(result.stdout)] == [True, True]
