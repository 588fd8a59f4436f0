"""``spiders sites check`` against three real Orthanc instances and a dead port.

Site A is an Orthanc told to refuse JPEG 2000 that answers C-FIND only from
the AE titles it lists, SPIDERS among them; it is checked twice, once as
``site-a`` (Study Root) and once as ``site-a-patient`` (Patient Root). Site B
is an Orthanc with default transfer syntaxes and the DICOMweb plugin, queried
by QIDO-RS. The dead site's port has nobody listening. Site C is an Orthanc
that answers C-ECHO from anyone but C-FIND only from the AE titles it lists,
and lists none: it aborts the association on our C-FIND. A pynetdicom SCP
written here offers C-ECHO and Study Root C-FIND only, and fails every
C-FIND with 0xA700.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event

from ihe.dicom.sop_classes import (
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from server.cli import main
from server.sites_check import PROBE_PATIENT_ID_PREFIX
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


SPIDERS_AE = "SPIDERS_TEST"
# Orthanc's default: C-FIND only from the AE titles in DicomModalities.
FIND_FROM_LISTED_ONLY = {"DicomAlwaysAllowFind": False}
QUERY_REFUSED = (
    "C-ECHO answers but C-FIND is refused (aborted or timed out): the site may "
    f"not allow this AE title to query; declare {SPIDERS_AE} (AE title, host, "
    "port) on the site"
)


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
    refuse = {"Jpeg2000TransferSyntaxAccepted": False, **FIND_FROM_LISTED_ONLY}
    # The port is where SPIDERS would take C-MOVEs; nothing is sent to it here.
    spiders = {"spiders": (SPIDERS_AE, LOCALHOST, free_port())}
    with (
        OrthancPeer("SITE_A", spiders, extra_config=refuse) as a,
        OrthancPeer("SITE_B", dicomweb=True) as b,
        OrthancPeer("SITE_C", extra_config=FIND_FROM_LISTED_ONLY) as c,
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
            _site("site-a-patient", a.dicom_port, query_model="patient"),
            _site("site-c", c.dicom_port),
        ]
        sites_file.write_text(yaml.safe_dump({"sites": sites}), encoding="utf-8")
        yield {
            "SPIDERS_SITES_FILE": str(sites_file),
            "SPIDERS_DATA_DIR": str(root / "var"),
            "SPIDERS_AE_TITLE": SPIDERS_AE,
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
            "query": "ok",
        },
        {
            "site": "site-b",
            "reachable": True,
            "tls": False,
            "transfer_syntaxes": ALL_SYNTAXES,
            "dicomweb": {"status": 200},
            "error": None,
            "query": None,
        },
        {
            "site": "site-dead",
            "reachable": False,
            "tls": False,
            "transfer_syntaxes": [],
            "dicomweb": None,
            "error": f"no association with SITE_DEAD at 127.0.0.1:{dead_port}: "
            "refused, unreachable or timed out",
            "query": None,
        },
        {
            "site": "site-a-patient",
            "reachable": True,
            "tls": False,
            "transfer_syntaxes": WITHOUT_J2K,
            "dicomweb": None,
            "error": None,
            "query": "ok",
        },
        {
            "site": "site-c",
            "reachable": False,
            "tls": False,
            "transfer_syntaxes": ALL_SYNTAXES,
            "dicomweb": None,
            "error": QUERY_REFUSED,
            "query": "aborted or timed out",
        },
    ]
    assert url.endswith("/dicom-web")
    assert all(isinstance(ms, int) and 0 <= ms < 5000 for ms in latencies[:2])
    assert latencies[2] is None
    # C-ECHO succeeded at site C: its latency is measured, the C-FIND failed.
    assert all(isinstance(ms, int) and 0 <= ms < 5000 for ms in latencies[3:])
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
    assert rows["site-a-patient"][0] == "yes" and rows["site-a-patient"][5] == ""
    assert rows["site-c"][0] == "no" and rows["site-c"][1] != ""
    assert rows["site-c"][5].startswith("C-ECHO answers but C-FIND is refused")


def test_sites_check_all_reachable_exit_zero(
    sites_env: dict[str, str], tmp_path: Path
) -> None:
    data = yaml.safe_load(Path(sites_env["SPIDERS_SITES_FILE"]).read_text())
    alive = [s for s in data["sites"] if s["name"] not in {"site-dead", "site-c"}]
    only_alive = tmp_path / "sites.yaml"
    only_alive.write_text(yaml.safe_dump({"sites": alive}))

    result = _run({**sites_env, "SPIDERS_SITES_FILE": str(only_alive)}, "--json")

    assert result.exit_code == 0, result.output
    checks = json.loads(result.stdout)
    assert [(c["site"], c["reachable"], c["query"]) for c in checks] == [
        ("site-a", True, "ok"),
        ("site-b", True, None),
        ("site-a-patient", True, "ok"),
    ]


def test_sites_check_find_refused_alone_exit_one(
    sites_env: dict[str, str], tmp_path: Path
) -> None:
    data = yaml.safe_load(Path(sites_env["SPIDERS_SITES_FILE"]).read_text())
    only_c = tmp_path / "sites.yaml"
    only_c.write_text(
        yaml.safe_dump({"sites": [s for s in data["sites"] if s["name"] == "site-c"]})
    )

    result = _run({**sites_env, "SPIDERS_SITES_FILE": str(only_c)}, "--json")

    assert result.exit_code == 1, result.output
    [check] = json.loads(result.stdout)
    assert (check["reachable"], check["query"], check["error"]) == (
        False,
        "aborted or timed out",
        QUERY_REFUSED,
    )


def test_sites_check_qido_site_refusing_find_not_probed_reachable(
    sites_env: dict[str, str], tmp_path: Path
) -> None:
    data = yaml.safe_load(Path(sites_env["SPIDERS_SITES_FILE"]).read_text())
    site_c = next(s for s in data["sites"] if s["name"] == "site-c")
    web_query = {
        **site_c,
        "query": "qido-rs",
        "dicomweb": next(s for s in data["sites"] if s["name"] == "site-b")["dicomweb"],
    }
    sites_file = tmp_path / "sites.yaml"
    sites_file.write_text(yaml.safe_dump({"sites": [web_query]}))

    result = _run({**sites_env, "SPIDERS_SITES_FILE": str(sites_file)}, "--json")

    assert result.exit_code == 0, result.output
    [check] = json.loads(result.stdout)
    assert (check["reachable"], check["query"], check["error"]) == (True, None, None)


@pytest.fixture
def failing_find_site() -> Iterator[tuple[int, list[Dataset]]]:
    """A C-ECHO and Study Root C-FIND SCP failing every C-FIND with 0xA700."""
    received: list[Dataset] = []

    def handle_find(event: Event) -> Iterator[tuple[int, Dataset | None]]:
        received.append(event.identifier)
        yield 0xA700, None

    ae = AE(ae_title="SITE_FAKE")
    ae.add_supported_context(Verification)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    server = ae.start_server(
        (LOCALHOST, port), block=False, evt_handlers=[(evt.EVT_C_FIND, handle_find)]
    )
    assert server is not None
    yield port, received
    server.shutdown()


def test_sites_check_find_failure_status_and_model_not_accepted(
    sites_env: dict[str, str],
    failing_find_site: tuple[int, list[Dataset]],
    tmp_path: Path,
) -> None:
    port, received = failing_find_site
    sites_file = tmp_path / "sites.yaml"
    sites = [_site("site-fake", port), _site("site-fake-pr", port)]
    sites[1]["query_model"] = "patient"
    sites_file.write_text(yaml.safe_dump({"sites": sites}))

    result = _run({**sites_env, "SPIDERS_SITES_FILE": str(sites_file)}, "--json")

    assert result.exit_code == 1, result.output
    checks = json.loads(result.stdout)
    assert [(c["reachable"], c["query"], c["error"]) for c in checks] == [
        (
            False,
            "status 0xA700",
            "C-ECHO answers but C-FIND is refused (status 0xA700): the site may "
            f"not allow this AE title to query; declare {SPIDERS_AE} (AE title, "
            "host, port) on the site",
        ),
        (
            False,
            "Patient Root not accepted",
            "C-ECHO answers but C-FIND is refused (Patient Root not accepted): the "
            "site may not offer this information model; check the site's "
            "query_model (patient)",
        ),
    ]
    # One Study Root C-FIND, at STUDY level, for a made-up PatientID.
    [identifier] = received
    assert identifier.QueryRetrieveLevel == "STUDY"
    patient_id = str(identifier.PatientID)
    assert patient_id.startswith(PROBE_PATIENT_ID_PREFIX)
    assert len(patient_id) == len(PROBE_PATIENT_ID_PREFIX) + 16
    assert not set(patient_id) & {"*", "?", "\\"}
