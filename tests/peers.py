"""Real peers for tests: private Orthanc instances and dcmtk tools.

The helpers start software nobody here wrote (Orthanc, dcmtk's ``storescp``,
``dcmqrscp`` and SCUs) on ephemeral loopback ports, each in a temporary directory, and
always tear it down. An Orthanc can also be killed and started again on the same ports
and storage (:meth:`OrthancPeer.halt`, :meth:`OrthancPeer.resume`). A test
that needs a peer calls :func:`require` (directly or through the classes below): on a
developer's machine a missing program skips the test, under ``CI=true`` it fails it.

Every process is started with ``TCP_NODELAY=1``: Debian's dcmtk, and Orthanc which
links its network code, otherwise leave Nagle's algorithm on and stall about 45 ms per
instance.

Limitations: Orthanc 1.10, ``storescp`` and ``dcmqrscp`` cannot choose their bind
address and listen on every interface; the helpers only ever send them traffic on
127.0.0.1 and rely on the ephemeral ports being short-lived. Running them in a private
network namespace would isolate them fully but needs root, so it is not done here.
"""

import base64
import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

import pytest

LOCALHOST = "127.0.0.1"
ORTHANC_BINARY = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 30

# Where Debian puts the peers; /usr/sbin is often missing from a non-root PATH.
SYSTEM_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")

# pynetdicom installs console scripts with dcmtk's names (findscu, storescp, ...) into
# the virtual environment; they take other options, so the venv is never searched.
VENV_BIN = Path(sys.prefix) / "bin" if sys.prefix != sys.base_prefix else None

# Linux prctl option: signal the child when the parent dies, so that a killed pytest
# run cannot leave a peer behind. The signal follows the starting thread: start peers
# from a thread that outlives them (pytest's main thread does).
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))

        return int(sock.getsockname()[1])


