"""The cache's listener, as ``spiders serve`` runs it, against dcmtk callers.

A site may store only what a retrieve asked it for (a queued or running
prefetch of that study, for the patient it was asked for) and may not query
or retrieve; a console may query and retrieve but not store. Refusals are
DIMSE 0x0124 for C-STORE and rejected presentation contexts for a site's
C-FIND, C-MOVE and C-GET, each audited as a Security Alert (110113).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml
from pydicom import dcmread

from server.db import Database
from server.demo import run as demo
from server.demo.studies import (
    DemoPatient,
    GeneratedStudy,
    SeriesSpec,
    StudySpec,
    generate_study,
)
from server.models import (
    PrefetchState,
)
from tests.flow_support import audit_rows, cached_counts, start_server
from tests.ihe.dicom.dicom_support import ask_site
from tests.peers import LOCALHOST, free_port, require, run_dcmtk

pytestmark = pytest.mark.peer

SITE, SITE_AE = "chu-nord", "CHU_NORD"
CONSOLE_AE = "RCP_CONSOLE"
NORD_ID = "NORD-0042"
PATIENT = DemoPatient(
    patient_id=NORD_ID,
    issuer="CHU_NORD",
    issuer_oid="2.999.7.1",
    family="LEFÈVRE",
    given="Odile",
    birth_date="19580317",
    sex="F",
)
OTHER = DemoPatient(
    patient_id="NORD-0999",
    issuer="CHU_NORD",
    issuer_oid="2.999.7.1",
    family="LEFÈVRE",
    given="Odile",
    birth_date="19580317",
    sex="F",
)
# How storescu -v shows a 0x0124 C-STORE response (dcmtk has no name for it).
REFUSED = "Received Store Response (Unknown Status: 0x124)"
CT = SeriesSpec(modality="CT", description="Thorax", images=3, rows=64, columns=64)


@dataclass
class Listener:
    root: Path
    server: demo.Server
    dicom_port: int
    db: Database

    @property
    def data_dir(self) -> Path:
        return self.root / "spiders"


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    for tool in ("storescu", "findscu", "movescu", "getscu", "echoscu"):
        require(tool, "dcmtk")
    root = tmp_path_factory.mktemp("admission")
    sites = root / "sites.yaml"
    sites.write_text(
        yaml.safe_dump(
            {
                "sites": [
                    {
                        "name": SITE,
                        "ae_title": SITE_AE,
                        "host": LOCALHOST,
                        "port": free_port(),
                        "patient_id_domain": PATIENT.issuer_oid,
                    }
                ],
                "consoles": [
                    {
                        "name": "salle",
                        "ae_title": CONSOLE_AE,
                        "host": LOCALHOST,
                        "port": free_port(),
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    dicom_port = free_port()
    server = start_server(root, sites, dicom_port=dicom_port)
    db = Database(f"sqlite:///{root / 'spiders' / 'spiders.sqlite'}")
    try:
        yield Listener(root, server, dicom_port, db)
    finally:
        db.dispose()
        server.stop()


def study(tmp_path: Path, who: DemoPatient, seed: int) -> GeneratedStudy:
    spec = StudySpec(
        patient=who, study_date="20240105", description="TDM", series=(CT,)
    )
    return generate_study(spec, tmp_path / f"generated-{seed}", seed=seed)


def ask(listener: Listener, study_uid: str, state: str, patient_id: str) -> None:
    """A registration whose candidate `study_uid` has a prefetch in `state`."""
    ask_site(listener.db, SITE, study_uid, state, patient_id)


def storescu(listener: Listener, calling: str, files: list[Path]) -> str:
    proc = run_dcmtk(
        "storescu",
        "-v",
        "--no-halt",
        "-aet",
        calling,
        "-aec",
        "SPIDERS",
        LOCALHOST,
        str(listener.dicom_port),
        *(str(path) for path in files),
        timeout=30,
    )
    return proc.stderr + proc.stdout


def refusals(listener: Listener) -> list[str]:
    """The Alert Description of each Security Alert (110113), in order."""
    rows = audit_rows(listener.data_dir)
    found = []
    for xml in (xml for event, _, xml in rows if event == "110113"):
        detail = ElementTree.fromstring(xml).find(".//ParticipantObjectDetail")
        assert detail is not None
        text = base64.b64decode(detail.get("value", "")).decode()
        subject = ElementTree.fromstring(xml).find(".//ParticipantObjectName")
        assert subject is not None
        found.append(f"{subject.text} {text}")
    return found


def test_store_not_asked_for_refused_0124_not_cached_audited_once(
    listener: Listener, tmp_path: Path
) -> None:
    pushed = study(tmp_path, PATIENT, 701)
    before = len(refusals(listener))

    out = storescu(listener, SITE_AE, list(pushed.files))

    assert out.count(REFUSED) >= len(pushed.files), out
    assert pushed.study_uid not in cached_counts(listener.data_dir)
    new = refusals(listener)[before:]
    assert len(new) == 1
    assert "no retrieve asked this site for this study" in new[0]
    assert f"{SITE_AE}@127.0.0.1" in new[0]


def test_store_asked_for_by_running_prefetch_stored(
    listener: Listener, tmp_path: Path
) -> None:
    asked = study(tmp_path, PATIENT, 702)
    ask(listener, asked.study_uid, PrefetchState.RUNNING, NORD_ID)

    out = storescu(listener, SITE_AE, list(asked.files))

    assert REFUSED not in out, out
    assert cached_counts(listener.data_dir)[asked.study_uid] == len(asked.files)


def test_store_asked_for_study_other_patient_id_refused_0124(
    listener: Listener, tmp_path: Path
) -> None:
    asked = study(tmp_path, PATIENT, 703)
    ask(listener, asked.study_uid, PrefetchState.QUEUED, NORD_ID)
    intruder = study(tmp_path, OTHER, 704)
    forged = []
    for n, path in enumerate(intruder.files):
        ds = dcmread(path)
        ds.StudyInstanceUID = asked.study_uid
        forged.append(tmp_path / f"forged-{n}.dcm")
        ds.save_as(forged[-1], enforce_file_format=True)
    before = len(refusals(listener))

    out = storescu(listener, SITE_AE, forged)

    assert out.count(REFUSED) >= len(forged), out
    assert asked.study_uid not in cached_counts(listener.data_dir)
    [audited] = refusals(listener)[before:]
    assert "PatientID is not the patient the study was asked for" in audited


@pytest.mark.parametrize(
    "state", [PrefetchState.SCHEDULED, PrefetchState.READY, PrefetchState.FAILED]
)
def test_store_prefetch_not_queued_or_running_refused_0124(
    listener: Listener, tmp_path: Path, state: PrefetchState
) -> None:
    seed = 710 + list(PrefetchState).index(state)
    late = study(tmp_path, PATIENT, seed)
    ask(listener, late.study_uid, state, NORD_ID)

    out = storescu(listener, SITE_AE, list(late.files))

    assert out.count(REFUSED) >= len(late.files), out
    assert late.study_uid not in cached_counts(listener.data_dir)


def test_store_from_console_refused_0124(listener: Listener, tmp_path: Path) -> None:
    asked = study(tmp_path, PATIENT, 720)
    ask(listener, asked.study_uid, PrefetchState.RUNNING, NORD_ID)
    before = len(refusals(listener))

    out = storescu(listener, CONSOLE_AE, list(asked.files))

    assert out.count(REFUSED) >= len(asked.files), out
    assert asked.study_uid not in cached_counts(listener.data_dir)
    [audited] = refusals(listener)[before:]
    assert "only sites may store" in audited


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("findscu", ("-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID")),
        ("movescu", ("-S", "-aem", CONSOLE_AE, "-k", "QueryRetrieveLevel=STUDY")),
        ("getscu", ("-S", "-k", "QueryRetrieveLevel=STUDY")),
    ],
)
def test_site_query_retrieve_contexts_refused_and_audited(
    listener: Listener, tool: str, args: tuple[str, ...]
) -> None:
    before = len(refusals(listener))

    proc = run_dcmtk(
        tool,
        "-aet",
        SITE_AE,
        "-aec",
        "SPIDERS",
        *args,
        LOCALHOST,
        str(listener.dicom_port),
        timeout=30,
    )

    assert proc.returncode != 0
    # findscu and movescu: "No Acceptable ...", getscu: "No adequate ...".
    assert "Presentation Contexts" in proc.stderr, proc.stderr
    [audited] = refusals(listener)[before:]
    assert "query/retrieve refused: a site may only store and verify" in audited


def test_site_echo_and_console_find_accepted(listener: Listener) -> None:
    echo = run_dcmtk(
        "echoscu",
        "-aet",
        SITE_AE,
        "-aec",
        "SPIDERS",
        LOCALHOST,
        str(listener.dicom_port),
    )
    find = run_dcmtk(
        "findscu",
        "-aet",
        CONSOLE_AE,
        "-aec",
        "SPIDERS",
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyInstanceUID",
        LOCALHOST,
        str(listener.dicom_port),
    )

    assert echo.returncode == 0, echo.stderr
    assert find.returncode == 0, find.stderr
    assert "Find Response: 1 (Pending)" in find.stderr


def test_store_refusal_logs_no_patient_data(listener: Listener, tmp_path: Path) -> None:
    storescu(listener, SITE_AE, list(study(tmp_path, PATIENT, 730).files))

    log = (listener.root / "spiders.log").read_text(encoding="utf-8")
    lines = [line for line in log.splitlines() if "not asked for" in line]

    assert lines
    for line in lines:
        assert NORD_ID not in line and "LEF" not in line
