"""The MLLP listener: many connections, TLS, a foreign client, a clean stop."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ihe.hl7v2 import mllp
from ihe.hl7v2.listener import MllpListener, Reply
from ihe.hl7v2.receiver import make_listener
from ihe.tls import client_context, server_context
from server.config import load_settings
from server.runtime import Runtime
from tests.ihe.hl7v2.hl7v2_support import Client, ack_of, adt, case, listening
from tests.peers import require
from tests.tls_ca import TestCA


def test_listener_four_connections_at_once_each_answered_in_order(
    rt: Runtime,
) -> None:
    answers: dict[int, list[str]] = {}

    def sender(index: int, port: int) -> None:
        with Client(port) as client:
            for n in range(5):
                client.send(adt(f"C{index}-{n}", f"P{index}^^^CHU_X^PI"))
            answers[index] = [ack_of(client.read()).value("MSA-2") for _ in range(5)]

    with listening(rt) as port:
        threads = [threading.Thread(target=sender, args=(i, port)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert answers == {i: [f"C{i}-{n}" for n in range(5)] for i in range(4)}


def test_listener_stop_closes_open_connections_and_frees_port(rt: Runtime) -> None:
    class Echo:
        def handle(self, payload: bytes, peer: str) -> Reply:
            return Reply(payload)

        def handle_oversized(self, head: bytes, size: int, peer: str) -> Reply:
            return Reply(None)

    listener = MllpListener(Echo(), "127.0.0.1", 0, max_frame=4096)
    listener.start()
    port = listener.address[1]
    client = Client(port)
    client.send(b"ping")
    assert client.read() == b"ping"
    started = time.monotonic()
    listener.stop()
    assert time.monotonic() - started < 3
    assert client.sock.recv(10) == b""
    client.close()
    again = MllpListener(Echo(), "127.0.0.1", port, max_frame=4096)
    again.start()
    again.stop()


def test_listener_mutual_tls_requires_client_certificate(
    rt: Runtime, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "pki")
    server, client_cert = ca.issue("spiders"), ca.issue("gam")
    tls = server_context(server.cert, server.key, ca.pem)
    with listening(rt, tls=tls) as port:
        trusted = client_context(ca.pem, client_cert.cert, client_cert.key)
        with Client(port, tls=trusted) as client:
            assert client.exchange(adt("TLS-1", "P1^^^CHU_X^PI")).value("MSA-1") == "AA"
        anonymous = client_context(ca.pem)
        refused = pytest.raises((ssl.SSLError, ConnectionError, OSError))
        with refused, Client(port, tls=anonymous) as client:
            client.send(adt("TLS-2", "P1^^^CHU_X^PI"))
            client.read(5)


def test_make_listener_tls_from_settings(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("spiders")
    settings = load_settings(
        {
            "SPIDERS_DATA_DIR": str(tmp_path / "var"),
            "SPIDERS_MLLP_PORT": "0",
            "SPIDERS_MLLP_TLS_CERT": str(server.cert),
            "SPIDERS_MLLP_TLS_KEY": str(server.key),
        }
    )
    rt = Runtime(settings)
    listener = make_listener(settings, rt.db)
    assert listener.ssl_context is not None
    assert listener.ssl_context.verify_mode == ssl.CERT_NONE
    listener.start()
    try:
        with Client(listener.address[1], tls=client_context(ca.pem)) as client:
            assert client.exchange(adt("TLS-3", "P1^^^CHU_X^PI")).value("MSA-1") == "AA"
    finally:
        listener.stop()
        rt.db.dispose()


@pytest.mark.peer
def test_listener_python_hl7_mllp_send_file_of_messages_all_acknowledged(
    rt: Runtime, tmp_path: Path
) -> None:
    mllp_send = require(str(Path(sys.executable).parent / "mllp_send"), "hl7 (pip)")
    messages = [
        adt(
            "FOREIGN-1",
            "40000123^^^CHU_BELLEVAL^PI",
            name="MARTIN^Louise^^^^^L",
            birth_date="19720415",
        ),
        case("C01a-lf-separators-siu-s12.hl7"),
        case("C04-adt-a02-msh18-8859-1-zbe.hl7"),
        case("C05-escape-sequences-orm-o01.hl7"),
    ]
    batch = tmp_path / "batch.hl7"
    batch.write_bytes(b"".join(mllp.frame(m) for m in messages))
    with listening(rt) as port:
        proc = subprocess.run(
            [mllp_send, "--file", str(batch), "--port", str(port), "127.0.0.1"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    answers = [line for line in proc.stdout.split(b"\n") if b"MSA|" in line]
    acks = [ack_of(line.strip(b"\x0b\x1c\r")) for line in answers]
    assert [(a.value("MSA-1"), a.value("MSA-2")) for a in acks] == [
        ("AA", "FOREIGN-1"),
        ("AA", "SIU-LF-0001"),
        ("AA", "ADTA02-0001"),
        ("AA", "ORM-ESC-0005"),
    ]


def test_listener_bytes_before_start_block_skipped(rt: Runtime) -> None:
    with listening(rt) as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"\r\nnoise" + mllp.frame(adt("NOISE-1", "P1^^^CHU_X^PI")))
        decoder = mllp.FrameDecoder(65536)
        frames: list[bytes | mllp.Oversized] = []
        while not frames:
            frames = decoder.feed(sock.recv(65536))
        sock.close()
    assert isinstance(frames[0], bytes)
    assert ack_of(frames[0]).value("MSA-2") == "NOISE-1"


def test_listener_connections_beyond_the_cap_closed_at_once(rt: Runtime) -> None:
    with listening(rt, max_connections=2) as port:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            time.sleep(0.2)  # both accepted and served
            extra = socket.create_connection(("127.0.0.1", port), timeout=5)
            with extra:
                assert extra.recv(1) == b""  # closed without an answer
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.2)
        with Client(port) as client:  # room again once those closed
            assert (
                client.exchange(adt("CAP-1", "A1^^^H&2.999.3&ISO")).value("MSA-1")
                == "AA"
            )


def test_listener_idle_connection_closed(rt: Runtime) -> None:
    with listening(rt, idle_seconds=0.5) as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        with sock:
            started = time.monotonic()
            assert sock.recv(1) == b""
            assert 0.4 < time.monotonic() - started < 4


def test_listener_frame_trickled_too_slowly_closed(rt: Runtime) -> None:
    with listening(rt, idle_seconds=1.0) as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        with sock:
            started = time.monotonic()
            sock.sendall(b"\x0bMSH|^~\\&|")
            closed = False
            for _ in range(10):  # one byte every 0.4 s: never idle
                time.sleep(0.4)
                try:
                    sock.sendall(b"X")
                except OSError:
                    closed = True
                    break
            if not closed:
                sock.settimeout(3)
                try:
                    closed = sock.recv(1) == b""
                except ConnectionResetError:
                    closed = True
            assert closed
            assert time.monotonic() - started < 5
