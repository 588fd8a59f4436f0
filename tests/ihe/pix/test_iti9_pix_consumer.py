"""ITI-9 PIX Consumer: the QBP^Q23 written, the RSP^K23 read, the MLLP exchange."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import pytest

from ihe.hl7v2 import er7, mllp
from ihe.hl7v2.ack import PARIS
from ihe.pix import iti9_pix_consumer as iti9
from ihe.pix.iti9_pix_consumer import CrossReference, MllpPeer
from mappings.identifiers import Identifier
from server.errors import PeerError, PixQueryError, UnknownPixDomainError

A, B, C = "2.999.5.1", "2.999.5.2", "2.999.5.3"
SOURCE = Identifier(A, "A-1001")
NOW = datetime(2025, 3, 17, 9, 30, tzinfo=PARIS)


def query(domains: tuple[str, ...] = (B, C)) -> iti9.PixQuery:
    return iti9.build_query(
        SOURCE, domains, control_id="Q1", tag="TAG1", now=NOW, facility="RCP"
    )


def rsp(*segments: str, control_id: str = "Q1") -> bytes:
    head = [
        "MSH|^~\\&|MPI|REGION|SPIDERS|RCP|20250317093001||RSP^K23^RSP_K23|R1|P|2.5",
        segments[0].replace("{id}", control_id),
        *segments[1:],
    ]
    return ("\r".join(head) + "\r").encode("utf-8")


def test_build_query_segments_exact() -> None:
    q = query()
    msh, qpd, rcp = q.message.decode("utf-8").split("\r")[:3]
    assert msh == (
        "MSH|^~\\&|SPIDERS|RCP|||20250317093000+0100||QBP^Q23^QBP_Q21|Q1|P|2.5"
        "|||||FRA|UNICODE UTF-8"
    )
    assert qpd == (
        "QPD|IHE PIX Query|TAG1|A-1001^^^&2.999.5.1&ISO"
        "|^^^&2.999.5.2&ISO~^^^&2.999.5.3&ISO"
    )
    assert rcp == "RCP|I"
    assert q.message.endswith(b"RCP|I\r")
    assert (q.qpd, q.sender, q.domains) == (qpd, "SPIDERS|RCP", (B, C))


def test_build_query_escapes_value_and_makes_unique_tags() -> None:
    first = iti9.build_query(Identifier(A, "X|1^2"), ())
    second = iti9.build_query(Identifier(A, "X|1^2"), ())
    assert first.qpd == f"QPD|IHE PIX Query|{first.tag}|X\\F\\1\\S\\2^^^&{A}&ISO"
    assert first.tag != second.tag and first.control_id != second.control_id
    msg = er7.parse_bytes(first.message, "UNICODE UTF-8")
    assert msg.value("QPD-3.1") == "X|1^2"


def test_parse_response_ok_reads_pid3_in_domains_asked() -> None:
    raw = rsp(
        "MSA|AA|{id}",
        "QAK|TAG1|OK|IHE PIX Query",
        "QPD|IHE PIX Query|TAG1|A-1001^^^&2.999.5.1&ISO",
        "PID|||B-77^^^CHU_B&2.999.5.2&ISO^PI~Z-9^^^&2.999.9.9&ISO^PI"
        "~C\\S\\3^^^&2.999.5.3&ISO||~^^^^^^S",
    )
    assert iti9.parse_response(raw, query()) == CrossReference(
        True,
        (Identifier(B, "B-77", "PI", "CHU_B"), Identifier(C, "C^3")),
    )


def test_parse_response_nf_is_known_without_identifiers() -> None:
    raw = rsp("MSA|AA|{id}", "QAK|TAG1|NF|IHE PIX Query")
    assert iti9.parse_response(raw, query()) == CrossReference(True, ())


def test_parse_response_ae_204_on_identifier_is_not_known() -> None:
    raw = rsp(
        "MSA|AE|{id}|unknown",
        "ERR||QPD^1^3^1^1|204^Unknown key identifier^HL70357|E",
        "QAK|TAG1|AE|IHE PIX Query",
    )
    assert iti9.parse_response(raw, query()) == CrossReference(False, ())


def test_parse_response_ae_204_on_wanted_domain_names_it() -> None:
    raw = rsp(
        "MSA|AE|{id}",
        "ERR||QPD^1^4^2|204^Unknown key identifier^HL70357|E",
        "QAK|TAG1|AE|IHE PIX Query",
    )
    with pytest.raises(UnknownPixDomainError) as caught:
        iti9.parse_response(raw, query())
    assert caught.value.domains == (C,)
    assert (caught.value.code, caught.value.location) == (204, ("QPD", "1", "4", "2"))


def test_parse_response_ae_204_on_source_domain_names_it() -> None:
    raw = rsp("MSA|AE|{id}", "ERR||QPD^1^3^1^4|204|E", "QAK|TAG1|AE")
    with pytest.raises(UnknownPixDomainError) as caught:
        iti9.parse_response(raw, query())
    assert caught.value.domains == (A,)


def test_parse_response_ar_is_a_typed_refusal_with_err() -> None:
    raw = rsp(
        "MSA|AR|{id}",
        "ERR||MSH^1^12|203^Unsupported version id^HL70357|E",
        "QAK|TAG1|AR",
    )
    with pytest.raises(PixQueryError) as caught:
        iti9.parse_response(raw, query())
    assert type(caught.value) is PixQueryError
    assert (caught.value.code, caught.value.location) == (203, ("MSH", "1", "12"))
    assert str(caught.value) == "the PIX Manager answered AR (ERR-3 203)"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (rsp("MSA|AA|OTHER", "QAK|TAG1|OK"), "acknowledges another message"),
        (rsp("MSA|AA|{id}", "QAK|TAG9|OK"), "another query tag"),
        (rsp("MSA|AA|{id}", "QAK|TAG1|XX"), "QAK-2 'XX'"),
        (b"MSH|^~\\&|MPI||||x||ACK^A01|R|P|2.5\rMSA|AA|Q1\r", "not RSP\\^K23"),
        (b"garbage", "not a readable message"),
    ],
)
def test_parse_response_mismatched_answer_is_peer_error(
    raw: bytes, message: str
) -> None:
    with pytest.raises(PeerError, match=message) as caught:
        iti9.parse_response(raw, query())
    assert not isinstance(caught.value, PixQueryError)


class FakeManager:
    """A one-connection MLLP peer: records the frame, sends `answer(frame)`.

    An `answer` of None keeps the connection open without answering.
    """

    def __init__(self, answer: Callable[[bytes], bytes | None]) -> None:
        self.answer = answer
        self.received: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(5)
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn:
            decoder = mllp.FrameDecoder(1 << 20)
            conn.settimeout(5)
            while not self.received:
                data = conn.recv(65536)
                if not data:
                    return
                self.received += [f for f in decoder.feed(data) if isinstance(f, bytes)]
            reply = self.answer(self.received[0])
            if reply is None:
                time.sleep(2)
                return
            # In two reads, the end block in the second.
            conn.sendall(reply[:7])
            conn.sendall(reply[7:])

    def close(self) -> None:
        self.server.close()
        self.thread.join(5)


@contextmanager
def fake_manager(answer: Callable[[bytes], bytes | None]) -> Iterator[FakeManager]:
    manager = FakeManager(answer)
    try:
        yield manager
    finally:
        manager.close()


def test_ask_over_mllp_returns_identifiers() -> None:
    answer = rsp("MSA|AA|{id}", "QAK|TAG1|OK", "PID|||B-77^^^&2.999.5.2&ISO")
    with fake_manager(lambda frame: mllp.frame(answer)) as manager:
        result = iti9.ask(MllpPeer("127.0.0.1", manager.port, 5.0), query())
    assert manager.received == [query().message]
    assert result == CrossReference(True, (Identifier(B, "B-77"),))


def test_ask_silent_manager_is_peer_error_within_timeout() -> None:
    with fake_manager(lambda frame: None) as manager:
        started = time.monotonic()
        with pytest.raises(PeerError, match="did not answer in time"):
            iti9.ask(MllpPeer("127.0.0.1", manager.port, 0.5), query())
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 1.5


def test_ask_closed_connection_is_peer_error() -> None:
    with (
        fake_manager(lambda frame: b"") as manager,
        pytest.raises(PeerError, match="closed the connection"),
    ):
        iti9.ask(MllpPeer("127.0.0.1", manager.port, 5.0), query())


def test_ask_nothing_listening_is_peer_error(caplog: pytest.LogCaptureFixture) -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    with pytest.raises(PeerError, match="cannot connect"):
        iti9.ask(MllpPeer("127.0.0.1", port, 2.0), query())
    (record,) = [r for r in caplog.records if r.name == iti9.__name__]
    assert (record.levelname, record.getMessage()) == ("WARNING", iti9.LOG_FAILED)
    assert "A-1001" not in caplog.text
