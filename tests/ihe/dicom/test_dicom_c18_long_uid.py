"""Field case C18: a 65-character SOP Instance UID sent to our Storage SCP.

The sender is another process (pynetdicom with its UID validator relaxed, as a
device would send it); the instance must be stored with a data-quality warning
and found again by that exact UID through our Q/R SCP (dcmtk's ``findscu``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from pydicom import dcmread

from tests.ihe.dicom.dicom_support import (
    SECONDARY_CAPTURE,
    CacheServer,
    cache_server,
    open_archive,
)
from tests.peers import LOCALHOST, require, run_dcmtk

CASE_FILE = Path(__file__).parents[2] / "data" / "dicom" / "C18-uid-longer-than-64.py"
CALLING_AE = "LONGUIDSCU"
SCU_TIMEOUT = 30

# The sender: relaxes pynetdicom's UI validator (otherwise pynetdicom itself
# refuses to send the request), sends one C-STORE and reports what happened.
SENDER = """
import importlib.util, json, sys
from pynetdicom import AE, _config

def relaxed(value):
    return (0 < len(str(value or "")) <= 128, "")

_config.VALIDATORS["UI"] = relaxed
case_file, host, port, called, calling = sys.argv[1:]
spec = importlib.util.spec_from_file_location("c18_case", case_file)
case = importlib.util.module_from_spec(spec)
spec.loader.exec_module(case)
ds = case.build()
ae = AE(ae_title=calling)
ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
assoc = ae.associate(host, int(port), ae_title=called)
report = {"established": assoc.is_established, "status": None}
if assoc.is_established:
    rsp = assoc.send_c_store(ds)
    report["status"] = int(rsp.Status) if "Status" in rsp else None
    report["aborted_after_store"] = assoc.is_aborted
    assoc.release()
    report["released"] = assoc.is_released
print(json.dumps(report))
"""

# pydicom warns, rightly, each time it reads the over-long UID.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:The value length \(65\) exceeds the maximum length of 64:UserWarning"
)


@pytest.fixture(scope="module")
def case() -> ModuleType:
    spec = importlib.util.spec_from_file_location("c18_case", CASE_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    return module


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[CacheServer]:
    archive, db = open_archive(tmp_path)
    try:
        with cache_server(archive) as server:
            yield server
    finally:
        db.dispose()


def send_from_other_process(cache: CacheServer, tmp_path: Path) -> dict[str, object]:
    script = tmp_path / "send_long_uid.py"
    script.write_text(SENDER, encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(CASE_FILE),
            LOCALHOST,
            str(cache.port),
            cache.ae_title,
            CALLING_AE,
        ],
        capture_output=True,
        text=True,
        timeout=SCU_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr

    return dict(json.loads(proc.stdout.splitlines()[-1]))


def test_c18_case_uid_is_65_characters(case: ModuleType) -> None:
    assert len(case.LONG_UID) == 65


def test_storage_scp_65_character_uid_stored_status_0000_not_aborted(
    cache: CacheServer, case: ModuleType, tmp_path: Path
) -> None:
    report = send_from_other_process(cache, tmp_path)

    assert report == {
        "established": True,
        "status": 0x0000,
        "aborted_after_store": False,
        "released": True,
    }
    summary = cache.next_summary()
    assert summary.aborted is False
    assert [s.study_uid for s in summary.studies] == ["2.999.77.1"]
    [row] = cache.archive.instances(sop_instance_uid=case.LONG_UID)
    assert row.sop_class_uid == SECONDARY_CAPTURE
    assert dcmread(cache.archive.root / row.path).SOPInstanceUID == case.LONG_UID


def test_storage_scp_65_character_uid_one_warning_naming_it(
    cache: CacheServer,
    case: ModuleType,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ihe.dicom.storage_scp")

    send_from_other_process(cache, tmp_path)
    cache.next_summary()

    warnings = [
        record
        for record in caplog.records
        if record.name == "ihe.dicom.storage_scp" and record.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert case.LONG_UID in warnings[0].getMessage()


@pytest.mark.peer
def test_qr_scp_65_character_uid_found_by_findscu_image_level(
    cache: CacheServer, case: ModuleType, tmp_path: Path
) -> None:
    require("findscu", "dcmtk")
    send_from_other_process(cache, tmp_path)
    cache.next_summary()
    responses = tmp_path / "responses"
    responses.mkdir()

    proc = run_dcmtk(
        "findscu",
        "-S",
        "-aec",
        cache.ae_title,
        "-k",
        "QueryRetrieveLevel=IMAGE",
        "-k",
        "StudyInstanceUID=2.999.77.1",
        "-k",
        "SeriesInstanceUID=2.999.77.2",
        "-k",
        f"SOPInstanceUID={case.LONG_UID}",
        "-X",
        "-od",
        str(responses),
        LOCALHOST,
        str(cache.port),
        timeout=SCU_TIMEOUT,
    )

    assert proc.returncode == 0, proc.stderr
    found = [dcmread(path).SOPInstanceUID for path in sorted(responses.iterdir())]
    assert found == [case.LONG_UID]
