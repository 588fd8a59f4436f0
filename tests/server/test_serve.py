"""``spiders serve`` as an operator runs it: start, answer, stop cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.config import load_settings
from server.demo.run import Server, environ_without_settings, server_env
from tests.flow_support import assert_all_audit_valid
from tests.peers import free_port, run_dcmtk


def children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_signal_with_worker(tmp_path: Path, sig: int) -> None:
    sites = tmp_path / "sites.yaml"
    sites.write_text(yaml.safe_dump({"sites": [], "consoles": []}), encoding="utf-8")
    http_port, dicom_port = free_port(), free_port()
    env = server_env(load_settings({}), tmp_path / "data", sites, http_port, dicom_port)
    server = Server(env, http_port, tmp_path / "serve.log")
    try:
        server.wait_ready()
        assert server.get("/fhir/metadata")["resourceType"] == "CapabilityStatement"
        deadline = time.monotonic() + 30
        while not children(server.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = children(server.proc.pid)
        assert len(workers) == 1
        server.proc.send_signal(sig)
        assert server.proc.wait(timeout=45) == 0
    finally:
        server.stop()
    assert not any(alive(pid) for pid in workers)
    rows = assert_all_audit_valid(tmp_path / "data")
    assert [(e, a) for e, a, _ in rows] == [("110100", "E"), ("110100", "E")]
    assert "110120" in rows[0][2] and "110121" in rows[1][2]
    log = (tmp_path / "serve.log").read_text()
    assert "stopped" in log
    assert "Traceback" not in log


@pytest.mark.peer
def test_serve_dicom_listener_admits_known_callers_only(tmp_path: Path) -> None:
    sites = tmp_path / "sites.yaml"
    sites.write_text(
        yaml.safe_dump(
            {
                "consoles": [
                    {
                        "name": "salle",
                        "ae_title": "CONSOLE",
                        "host": "127.0.0.1",
                        "port": 11113,
                    }
                ]
            }
        ),
        encoding="utf-8",
    )
    http_port, dicom_port = free_port(), free_port()
    env = server_env(load_settings({}), tmp_path / "data", sites, http_port, dicom_port)
    server = Server(env, http_port, tmp_path / "serve.log")
    try:
        server.wait_ready()
        known = run_dcmtk(
            "echoscu",
            "-aet",
            "CONSOLE",
            "-aec",
            "SPIDERS",
            "127.0.0.1",
            str(dicom_port),
        )
        assert known.returncode == 0, known.stderr
        stranger = run_dcmtk(
            "echoscu",
            "-aet",
            "INTRUDER",
            "-aec",
            "SPIDERS",
            "127.0.0.1",
            str(dicom_port),
        )
        assert stranger.returncode == 1
        assert "Result: Rejected Permanent, Source: Service User" in stranger.stderr
        assert "Reason: Calling AE Title Not Recognized" in stranger.stderr
        misaddressed = run_dcmtk(
            "echoscu",
            "-aet",
            "CONSOLE",
            "-aec",
            "NOT_SPIDERS",
            "127.0.0.1",
            str(dicom_port),
        )
        assert misaddressed.returncode == 1
        assert "Reason: Called AE Title Not Recognized" in misaddressed.stderr
        # Bytes that are no association request: refused, and the listener lives on.
        for junk in (b"GET / HTTP/1.1\r\n\r\n", b"\x01\x00" + b"\xff" * 64, b""):
            with socket.create_connection(("127.0.0.1", dicom_port), timeout=5) as sock:
                sock.sendall(junk)
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(5)
                try:
                    while sock.recv(4096):
                        pass
                except (ConnectionResetError, TimeoutError):
                    pass
        again = run_dcmtk(
            "echoscu",
            "-aet",
            "CONSOLE",
            "-aec",
            "SPIDERS",
            "127.0.0.1",
            str(dicom_port),
        )
        assert again.returncode == 0, again.stderr
    finally:
        assert server.stop() == 0
    rows = assert_all_audit_valid(tmp_path / "data")
    refused = [xml for event, _, xml in rows if event == "110113"]
    assert len(refused) == 1
    assert "INTRUDER@127.0.0.1" in refused[0]
    assert 'csd-code="110126"' in refused[0]


def test_token_command_mints_accepted_token_and_refuses_with_idp(
    tmp_path: Path,
) -> None:
    import sys

    from ihe.iua import dev_keys
    from ihe.iua.tokens import KeySet, TokenVerifier

    env = environ_without_settings()
    env["SPIDERS_DATA_DIR"] = str(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "server.cli",
        "token",
        "--role",
        "coordinator",
        "--role",
        "radiologist",
        "--subject",
        "dr-bernard",
    ]
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    verifier = TokenVerifier(
        KeySet.from_jwks(dev_keys.public_jwks(tmp_path)),
        issuer=dev_keys.DEV_ISSUER,
        audience=dev_keys.DEV_AUDIENCE,
        algorithms=("ES256",),
    )
    principal = verifier.verify(proc.stdout.strip())
    assert f"note: no development key in {tmp_path}; a new one is made" in proc.stderr
    again = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert "note:" not in again.stderr  # the key exists now: nothing to say
    assert principal.subject == "dr-bernard"
    assert principal.roles == frozenset({"coordinator", "radiologist"})
    assert (tmp_path / dev_keys.KEY_FILE).stat().st_mode & 0o777 == 0o600
    env.update(
        {
            "SPIDERS_JWT_KEYS": str(tmp_path / "jwks.json"),
            "SPIDERS_JWT_ISSUER": "https://idp.example",
        }
    )
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    refused = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode == 2
    assert "get tokens from the identity provider" in refused.stderr


def serve_failing_to_start(
    tmp_path: Path, sites_yaml: str, *args: str, **env_options: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``spiders serve`` with `sites_yaml` as the sites file; it must stop."""
    import sys

    sites = tmp_path / "sites.yaml"
    sites.write_text(sites_yaml, encoding="utf-8")
    env = server_env(
        load_settings({}),
        tmp_path / "data",
        sites,
        free_port(),
        free_port(),
        **env_options,
    )
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_bad_sites_file_exits_2_with_message(tmp_path: Path) -> None:
    proc = serve_failing_to_start(tmp_path, "sites: [{name: a}]\n")
    assert proc.returncode == 2
    assert "sites[0] lacks ae_title, host, port, patient_id_domain" in proc.stderr


def test_serve_port_in_use_names_the_listener(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = serve_failing_to_start(
            tmp_path, "sites: []\n", "--no-worker", mllp_port=port
        )
    assert proc.returncode == 2, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert line.startswith(f"error: cannot listen on MLLP port {port}: Address ")
    assert line.endswith("(is another server using it?)")


def test_serve_misspelt_site_key_named(tmp_path: Path) -> None:
    proc = serve_failing_to_start(
        tmp_path,
        "sites: [{name: a, aetitle: A, host: h, port: 104, "
        "patient_id_domain: 1.2.3}]\n",
    )
    assert proc.returncode == 2
    assert "sites[0] has unknown key(s) aetitle (known: name, ae_title," in proc.stderr
