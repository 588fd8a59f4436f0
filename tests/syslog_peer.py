"""A private rsyslog audit repository and a test PKI, for the ITI-20 tests.

:class:`RsyslogPeer` runs Debian's ``rsyslogd`` in the foreground with its own
configuration in a temporary directory: one UDP input (RFC 5426) and one TLS
input (RFC 5425, ``gtls`` driver, client certificates required and checked
against the test CA), both on ephemeral ports of 127.0.0.1. Each input writes
what it receives, exactly (``%rawmsg%``), one message a line, to its own file.
The daemon can be stopped and started again on the same ports and files, to
test delivery across an outage; it is always stopped at the end.

:func:`make_pki` issues the repository's and our certificates from a
throw-away authority (:class:`tests.tls_ca.TestCA`). :class:`TlsListener` is a
plain Python mutual-TLS listener that keeps the exact bytes it receives, to
check the framing itself.

Limitations: rsyslog escapes control characters on receipt (a line feed is
written ``#012``); :func:`unescape` undoes it for the characters our messages
may contain. A port freed by the stopped daemon could in theory be taken by
another process before the restart; the restart then fails loudly.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from ihe.tls import server_context
from tests.peers import LOCALHOST, ManagedPeer, free_port, require, wait_for_port
from tests.tls_ca import Issued, TestCA

RSYSLOG_BINARY = "rsyslogd"
GTLS_DRIVER = Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so")
STOP_TIMEOUT = 10.0
_ESCAPED = re.compile(r"#([0-3][0-7]{2})")


@dataclass(frozen=True)
class Pki:
    """The test CA and the repository's and our credentials (PEM files)."""

    ca: Path
    server: Issued
    client: Issued


def make_pki(directory: Path, *, foreign_client: bool = False) -> Pki:
    """A CA with a repository and a client certificate for 127.0.0.1.

    With ``foreign_client`` the client certificate comes from another,
    unrelated CA, which the repository must refuse.
    """
    ca = TestCA(directory / "ca")
    client_ca = TestCA(directory / "foreign", "unrelated CA") if foreign_client else ca

    return Pki(
        ca=ca.pem,
        server=ca.issue("audit-repository", client=False),
        client=client_ca.issue("spiders", server=False),
    )


def unescape(line: str) -> str:
    """Undo rsyslog's ``#ooo`` escaping of control characters."""
    return _ESCAPED.sub(
        lambda m: chr(int(m[1], 8)) if int(m[1], 8) < 0x20 else m[0], line
    )


class RsyslogPeer(ManagedPeer):
    """A private rsyslogd with a UDP and a mutual-TLS input on 127.0.0.1."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.udp_port = 0
        self.tls_port = 0
        self.workdir: Path | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def udp_file(self) -> Path:
        """Where UDP messages are written."""
        assert self.workdir is not None
        return self.workdir / "udp.log"

    @property
    def tls_file(self) -> Path:
        """Where TLS messages are written."""
        assert self.workdir is not None
        return self.workdir / "tls.log"

    @property
    def running(self) -> bool:
        """Whether the daemon runs."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start rsyslogd (again, on the same ports) and wait for its TLS port."""
        binary = require(RSYSLOG_BINARY, "rsyslog")
        if not GTLS_DRIVER.exists():
            reason = f"{GTLS_DRIVER.name} not installed (Debian package rsyslog-gnutls)"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="spiders-rsyslog-")
            self.workdir = Path(self._tmp.name)
            (self.workdir / "work").mkdir()
            self.udp_port, self.tls_port = free_udp_port(), free_port()
        assert self.workdir is not None
        config = self.workdir / "rsyslog.conf"
        config.write_text(self._config(), encoding="utf-8")
        log = self.workdir / "rsyslogd.out"
        with log.open("ab") as out:
            self._proc = subprocess.Popen(
                [binary, "-n", "-f", str(config), "-i", str(self.workdir / "pid")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.tls_port, self._proc, log, 20.0)

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL); its files stay."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None

    def close(self) -> None:
        """Stop the daemon and remove its files."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def lines(self, path: Path) -> list[str]:
        """The messages written to `path`, unescaped, in order."""
        if not path.exists():
            return []
        text = path.read_text(encoding="utf-8")

        return [unescape(line) for line in text.splitlines() if line]

    def wait_for(self, path: Path, count: int, timeout: float = 10.0) -> list[str]:
        """The messages of `path` once there are at least `count` of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.lines(path)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def _config(self) -> str:
        assert self.workdir is not None
        pki, work = self.pki, self.workdir
        return f"""
global(
  workDirectory="{work / "work"}"
  maxMessageSize="64k"
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile="{pki.ca}"
  defaultNetstreamDriverCertFile="{pki.server.cert}"
  defaultNetstreamDriverKeyFile="{pki.server.key}"
)
module(load="imudp")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1"
       streamDriver.authMode="x509/certvalid")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="udp") {{ action(type="omfile" file="{self.udp_file}" template="raw") }}
ruleset(name="tls") {{ action(type="omfile" file="{self.tls_file}" template="raw") }}
input(type="imudp" address="{LOCALHOST}" port="{self.udp_port}" ruleset="udp")
input(type="imtcp" address="{LOCALHOST}" port="{self.tls_port}" ruleset="tls")
"""


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCALHOST, 0))

        return int(sock.getsockname()[1])


class TlsListener:
    """A mutual-TLS listener on 127.0.0.1 keeping the raw bytes of each connection.

    It reads each connection to its end, then closes it, as a syslog receiver
    does; :attr:`connections` holds what each one carried, in order.
    """

    def __init__(self, pki: Pki) -> None:
        self.context = server_context(pki.server.cert, pki.server.key, pki.ca)
        self.sock = socket.create_server((LOCALHOST, 0))
        self.port = int(self.sock.getsockname()[1])
        self.connections: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Closing alone would not wake the thread blocked in accept().
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            with contextlib.suppress(OSError), raw:
                raw.settimeout(5)
                with self.context.wrap_socket(raw, server_side=True) as conn:
                    self.connections.append(_read_all(conn))


def _read_all(conn: ssl.SSLSocket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = conn.recv(65536)
        except ssl.SSLEOFError:
            break
        if not chunk:
            break
        chunks.append(chunk)

    return b"".join(chunks)
