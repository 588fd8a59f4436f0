"""Helpers for the HL7 v2 tests: a small MLLP client, a listener, sample messages."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ihe.hl7v2 import er7, mllp
from ihe.hl7v2.listener import MllpListener
from ihe.hl7v2.receiver import Receiver
from server.runtime import Runtime

DATA = Path(__file__).parents[2] / "data" / "hl7v2"
MAX_FRAME = 1024 * 1024


def case(name: str) -> bytes:
    """The bytes of a field case file under tests/data/hl7v2."""
    return (DATA / name).read_bytes()


class Client:
    """An MLLP client that reads answers frame by frame."""

    def __init__(
        self, port: int, tls: ssl.SSLContext | None = None, timeout: float = 10.0
    ) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
            except (ssl.SSLError, OSError):
                sock.close()
                raise
        self.sock = sock
        self._decoder = mllp.FrameDecoder(MAX_FRAME)
        self._frames: list[bytes] = []

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def send(self, payload: bytes) -> None:
        """Send one framed message."""
        self.sock.sendall(mllp.frame(payload))

    def read(self, timeout: float = 10.0) -> bytes:
        """The next answer's payload; raises TimeoutError when none comes."""
        self.sock.settimeout(timeout)
        while not self._frames:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed by the listener")
            for item in self._decoder.feed(data):
                assert isinstance(item, bytes)
                self._frames.append(item)
        return self._frames.pop(0)

    def silent(self, timeout: float = 0.2) -> bool:
        """True when nothing arrives within `timeout` seconds."""
        try:
            self._frames.append(self.read(timeout))
        except TimeoutError:
            return True
        return False

    def exchange(self, payload: bytes) -> er7.Message:
        """Send one message and return its parsed ACK."""
        self.send(payload)
        return ack_of(self.read())


def ack_of(payload: bytes) -> er7.Message:
    """Parse an ACK payload (ASCII or as its MSH-18 says)."""
    return er7.parse_bytes(payload, "UNICODE UTF-8")


@contextmanager
def listening(
    rt: Runtime,
    *,
    max_frame: int = MAX_FRAME,
    tls: ssl.SSLContext | None = None,
    receiver: Receiver | None = None,
    **options: Any,
) -> Iterator[int]:
    """A listener over `rt` on an ephemeral loopback port; yields the port.

    `options` go to :class:`MllpListener` (``max_connections``,
    ``idle_seconds``).
    """
    listener = MllpListener(
        receiver or Receiver(rt.db, rt.settings),
        "127.0.0.1",
        0,
        max_frame=max_frame,
        ssl_context=tls,
        **options,
    )
    listener.start()
    try:
        yield listener.address[1]
    finally:
        listener.stop()


def adt(
    control_id: str,
    pid3: str,
    *,
    event: str = "A28",
    name: str = "DUPONT^Marie^^^^^L",
    extra: str = "",
    sender: str = "GAM|CHU_BELLEVAL",
    reliability: str = "",
    birth_date: str = "19700101",
    sex: str = "F",
) -> bytes:
    """An ADT message (UTF-8) feeding one patient; `extra` adds segments.

    `reliability` is PID-32 (identity status and attributes, ``VALI~HOMA``).
    """
    pid32 = "|" * 24 + reliability if reliability else ""
    segments = [
        f"MSH|^~\\&|{sender}|SPIDERS|SPIDERS|20250317090000||ADT^{event}^ADT_A05|"
        f"{control_id}|P|2.5|||||FRA|UNICODE UTF-8",
        "EVN||20250317090000",
        f"PID|1||{pid3}||{name}||{birth_date}|{sex}{pid32}",
        *([extra] if extra else []),
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def siu(
    control_id: str,
    event: str,
    appointment: str,
    pid3: str,
    start: str,
    *,
    location: str = "RCP-ONCO^^^CHU_BELLEVAL",
    status: str = "Booked",
) -> bytes:
    """An SIU message (UTF-8) for one appointment at `start` (HL7 DTM)."""
    segments = [
        "MSH|^~\\&|RDV_APP|CHU_BELLEVAL|SPIDERS|SPIDERS|20250317081500||"
        f"SIU^{event}^SIU_S12|{control_id}|P|2.5^FRA^2.10|||||FRA|UNICODE UTF-8",
        f"SCH|{appointment}^RDV_APP|{appointment}^RDV_APP|||||RCP^RCP^L||60|min|"
        f"^^60^{start}||||||||||||||{status}",
        f"PID|1||{pid3}||DUPONT^Marie^^^MME^^L||19700101|F",
        "RGS|1|A",
        f"AIS|1|A|RCP-ONCO^RCP oncologie^L|{start}|||60|min",
        f"AIL|1|A|{location}",
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")
