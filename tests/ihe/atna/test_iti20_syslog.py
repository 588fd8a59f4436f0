"""ITI-20 syslog transport: RFC 5424 header, RFC 5425 framing, field case C25.

C25 (``../shared/cases/C25-atna-syslog-frame.txt``): what our sender writes to a
TLS listener must carry MSG-LEN in octets, MSGID ``IHE+RFC-3881``, SD ``-`` and
a schema-valid AuditMessage whose non-ASCII patient name survives byte-exact.
The assertions A1-A8 of the case are the tests named ``test_c25_a*``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from lxml import etree

from ihe.atna import outbox
from ihe.atna.delivery import Destination, OutboxSender
from ihe.atna.iti20_record_audit_event import (
    DEFAULT_PRI,
    MSGID,
    Facility,
    Repository,
    Scheme,
    Severity,
    TlsTransport,
    frame,
    parse_message,
    read_frames,
    syslog_message,
)
from ihe.tls import client_context
from server.db import Database
from tests.audit_samples import PATIENT_NAME, c25_instances_transferred
from tests.audit_schema import assert_valid_audit
from tests.syslog_peer import TlsListener, make_pki

RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$"
)
WHEN = datetime(2025, 3, 21, 14, 30, 2, 417000, tzinfo=timezone(timedelta(hours=1)))


@dataclass
class Wire:
    """What one sender connection carried: the raw bytes and its messages."""

    raw: bytes
    messages: list[bytes]


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wire]:
    """Two C25 records sent by the outbox sender to a mutual-TLS listener."""
    tmp = tmp_path_factory.mktemp("c25")
    pki = make_pki(tmp / "pki")
    db = Database(f"sqlite:///{tmp / 'audit.sqlite'}")
    db.create_schema()
    with db.session() as session:
        outbox.record(session, c25_instances_transferred())
        outbox.record(session, c25_instances_transferred())
    with TlsListener(pki) as listener:
        context = client_context(pki.ca, pki.client.cert, pki.client.key)
        transport = TlsTransport("127.0.0.1", listener.port, context, timeout=5)
        repository = Repository(Scheme.TLS, "127.0.0.1", listener.port)
        sender = OutboxSender(db, [Destination(repository, transport)])
        assert sender.run_once() == {repository.url: 2}
        deadline = time.monotonic() + 5
        while not listener.connections and time.monotonic() < deadline:
            time.sleep(0.02)
    db.dispose()
    (raw,) = listener.connections
    messages, rest = read_frames(raw)
    assert rest == b""
    yield Wire(raw, messages)


def test_c25_a1_msg_len_counts_octets_not_characters(wire: Wire) -> None:
    match = re.match(rb"(\d+) <", wire.raw)
    assert match is not None
    msg = wire.raw[match.end() - 1 : match.end() - 1 + int(match[1])]
    assert int(match[1]) == len(msg)
    # The name's three accented letters take six octets: a count of
    # characters would be three short.
    assert len(msg) - len(msg.decode("utf-8")) == 3
    assert int(match[1]) != len(msg.decode("utf-8"))


def test_c25_a2_version_pri_and_timestamp(wire: Wire) -> None:
    for message in wire.messages:
        parsed = parse_message(message)
        assert parsed.version == 1
        assert 0 <= parsed.pri <= 191
        assert parsed.pri == 85
        assert RFC3339.match(parsed.timestamp), parsed.timestamp


def test_c25_a3_msgid_exact(wire: Wire) -> None:
    assert [parse_message(m).msgid for m in wire.messages] == [MSGID, MSGID]
    assert MSGID == "IHE+RFC-3881"


def test_c25_a4_structured_data_nil(wire: Wire) -> None:
    assert [parse_message(m).structured_data for m in wire.messages] == ["-", "-"]


def test_c25_a5_msg_is_valid_utf8_audit_message(wire: Wire) -> None:
    for message in wire.messages:
        xml = parse_message(message).msg
        assert not xml.startswith(b"\xef\xbb\xbf")
        root = etree.fromstring(xml)
        assert root.getroottree().docinfo.encoding == "UTF-8"
        assert root.tag == "AuditMessage"
        assert_valid_audit(xml)


def test_c25_a6_event_id_is_numeric_dcm_code(wire: Wire) -> None:
    for message in wire.messages:
        root = etree.fromstring(parse_message(message).msg)
        event_id = root.find("EventIdentification/EventID")
        assert event_id.get("csd-code") == "110104"
        assert event_id.get("codeSystemName") == "DCM"


def test_c25_a7_patient_name_byte_exact(wire: Wire) -> None:
    name = PATIENT_NAME.encode("utf-8")
    for message in wire.messages:
        assert b"<ParticipantObjectName>" + name + b"</" in message
        root = etree.fromstring(parse_message(message).msg)
        names = root.xpath("//ParticipantObjectName/text()")
        assert PATIENT_NAME in names


def test_c25_a8_two_records_on_one_connection_recovered(wire: Wire) -> None:
    assert len(wire.messages) == 2
    first, second = (parse_message(m) for m in wire.messages)
    assert first.msg == second.msg
    # A newline-delimited reader would cut each message after its XML
    # declaration: only octet counting recovers them.
    assert len(wire.raw.split(b"\n")) != 2


def test_syslog_message_header_fields_in_order() -> None:
    message = syslog_message(
        b"<AuditMessage/>", hostname="rcp.example", procid="4711", timestamp=WHEN
    )

    assert message == (
        b"<85>1 2025-03-21T14:30:02.417+01:00 rcp.example SPIDERS 4711 "
        b"IHE+RFC-3881 - <AuditMessage/>"
    )


def test_syslog_message_utc_written_z_and_bom_removed() -> None:
    when = datetime(2025, 3, 21, 13, 30, tzinfo=UTC)
    message = syslog_message(b"\xef\xbb\xbf<a/>", hostname="h", timestamp=when)

    parsed = parse_message(message)
    assert parsed.timestamp == "2025-03-21T13:30:00.000Z"
    assert parsed.procid == "-"
    assert parsed.msg == b"<a/>"


def test_syslog_message_facility_and_severity_make_pri() -> None:
    message = syslog_message(
        b"<a/>",
        hostname="h",
        facility=Facility.LOG_AUDIT,
        severity=Severity.WARNING,
    )

    assert parse_message(message).pri == 13 * 8 + 4
    assert DEFAULT_PRI == 85


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hostname": "has space"},
        {"hostname": "h" * 256},
        {"app_name": "A" * 49},
        {"procid": "pid\u00e9"},
        {"timestamp": datetime(2025, 1, 1)},
        {"severity": 8},
        {"facility": 24},
    ],
)
def test_syslog_message_invalid_header_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        syslog_message(b"<a/>", **{"hostname": "h", **kwargs})  # type: ignore[arg-type]


def test_frame_counts_bytes() -> None:
    message = "é".encode()

    assert frame(message) == b"2 \xc3\xa9"


def test_read_frames_keeps_incomplete_tail() -> None:
    data = frame(b"<1>1 a") + frame(b"<2>1 bc")[:5]

    messages, rest = read_frames(data)

    assert messages == [b"<1>1 a"]
    assert rest == b"7 <2>"


def test_read_frames_newline_framing_refused() -> None:
    with pytest.raises(ValueError, match="octet-counting"):
        read_frames(b"<85>1 - - - - - - x\n")


def test_parse_message_structured_data_with_brackets() -> None:
    data = b'<85>1 - h A 1 M [id@1 k="v\\]x"][b@2 z="1"] body'

    parsed = parse_message(data)

    assert parsed.structured_data == '[id@1 k="v\\]x"][b@2 z="1"]'
    assert parsed.msg == b"body"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tls://arr.example:6514", Repository(Scheme.TLS, "arr.example", 6514)),
        ("udp://10.0.0.5", Repository(Scheme.UDP, "10.0.0.5", 514)),
        ("TLS://[2001:db8::1]:7000", Repository(Scheme.TLS, "2001:db8::1", 7000)),
        (" tls://arr ", Repository(Scheme.TLS, "arr", 6514)),
    ],
)
def test_repository_parse_accepts(text: str, expected: Repository) -> None:
    assert Repository.parse(text) == expected


def test_repository_url_round_trip() -> None:
    repository = Repository.parse("tls://[2001:db8::1]:7000")

    assert Repository.parse(repository.url) == repository
    assert repository.url == "tls://[2001:db8::1]:7000"


@pytest.mark.parametrize(
    "text", ["tcp://arr:514", "arr:6514", "tls://", "tls://arr:0", "udp://a:b", ""]
)
def test_repository_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        Repository.parse(text)


def test_tls_transport_foreign_client_certificate_fails(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", foreign_client=True)
    with TlsListener(pki) as listener:
        context = client_context(pki.ca, pki.client.cert, pki.client.key)
        transport = TlsTransport("127.0.0.1", listener.port, context, timeout=5)
        with pytest.raises(OSError):
            transport.send([syslog_message(b"<a/>", hostname="h")])
