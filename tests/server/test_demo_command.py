"""``spiders demo --keep-running``: the server stays up for a console, then stops
with everything it started."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.demo.run import environ_without_settings
from tests.peers import free_port, run_dcmtk

pytestmark = pytest.mark.peer


def port_free(port: int) -> bool:
    """True when nothing listens on `port` (connections closing may remain)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_demo_keep_running_serves_console_until_terminated(tmp_path: Path) -> None:
    dicom_port, http_port, mllp_port = free_port(), free_port(), free_port()
    env = environ_without_settings()
    env.update(
        {
            "SPIDERS_DATA_DIR": str(tmp_path),
            "SPIDERS_HTTP_PORT": str(http_port),
            "SPIDERS_DICOM_PORT": str(dicom_port),
            "SPIDERS_MLLP_PORT": str(mllp_port),
            "COLUMNS": "80",
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
            lines = text.splitlines()
            # Hints are whole lines to copy, however narrow the terminal.
            assert any(
                x.startswith("Server left running. Try: findscu ")
                and x.endswith(" -k NumberOfStudyRelatedInstances")
                for x in lines
            ), text
            assert any(
                x.startswith("the cases later: SPIDERS_DATA_DIR=")
                and x.endswith(" status")
                for x in lines
            ), text
            assert f"MLLP 127.0.0.1:{mllp_port}" in text
            assert not port_free(mllp_port)
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
            # A service manager stops it with SIGTERM: the server it started
            # must stop as well, leaving every port free.
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            for port in (dicom_port, http_port, mllp_port):
                assert port_free(port), port
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
