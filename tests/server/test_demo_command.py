"""``spiders demo --keep-running``: the server stays up for a console, then stops."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.demo.run import environ_without_settings
from tests.peers import free_port, run_dcmtk

pytestmark = pytest.mark.peer


def test_demo_keep_running_serves_console_until_interrupted(tmp_path: Path) -> None:
    dicom_port = free_port()
    env = environ_without_settings()
    env.update(
        {
            "SPIDERS_DATA_DIR": str(tmp_path),
            "SPIDERS_HTTP_PORT": str(free_port()),
            "SPIDERS_DICOM_PORT": str(dicom_port),
            "COLUMNS": "200",
        }
    )
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "demo", "--keep-running"],
            env=env,
            stdout=out,
            stderr=out,
        )
        try:
            deadline = time.monotonic() + 180
            while "Press Ctrl-C" not in log.read_text(errors="replace"):
                assert proc.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, "demo did not finish its flow"
                time.sleep(0.5)
            text = log.read_text(errors="replace")
            assert "every case is ready" in text
            assert "studies of the homonym in the cache: 0" in text
            found = run_dcmtk(
                "findscu",
                "-S",
                "-aet",
                "RCP_CONSOLE",
                "-aec",
                "SPIDERS",
                "127.0.0.1",
                str(dicom_port),
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                "StudyInstanceUID",
            )
            assert found.returncode == 0, found.stderr
            assert found.stderr.count("(0020,000d)") == 3
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
