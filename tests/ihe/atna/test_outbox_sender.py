"""The outbox sender against in-memory transports: order, per-repository state,
backoff, one warning per outage, leases."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from ihe.atna import delivery, outbox
from ihe.atna.delivery import Destination, OutboxSender
from ihe.atna.iti20_record_audit_event import (
    Repository,
    Scheme,
    parse_message,
)
from server.db import Database
from server.models import AuditDelivery, AuditRecord, AuditRepository
from tests.audit_samples import SAMPLES

TLS = Repository(Scheme.TLS, "arr.example", 6514)
UDP = Repository(Scheme.UDP, "arr2.example", 514)
START = datetime(2025, 3, 21, 12, 0, tzinfo=UTC)


class FakeTransport:
    """Keeps what it is sent; raises while `down`."""

    def __init__(self, max_message_size: int | None = None) -> None:
        self.max_message_size = max_message_size
        self.down = False
        self.batches: list[list[bytes]] = []

    def send(self, messages: Sequence[bytes]) -> None:
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        self.batches.append(list(messages))

    @property
    def event_ids(self) -> list[str]:
        return [
            parse_message(m).msg.split(b'csd-code="', 1)[1][:6].decode()
            for batch in self.batches
            for m in batch
        ]


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'outbox.sqlite'}")
    database.create_schema()
    yield database
    database.dispose()


def add(db: Database, *names: str) -> list[int]:
    with db.session() as session:
        rows = [outbox.record(session, SAMPLES[name]()) for name in names]
        session.flush()
        return [row.id for row in rows]


def sender(
    db: Database, *pairs: tuple[Repository, FakeTransport], clock: Clock | None = None
) -> OutboxSender:
    return OutboxSender(
        db,
        [Destination(repository, transport) for repository, transport in pairs],
        hostname="spiders.test",
        procid="42",
        batch_size=3,
        clock=clock or Clock(),
    )


def state(db: Database, repository: Repository) -> AuditRepository:
    with db.session() as session:
        row = session.get(AuditRepository, repository.url)
        assert row is not None
        return row


def test_sender_sends_in_id_order_in_batches(db: Database) -> None:
    add(db, "110100-start", "110110", "110111", "110112", "110102")
    transport = FakeTransport()

    sent = sender(db, (TLS, transport)).run_once()

    assert sent == {TLS.url: 5}
    assert [len(batch) for batch in transport.batches] == [3, 2]
    assert transport.event_ids == ["110100", "110110", "110111", "110112", "110102"]
    header = parse_message(transport.batches[0][0])
    assert (header.hostname, header.procid, header.msgid) == (
        "spiders.test",
        "42",
        "IHE+RFC-3881",
    )
    with db.session() as session:
        records = session.scalars(select(AuditRecord)).all()
        assert all(r.delivered_at is not None and r.attempts == 1 for r in records)


def test_sender_nothing_configured_records_stay(db: Database) -> None:
    add(db, "110110")
    empty = OutboxSender(db, [])

    assert empty.run_once() == {}
    assert empty.pending() == 0
    with db.session() as session:
        (record,) = session.scalars(select(AuditRecord)).all()
        assert record.delivered_at is None


def test_sender_delivered_only_once_every_repository_has_it(db: Database) -> None:
    (record_id,) = add(db, "110110")
    up, down = FakeTransport(), FakeTransport()
    down.down = True
    both = sender(db, (TLS, up), (UDP, down))

    assert both.run_once() == {TLS.url: 1, UDP.url: 0}

    with db.session() as session:
        record = session.get(AuditRecord, record_id)
        assert record is not None and record.delivered_at is None
        repositories = session.scalars(select(AuditDelivery.repository)).all()
        assert repositories == [TLS.url]
    assert both.pending() == 1


def test_sender_outage_warns_once_and_everything_arrives_in_order(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    transport = FakeTransport()
    audit_sender = sender(db, (TLS, transport), clock=clock)
    add(db, "110100-start")
    audit_sender.run_once()
    transport.down = True
    caplog.set_level(logging.INFO, logger=delivery.__name__)

    # Ten minutes down, records keep coming, attempts keep failing.
    for _ in range(10):
        add(db, "110112", "110104")
        audit_sender.run_once()
        clock.advance(60)
    transport.down = False
    audit_sender.run_once()

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [delivery.LOG_OUTAGE]
    assert warnings[0].repository == TLS.url  # type: ignore[attr-defined]
    recovered = [r for r in caplog.records if r.getMessage() == delivery.LOG_RECOVERED]
    assert len(recovered) == 1
    assert transport.event_ids == ["110100"] + ["110112", "110104"] * 10
    assert audit_sender.pending() == 0
    assert state(db, TLS).failures == 0


def test_sender_backs_off_exponentially_up_to_the_cap(db: Database) -> None:
    clock = Clock()
    transport = FakeTransport()
    transport.down = True
    audit_sender = OutboxSender(
        db,
        [Destination(TLS, transport)],
        backoff_base=2,
        backoff_max=10,
        clock=clock,
    )
    add(db, "110110")
    delays = []
    for _ in range(5):
        audit_sender.run_once()
        row = state(db, TLS)
        assert row.next_attempt_at is not None
        delays.append((row.next_attempt_at - clock.now).total_seconds())
        # Before the delay is over, nothing is tried.
        clock.advance(delays[-1] - 0.5)
        audit_sender.run_once()
        assert state(db, TLS).failures == len(delays)
        clock.advance(0.5)

    assert delays == [2, 4, 8, 10, 10]
    assert "ConnectionRefusedError" in (state(db, TLS).last_error or "")
    with db.session() as session:
        (record,) = session.scalars(select(AuditRecord)).all()
        assert record.attempts == 5


def test_sender_message_too_large_for_udp_skipped_with_warning(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    _, large = add(db, "110114-logout-failed", "110101")
    transport = FakeTransport(max_message_size=1200)
    caplog.set_level(logging.WARNING, logger=delivery.__name__)

    assert sender(db, (UDP, transport)).run_once() == {UDP.url: 2}

    assert transport.event_ids == ["110114"]
    (warning,) = caplog.records
    assert warning.getMessage() == delivery.LOG_TOO_LARGE
    assert warning.record == large  # type: ignore[attr-defined]


def test_sender_lease_keeps_a_second_process_off(db: Database) -> None:
    first_transport, second_transport = FakeTransport(), FakeTransport()
    first = sender(db, (TLS, first_transport))
    second = sender(db, (TLS, second_transport))
    add(db, "110110")
    first.run_once()
    add(db, "110112")

    assert second.run_once() == {TLS.url: 0}
    first.release()
    assert second.run_once() == {TLS.url: 1}
    assert first_transport.event_ids == ["110110"]
    assert second_transport.event_ids == ["110112"]


def test_sender_unexpected_error_logged_not_raised(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(FakeTransport):
        def send(self, messages: Sequence[bytes]) -> None:
            raise RuntimeError("bug")

    add(db, "110110")

    assert sender(db, (TLS, Broken())).run_once() == {TLS.url: 0}
    assert any(r.levelno == logging.ERROR for r in caplog.records)
