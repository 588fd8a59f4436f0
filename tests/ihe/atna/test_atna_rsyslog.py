"""ITI-20 delivery to a real audit repository: a private rsyslogd, UDP and mutual TLS.

Each test starts its own rsyslogd on ephemeral loopback ports with a test CA
(:mod:`tests.syslog_peer`), counts and validates what it wrote, and always stops
it. The restart test stops the daemon, records events while it is down, starts it
again and checks that every record arrives, in order, exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from lxml import etree
from sqlalchemy import select

from ihe.atna import delivery, outbox
from ihe.atna.delivery import Destination, OutboxSender
from ihe.atna.iti20_record_audit_event import (
    MSGID,
    Repository,
    Scheme,
    TlsTransport,
    UdpTransport,
    parse_message,
)
from ihe.tls import client_context
from server.config import load_settings
from server.db import Database
from server.demo.run import Server, server_env
from server.models import AuditRecord
from tests.audit_samples import SAMPLES
from tests.audit_schema import assert_valid_audit
from tests.peers import free_port
from tests.syslog_peer import Pki, RsyslogPeer, make_pki

pytestmark = pytest.mark.peer


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def peer(pki: Pki) -> Iterator[RsyslogPeer]:
    with RsyslogPeer(pki) as running:
        yield running


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    database.create_schema()
    yield database
    database.dispose()


def tls_destination(peer: RsyslogPeer, pki: Pki) -> Destination:
    context = client_context(pki.ca, pki.client.cert, pki.client.key)
    return Destination(
        Repository(Scheme.TLS, "127.0.0.1", peer.tls_port),
        TlsTransport("127.0.0.1", peer.tls_port, context, timeout=5),
    )


def udp_destination(peer: RsyslogPeer) -> Destination:
    return Destination(
        Repository(Scheme.UDP, "127.0.0.1", peer.udp_port),
        UdpTransport("127.0.0.1", peer.udp_port),
    )


def add(db: Database, *names: str) -> list[str]:
    """Record samples; return their XML as stored, in id order."""
    with db.session() as session:
        rows = [outbox.record(session, SAMPLES[name]()) for name in names]
        return [row.xml for row in rows]


def received_xml(lines: list[str]) -> list[str]:
    """The XML of each syslog message rsyslog wrote, checked on the way."""
    found = []
    for line in lines:
        message = parse_message(line.encode("utf-8"))
        assert (message.pri, message.version, message.msgid) == (85, 1, MSGID)
        assert message.app_name == "SPIDERS"
        assert message.structured_data == "-"
        assert_valid_audit(message.msg)
        found.append(message.msg.decode("utf-8"))
    return found


def test_rsyslog_receives_every_event_over_tls_and_udp(
    peer: RsyslogPeer, pki: Pki, db: Database
) -> None:
    expected = add(db, *SAMPLES)
    sender = OutboxSender(db, [tls_destination(peer, pki), udp_destination(peer)])

    sent = sender.run_once()

    assert set(sent.values()) == {len(SAMPLES)}
    tls_lines = peer.wait_for(peer.tls_file, len(expected))
    udp_lines = peer.wait_for(peer.udp_file, len(expected))
    assert received_xml(tls_lines) == expected
    assert sorted(received_xml(udp_lines)) == sorted(expected)
    assert sender.pending() == 0


def test_rsyslog_restart_nothing_lost_in_order_no_duplicates(
    peer: RsyslogPeer, pki: Pki, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    sender = OutboxSender(
        db, [tls_destination(peer, pki)], backoff_base=0.05, backoff_max=0.2
    )
    expected = add(db, "110100-start", "110110", "110111")
    assert sender.run_once() == {sender.destinations[0].repository.url: 3}
    assert len(peer.wait_for(peer.tls_file, 3)) == 3

    # The repository goes down; the clinical work goes on and is recorded.
    peer.stop()
    for _ in range(3):
        expected += add(db, "110112", "110102", "110104")
        sender.run_once()
        time.sleep(0.25)
    assert sender.pending() == 9
    outage = [r for r in caplog.records if r.getMessage() == delivery.LOG_OUTAGE]
    assert len(outage) == 1

    # It comes back: everything arrives, in order, once.
    peer.start()
    time.sleep(0.25)
    sender.run_once()
    lines = peer.wait_for(peer.tls_file, len(expected))
    assert received_xml(lines) == expected
    time.sleep(0.3)
    assert len(peer.lines(peer.tls_file)) == len(expected)
    assert sender.pending() == 0
    with db.session() as session:
        attempts = session.scalars(select(AuditRecord.attempts)).all()
    assert attempts[:3] == [1, 1, 1]
    assert all(count >= 2 for count in attempts[3:6])


def test_rsyslog_refuses_foreign_client_certificate_records_kept(
    tmp_path: Path, db: Database
) -> None:
    foreign = make_pki(tmp_path / "foreign", foreign_client=True)
    with RsyslogPeer(foreign) as peer:
        add(db, "110110")
        sender = OutboxSender(db, [tls_destination(peer, foreign)])

        assert set(sender.run_once().values()) == {0}
        time.sleep(0.3)
        assert peer.lines(peer.tls_file) == []
        assert sender.pending() == 1


def test_serve_delivers_start_and_stop_to_rsyslog(
    tmp_path: Path, peer: RsyslogPeer, pki: Pki
) -> None:
    sites = tmp_path / "sites.yaml"
    sites.write_text(yaml.safe_dump({"sites": [], "consoles": []}), encoding="utf-8")
    http_port = free_port()
    env = server_env(
        load_settings({}), tmp_path / "data", sites, http_port, free_port()
    )
    env.update(
        {
            "SPIDERS_AUDIT_REPOSITORIES": (
                f"tls://127.0.0.1:{peer.tls_port},udp://127.0.0.1:{peer.udp_port}"
            ),
            "SPIDERS_AUDIT_TLS_CA": str(pki.ca),
            "SPIDERS_AUDIT_TLS_CERT": str(pki.client.cert),
            "SPIDERS_AUDIT_TLS_KEY": str(pki.client.key),
        }
    )
    server = Server(env, http_port, tmp_path / "serve.log")
    try:
        server.wait_ready()
        started = peer.wait_for(peer.tls_file, 1, timeout=15)
        assert len(started) == 1
    finally:
        assert server.stop() == 0

    for path in (peer.tls_file, peer.udp_file):
        xml = received_xml(peer.wait_for(path, 2))
        types = [
            etree.fromstring(x.encode()).find(".//EventTypeCode").get("csd-code")
            for x in xml
        ]
        assert types == ["110120", "110121"]
    log = (tmp_path / "serve.log").read_text(encoding="utf-8")
    assert "audit delivery started" in log
    assert "Traceback" not in log


def test_serve_repository_down_clinical_intake_unaffected_then_delivered(
    tmp_path: Path, peer: RsyslogPeer, pki: Pki
) -> None:
    peer.stop()
    sites = tmp_path / "sites.yaml"
    sites.write_text(yaml.safe_dump({"sites": [], "consoles": []}), encoding="utf-8")
    http_port = free_port()
    env = server_env(
        load_settings({}), tmp_path / "data", sites, http_port, free_port()
    )
    env.update(
        {
            "SPIDERS_AUDIT_REPOSITORIES": f"tls://127.0.0.1:{peer.tls_port}",
            "SPIDERS_AUDIT_TLS_CA": str(pki.ca),
            "SPIDERS_AUDIT_TLS_CERT": str(pki.client.cert),
            "SPIDERS_AUDIT_TLS_KEY": str(pki.client.key),
        }
    )
    server = Server(env, http_port, tmp_path / "serve.log")
    try:
        server.wait_ready()
        started = time.monotonic()
        status, _ = server.request(
            "POST",
            "/fhir/Patient",
            {
                "resourceType": "Patient",
                "identifier": [{"system": "urn:oid:2.999.1.1", "value": "A77"}],
            },
        )
        assert status == 201
        # The feed is answered without waiting for the absent repository.
        assert time.monotonic() - started < 5
        time.sleep(3)  # a few delivery attempts fail meanwhile
        peer.start()
        xml = received_xml(peer.wait_for(peer.tls_file, 3, timeout=60))
    finally:
        assert server.stop() == 0
    event_ids = [
        etree.fromstring(x.encode()).find(".//EventID").get("csd-code") for x in xml
    ]
    # Application start, the token's first use, then the patient feed, in order.
    assert event_ids[:3] == ["110100", "110114", "110110"]
    log = (tmp_path / "serve.log").read_text(encoding="utf-8")
    assert "Traceback" not in log
