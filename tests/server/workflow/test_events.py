"""The event webhook: in order, retried with backoff while the receiver is down."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from server.models import Event
from server.runtime import Runtime
from server.workflow import events
from tests.peers import free_port

T0 = datetime(2025, 3, 4, 12, 0, tzinfo=UTC)


class Receiver:
    """A webhook receiver on loopback answering `status` to every POST."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.status = 204
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def receiver(port: int) -> Iterator[Receiver]:
    started = Receiver(port)
    yield started
    started.close()


def emit_two(rt: Runtime) -> None:
    with rt.db.session() as session:
        for n in (1, 2):
            event = events.emit(
                session, events.REGISTRATION_LATE, f"r{n}", {"state": "partial"}
            )
            event.created_at = event.next_attempt_at = T0


def state(rt: Runtime) -> list[tuple[int, bool, int, datetime, str | None]]:
    with rt.db.session() as session:
        return [
            (
                e.id,
                e.delivered_at is not None,
                e.attempts,
                e.next_attempt_at,
                e.last_error,
            )
            for e in session.query(Event).order_by(Event.id)
        ]


def test_deliver_due_receiver_down_kept_and_retried_with_backoff(
    rt: Runtime, port: int
) -> None:
    emit_two(rt)
    url = f"http://127.0.0.1:{port}/hook"
    assert events.deliver_due(rt.db, url, now=T0) == 0
    error = "the receiver could not be reached (ConnectionError)"
    # The first waits 5 s; the second was not tried, to keep the order.
    assert state(rt) == [
        (1, False, 1, T0 + timedelta(seconds=5), error),
        (2, False, 0, T0, None),
    ]
    assert events.deliver_due(rt.db, url, now=T0 + timedelta(seconds=4)) == 0
    assert state(rt)[0][2] == 1
    assert events.deliver_due(rt.db, url, now=T0 + timedelta(seconds=5)) == 0
    assert state(rt)[0][2:4] == (2, T0 + timedelta(seconds=15))


def test_deliver_due_receiver_up_gets_each_event_once_in_order(
    rt: Runtime, receiver: Receiver
) -> None:
    emit_two(rt)
    url = f"http://127.0.0.1:{receiver.port}/hook"
    assert events.deliver_due(rt.db, url, now=T0) == 2
    assert events.deliver_due(rt.db, url, now=T0 + timedelta(hours=1)) == 0
    assert receiver.bodies == [
        {
            "id": 1,
            "kind": "registration.late",
            "time": "2025-03-04T12:00:00+00:00",
            "registration": "r1",
            "state": "partial",
        },
        {
            "id": 2,
            "kind": "registration.late",
            "time": "2025-03-04T12:00:00+00:00",
            "registration": "r2",
            "state": "partial",
        },
    ]
    assert [row[1] for row in state(rt)] == [True, True]


def test_deliver_due_receiver_error_status_retried(
    rt: Runtime, receiver: Receiver
) -> None:
    emit_two(rt)
    receiver.status = 503
    url = f"http://127.0.0.1:{receiver.port}/hook"
    assert events.deliver_due(rt.db, url, now=T0) == 0
    assert state(rt)[0][1:] == (
        False,
        1,
        T0 + timedelta(seconds=5),
        "the receiver answered HTTP 503",
    )
    receiver.status = 200
    assert events.deliver_due(rt.db, url, now=T0 + timedelta(seconds=5)) == 2
    assert [b["id"] for b in receiver.bodies] == [1, 1, 2]


def test_retry_delay_doubles_up_to_ten_minutes() -> None:
    assert [events.retry_delay(n) for n in (1, 2, 3, 4, 8, 20)] == [
        5,
        10,
        20,
        40,
        600,
        600,
    ]