def basic_auth(user: str, password: str) -> str:
    """The ``Authorization`` header value of HTTP Basic (RFC 7617)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")

    return f"Basic {token}"


def require(binary: str, package: str) -> str:
    """Return the absolute path of ``binary``, or skip (fail under CI) the test.

    The environment variable ``CI=true`` turns a missing peer into a failure: CI
    installs every peer, so a missing one means the CI set-up is broken.
    """
    path = _find_binary(binary)
    if path is not None:
        return path

    _missing(f"{binary} not installed (Debian package {package})")


def require_service(name: str, port: int) -> None:
    """Skip (fail under CI) the test unless something listens on 127.0.0.1:`port`.

    For the services the machine runs itself (PostgreSQL, Redis, RabbitMQ).
    """
    with socket.socket() as sock:
        sock.settimeout(1)
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            return
    _missing(f"{name} is not running on 127.0.0.1:{port}")


def peer_env() -> dict[str, str]:
    """Return the environment for a peer process: ours plus ``TCP_NODELAY=1``."""
    return {**os.environ, "TCP_NODELAY": "1"}


def run_dcmtk(
    tool: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool (``findscu``, ``movescu``, ``storescu``, ...) to completion.

    Output is captured as text; dcmtk prints response datasets on stderr. The exit
    status is left for the caller to check.
    """
    path = require(tool, "dcmtk")

    return subprocess.run(
        [path, *args],
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    """Wait until ``port`` on 127.0.0.1 accepts connections while ``proc`` lives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _raise_if_exited(proc, log)
        with contextlib.suppress(OSError):
            socket.create_connection((LOCALHOST, port), timeout=1).close()
            return
        time.sleep(0.1)

    raise TimeoutError(f"port {port} not open after {timeout} s\n{_tail(log)}")


class ManagedPeer:
    """A peer process as a context manager: started on entry, always cleaned up
    (even when starting fails), by :meth:`close`."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the peer and release what it holds."""
        self.stop()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class OrthancPeer(ManagedPeer):
    """A private Orthanc with its own storage, DICOM and HTTP ports, on loopback.

    Parameters
    ----------
    aet
        Orthanc's own AE title.
    modalities
        Remote AEs it may talk to (C-MOVE destinations, consoles): name ->
        (AE title, host, port).
    dicomweb
        Load the DICOMweb plugin, served under ``/dicom-web/``.
    http_user
        ``(user, password)``: turn HTTP Basic authentication on with this one
        user; the helper's own requests send it.
    extra_config
        Further Orthanc configuration options, e.g.
        ``{"Jpeg2000TransferSyntaxAccepted": False}``.
    """

    def __init__(
        self,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        *,
        dicomweb: bool = False,
        http_user: tuple[str, str] | None = None,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.dicomweb = dicomweb
        self.http_user = http_user
        self.extra_config = dict(extra_config or {})
        self.dicom_port = 0
        self.http_port = 0
        self.url = ""
        self.workdir: Path | None = None
        self.log: Path | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def pid(self) -> int | None:
        """The Orthanc process id while it runs."""
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Write the configuration, start Orthanc and wait for its REST API."""
        binary = require(ORTHANC_BINARY, "orthanc")
        if self.dicomweb and not DICOMWEB_PLUGIN.exists():
            plugin = DICOMWEB_PLUGIN.name
            _missing(f"{plugin} not installed (Debian package orthanc-dicomweb)")

        self._tmp = tempfile.TemporaryDirectory(prefix="spiders-orthanc-")
        self.workdir = Path(self._tmp.name)
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.url = f"http://{LOCALHOST}:{self.http_port}"
        config = self.workdir / "orthanc.json"
        config.write_text(json.dumps(self._config(), indent=2))

        # Orthanc logs on stderr; keep it in the work directory for error reports.
        self.log = self.workdir / "orthanc.log"
        self._log_file = self.log.open("wb")
        self._launch(binary, config)

    def halt(self) -> None:
        """Kill Orthanc at once (SIGKILL, as a crash or a power cut would), keeping
        its configuration, ports and storage for :meth:`resume`."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def resume(self) -> None:
        """Start the halted Orthanc again: same configuration, ports and storage."""
        assert self.workdir is not None and self._proc is None, "not halted"
        self._launch(require(ORTHANC_BINARY, "orthanc"), self.workdir / "orthanc.json")

    def stop(self) -> None:
        """Stop Orthanc (terminate, then kill after 10 s) and remove its files."""
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def upload(self, paths: Iterable[str | os.PathLike[str]]) -> int:
        """Store DICOM files through ``POST /instances``; return how many were sent."""
        count = 0
        for path in paths:
            self._request("POST", "/instances", Path(path).read_bytes())
            count += 1

        return count

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Declare a remote AE (``PUT /modalities/NAME``), e.g. a C-MOVE destination."""
        body = {"AET": aet, "Host": host, "Port": port}
        self._request("PUT", f"/modalities/{name}", json.dumps(body).encode())
        self.modalities[name] = (aet, host, port)

    def study_count(self) -> int:
        """Return how many studies Orthanc holds."""
        return len(self._request("GET", "/studies"))

    def instances_of_study(self, study_uid: str) -> int:
        """Return how many instances of the study Orthanc holds (``/tools/find``)."""
        query = {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}

        return len(self._request("POST", "/tools/find", json.dumps(query).encode()))

    def _config(self) -> dict[str, Any]:
        assert self.workdir is not None
        config: dict[str, Any] = {
            "Name": f"spiders-test-{self.aet}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {
                name: [aet, host, port]
                for name, (aet, host, port) in self.modalities.items()
            },
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            # C-FIND: counters (NumberOfStudyRelatedInstances/Series) come from the
            # index; tags the index lacks are read from the stored files.
            "StorageAccessOnFind": "Always",
            # A test peer starts empty and leaves nothing behind.
            "SaveJobs": False,
            "Plugins": [],
        }
        if self.dicomweb:
            config["Plugins"] = [str(DICOMWEB_PLUGIN)]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        if self.http_user is not None:
            config["AuthenticationEnabled"] = True
            config["RegisteredUsers"] = {self.http_user[0]: self.http_user[1]}
        config.update(self.extra_config)

        return config

    def _launch(self, binary: str, config: Path) -> None:
        assert self.workdir is not None
        self._proc = subprocess.Popen(
            [binary, str(config)],
            cwd=self.workdir,
            env=peer_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        assert self._proc is not None and self.log is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            _raise_if_exited(self._proc, self.log)
            with contextlib.suppress(OSError):
                self._request("GET", "/system", timeout=1)
                return
            time.sleep(0.1)

        raise TimeoutError(
            f"Orthanc not answering on {self.url} after {START_TIMEOUT} s\n"
            f"{_tail(self.log)}"
        )

    def _request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 30
    ) -> Any:
        # Always http://127.0.0.1, so no scheme check is needed.
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if self.http_user is not None:
            request.add_header("Authorization", basic_auth(*self.http_user))
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()

        return json.loads(payload) if payload else None


class StoreSCP(ManagedPeer):
    """dcmtk ``storescp`` on a free loopback port, writing what it receives to a folder.

    Use it as a console's C-MOVE destination.
    """

    def __init__(self, aet: str = "STORESCP", directory: Path | None = None) -> None:
        self.aet = aet
        self.port = 0
        self.directory = directory
        self.log: Path | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def pid(self) -> int | None:
        """The storescp process id while it runs."""
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start storescp and wait until its port accepts connections."""
        binary = require("storescp", "dcmtk")
        self._tmp = tempfile.TemporaryDirectory(prefix="spiders-storescp-")
        workdir = Path(self._tmp.name)
        if self.directory is None:
            self.directory = workdir / "received"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()

        self.log = workdir / "storescp.log"
        self._log_file = self.log.open("wb")
        self._proc = subprocess.Popen(
            [binary, "--aetitle", self.aet, "-od", str(self.directory), str(self.port)],
            env=peer_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        wait_for_port(self.port, self._proc, self.log, START_TIMEOUT)

    def stop(self) -> None:
        """Stop storescp; received files stay until the context's folder is removed."""
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def files(self) -> list[Path]:
        """Return the received files, sorted by path."""
        if self.directory is None or not self.directory.exists():
            return []

        return sorted(path for path in self.directory.rglob("*") if path.is_file())


class DcmQrScp(ManagedPeer):
    """dcmtk ``dcmqrscp``: a Query/Retrieve archive with its own storage area.

    Its configuration file holds one AE (``aet``, any peer may associate) and
    a host table naming only `destinations`: name -> (host, port), each name
    being the AE title it is known by as a C-MOVE destination. Asked to move
    to an AE it does not list, it answers 0xA801 (Move Destination Unknown).
    Instances are loaded with dcmtk's ``storescu`` (:meth:`load`).
    """

    def __init__(
        self,
        aet: str = "DCMQRSCP",
        destinations: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        self.aet = aet
        self.destinations = dict(destinations or {})
        self.port = 0
        self.workdir: Path | None = None
        self.log: Path | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def pid(self) -> int | None:
        """The dcmqrscp process id while it runs."""
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Write the configuration, start dcmqrscp and wait for its port."""
        binary = require("dcmqrscp", "dcmtk")
        require("storescu", "dcmtk")
        self._tmp = tempfile.TemporaryDirectory(prefix="spiders-dcmqrscp-")
        self.workdir = Path(self._tmp.name)
        (self.workdir / "storage").mkdir()
        self.port = free_port()
        config = self.workdir / "dcmqrscp.cfg"
        config.write_text(self._config())

        self.log = self.workdir / "dcmqrscp.log"
        self._log_file = self.log.open("wb")
        self._proc = subprocess.Popen(
            # Its default, one child process per association: dcmtk 3.6.7's
            # --single-process mode crashes (SIGSEGV) after a storescu association.
            [binary, "--config", str(config), str(self.port)],
            cwd=self.workdir,
            env=peer_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        wait_for_port(self.port, self._proc, self.log, START_TIMEOUT)

    def stop(self) -> None:
        """Stop dcmqrscp and remove its storage."""
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def load(self, paths: Iterable[str | os.PathLike[str]]) -> int:
        """Send DICOM files with ``storescu``; return how many were sent."""
        files = [str(path) for path in paths]
        proc = run_dcmtk(
            "storescu", "-aec", self.aet, LOCALHOST, str(self.port), *files
        )
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed ({proc.returncode}): {proc.stderr}")

        return len(files)

    def _config(self) -> str:
        assert self.workdir is not None
        hosts = "\n".join(
            f"{name} = ({name}, {host}, {port})"
            for name, (host, port) in self.destinations.items()
        )
        storage = self.workdir / "storage"
        return (
            f"NetworkTCPPort = {self.port}\n"
            "MaxPDUSize = 16384\n"
            "MaxAssociations = 16\n\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n\n"
            "VendorTable BEGIN\nVendorTable END\n\n"
            "AETable BEGIN\n"
            f"{self.aet} {storage} RW (200, 1024mb) ANY\n"
            "AETable END\n"
        )


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _find_binary(binary: str) -> str | None:
    venv_bin = None if VENV_BIN is None else VENV_BIN.resolve()
    dirs = [
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and Path(entry).resolve() != venv_bin
    ]
    dirs += [entry for entry in SYSTEM_DIRS if entry not in dirs]
    found = shutil.which(binary, path=os.pathsep.join(dirs))

    return None if found is None else str(Path(found).absolute())


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: one system call, nothing else.
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _raise_if_exited(proc: subprocess.Popen[bytes], log: Path) -> None:
    status = proc.poll()
    if status is not None:
        raise RuntimeError(
            f"{Path(str(proc.args[0])).name} exited with status {status}\n{_tail(log)}"
        )


def _tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"

    return "\n".join(text.splitlines()[-lines:])
