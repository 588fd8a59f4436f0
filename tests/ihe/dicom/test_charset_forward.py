"""Field case C09 on the way out: a cached instance whose Specific Character Set
is misspelled reaches the console with a defined term, and the cached file keeps
what the site wrote.

The console is dcmtk's ``storescp``, asked by dcmtk's ``movescu``.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydicom import dcmread

from tests.ihe.dicom.dicom_support import cache_server, open_archive
from tests.peers import LOCALHOST, StoreSCP, require, run_dcmtk

C09_FILE = (
    Path(__file__).parents[2] / "data" / "dicom" / "C09-charset-nonstandard-terms.py"
)
VIEWER_AE = "VIEWER"


def _c09() -> ModuleType:
    spec = importlib.util.spec_from_file_location("c09", C09_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


C09 = _c09()


@pytest.mark.peer
@pytest.mark.filterwarnings("ignore:Incorrect value for Specific Character Set")
@pytest.mark.parametrize("variant", C09.VARIANTS, ids=lambda v: v["label"])
def test_movescu_c09_console_gets_defined_charset_cached_file_unchanged(
    tmp_path: Path, variant: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    require("movescu", "dcmtk")
    raw = C09.to_part10(C09.build(variant))
    source = tmp_path / "in.dcm"
    source.write_bytes(raw)
    archive, db = open_archive(tmp_path)
    try:
        stored = archive.store(raw, dcmread(source), C09.EXPLICIT_VR_LE, "PACS_NORD")
        caplog.set_level(logging.WARNING, logger="ihe.dicom.qr_scp")
        with cache_server(archive) as cache, StoreSCP(aet=VIEWER_AE) as console:
            cache.destinations[VIEWER_AE] = (LOCALHOST, console.port)
            proc = run_dcmtk(
                "movescu",
                "-S",
                "-aet",
                "RCP_CONSOLE",
                "-aec",
                cache.ae_title,
                "-aem",
                VIEWER_AE,
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                "StudyInstanceUID=2.999.9.2",
                LOCALHOST,
                str(cache.port),
                timeout=60,
            )
            files = console.files()
            assert proc.returncode == 0, proc.stderr
            assert len(files) == 1
            received = dcmread(files[0])
    finally:
        db.dispose()
    assert received.SpecificCharacterSet in variant["expected_output_charset"]
    assert str(received.PatientName) == variant["expected_name"]
    # The cache's copy is exactly what the site sent.
    assert Path(stored.path).read_bytes() == raw
    # A warning names the value received, when it had to be corrected.
    sent = variant["charset"].decode()
    warned = [r for r in caplog.records if "character set" in r.getMessage()]
    corrected = sent not in variant["expected_output_charset"]
    assert [r.received for r in warned] == ([sent] if corrected else [])
