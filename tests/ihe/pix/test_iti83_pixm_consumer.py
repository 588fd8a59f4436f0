"""ITI-83 PIXm Consumer: the request written and the answers read."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ihe.pix import iti83_pixm_consumer as iti83
from ihe.pix.iti9_pix_consumer import CrossReference
from mappings.identifiers import Identifier
from server.errors import PeerError, PixQueryError, UnknownPixDomainError

A, B, C = "2.999.6.1", "2.999.6.2", "2.999.6.3"
SOURCE = Identifier(A, "A-1|2")


def parameters(*idents: tuple[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [
            *(
                {
                    "name": "targetIdentifier",
                    "valueIdentifier": {"system": s, "value": v},
                }
                for s, v in idents
            ),
            {"name": "targetId", "valueReference": {"reference": "Patient/p1"}},
        ],
    }


def test_query_string_exact() -> None:
    assert iti83.query_string(SOURCE, (B, C)) == (
        "sourceIdentifier=urn%3Aoid%3A2.999.6.1%7CA-1%7C2"
        "&targetSystem=urn%3Aoid%3A2.999.6.2&targetSystem=urn%3Aoid%3A2.999.6.3"
    )


def test_parse_answer_200_reads_target_identifiers_in_domains_asked() -> None:
    body = parameters(
        (f"urn:oid:{B}", "B-7"), ("urn:oid:2.999.9.9", "Z-1"), (f"urn:oid:{A}", "A-1|2")
    )
    assert iti83.parse_answer(200, body, SOURCE, (B, C)) == CrossReference(
        True, (Identifier(B, "B-7"),)
    )


def test_parse_answer_200_without_parameter_is_known_without_identifiers() -> None:
    body = {"resourceType": "Parameters"}
    assert iti83.parse_answer(200, body, SOURCE, (B,)) == CrossReference(True, ())


def test_parse_answer_404_is_not_known() -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": []}
    assert iti83.parse_answer(404, outcome, SOURCE, (B,)) == CrossReference(False)


@pytest.mark.parametrize(
    ("status", "domains"), [(400, (A,)), (403, (B, C))], ids=["source", "target"]
)
def test_parse_answer_unknown_domain_names_it(
    status: int, domains: tuple[str, ...]
) -> None:
    with pytest.raises(UnknownPixDomainError) as caught:
        iti83.parse_answer(status, None, SOURCE, (B, C))
    assert (caught.value.domains, caught.value.status) == (domains, status)


def test_parse_answer_401_is_a_refusal() -> None:
    with pytest.raises(PixQueryError) as caught:
        iti83.parse_answer(401, None, SOURCE, (B,))
    assert type(caught.value) is PixQueryError and caught.value.status == 401


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, None),
        (503, {"resourceType": "OperationOutcome"}),
        (200, {"resourceType": "Bundle"}),
        (200, None),
        (
            200,
            {"resourceType": "Parameters", "parameter": [{"name": "targetIdentifier"}]},
        ),
    ],
)
def test_parse_answer_failure_or_bad_body_is_peer_error(status: int, body: Any) -> None:
    with pytest.raises(PeerError) as caught:
        iti83.parse_answer(status, body, SOURCE, (B,))
    assert not isinstance(caught.value, PixQueryError)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server: Any = self.server
        server.seen.append((self.path, dict(self.headers)))
        if server.delay:
            time.sleep(server.delay)
        body = json.dumps(server.body).encode()
        self.send_response(server.status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextmanager
def fake_pixm(status: int, body: Any, delay: float = 0.0) -> Iterator[Any]:
    """A FHIR server answering every GET with `status` and `body`."""
    httpd: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.status, httpd.body, httpd.delay, httpd.seen = status, body, delay, []
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_ask_sends_the_operation_with_headers() -> None:
    with fake_pixm(200, parameters((f"urn:oid:{B}", "B-7"))) as httpd:
        base = f"http://127.0.0.1:{httpd.server_address[1]}/fhir/"
        peer = iti83.PixmPeer(base, 5.0, auth_header="Bearer t0k")
        result = iti83.ask(peer, SOURCE, (B,))
    assert result == CrossReference(True, (Identifier(B, "B-7"),))
    ((path, headers),) = httpd.seen
    assert path == (
        "/fhir/Patient/$ihe-pix?sourceIdentifier=urn%3Aoid%3A2.999.6.1%7CA-1%7C2"
        "&targetSystem=urn%3Aoid%3A2.999.6.2"
    )
    assert (headers["Accept"], headers["Authorization"]) == (
        "application/fhir+json",
        "Bearer t0k",
    )


def test_ask_slow_manager_is_peer_error_within_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with fake_pixm(200, parameters(), delay=2.0) as httpd:
        peer = iti83.PixmPeer(f"http://127.0.0.1:{httpd.server_address[1]}", 0.5)
        started = time.monotonic()
        with pytest.raises(PeerError, match="did not answer"):
            iti83.ask(peer, SOURCE, (B,))
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 1.5
    (record,) = [r for r in caplog.records if r.name == iti83.__name__]
    assert (record.levelname, record.getMessage()) == ("WARNING", iti83.LOG_FAILED)
    assert "A-1" not in caplog.text
