"""RAD-107 WADO-RS Retrieve: against Orthanc's DICOMweb plugin, and a scripted
HTTP server for what Orthanc never does (bodies cut short, odd Content-Types).

Orthanc runs with HTTP Basic authentication on; the site's ``auth_header`` is
the one credential it accepts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, MRImageStorage, RLELossless

from ihe.dicom.archive import Archive
from ihe.dicomweb.rad107_wado_rs_retrieve import ACCEPT, retrieve_study
from ihe.dicomweb.rad129_qido_rs_query import Endpoint
from tests.peers import LOCALHOST, OrthancPeer, basic_auth, free_port
from tests.retrieve_support import RetrieveStudy, cached_syntaxes, make_study

USER = ("spiders", "rcp-2024")
BOUNDARY = "7d2c0a1e-part"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> RetrieveStudy:
    return make_study(tmp_path_factory.mktemp("wado-study"), seed=7002)


@pytest.fixture(scope="module")
def site(study: RetrieveStudy) -> Iterator[OrthancPeer]:
    with OrthancPeer("HOPITAL_W", dicomweb=True, http_user=USER) as orthanc:
        assert orthanc.upload(study.files) == 7
        yield orthanc


def endpoint(url: str, auth: str | None = basic_auth(*USER)) -> Endpoint:
    return Endpoint(url=url, auth_header=auth, timeout=10)


@pytest.mark.peer
def test_retrieve_study_orthanc_exact_instances_and_syntaxes(
    site: OrthancPeer, archive: Archive, study: RetrieveStudy
) -> None:
    outcome = retrieve_study(
        endpoint(f"{site.url}/dicom-web/"),
        study.study_uid,
        archive,
        source="HOPITAL_W",
    )

    assert (outcome.outcome, outcome.http_status, outcome.status) == (
        "success",
        200,
        None,
    )
    assert (outcome.completed, outcome.failed) == (7, 0)
    assert cached_syntaxes(archive, study.study_uid) == study.syntaxes
    [delivery] = outcome.studies
    assert (delivery.new, delivery.replaced) == (7, 0)
    assert dict(delivery.sop_classes) == {CTImageStorage: 5, MRImageStorage: 2}
    assert {row.source_ae for row in archive.instances()} == {"HOPITAL_W"}
    assert list(archive.incoming.iterdir()) == []


@pytest.mark.peer
def test_retrieve_study_series_level_only_named_series_arrive(
    site: OrthancPeer, archive: Archive, study: RetrieveStudy
) -> None:
    first, abdomen, _ = study.series_uids

    outcome = retrieve_study(
        endpoint(f"{site.url}/dicom-web"),
        study.study_uid,
        archive,
        series_uids=[first, abdomen],
    )

    assert (outcome.outcome, outcome.completed) == ("success", 5)
    assert cached_syntaxes(archive, study.study_uid) == study.only(first, abdomen)


@pytest.mark.peer
@pytest.mark.parametrize(
    "auth", [None, basic_auth("spiders", "wrong")], ids=["none", "wrong"]
)
def test_retrieve_study_orthanc_401_not_authorised(
    site: OrthancPeer, archive: Archive, study: RetrieveStudy, auth: str | None
) -> None:
    outcome = retrieve_study(
        endpoint(f"{site.url}/dicom-web", auth), study.study_uid, archive
    )

    assert (outcome.outcome, outcome.http_status) == ("not_authorised", 401)
    assert outcome.reason == (
        "not authorised by the site: check the site's dicomweb auth_header (HTTP 401)"
    )
    assert archive.instances() == []


@pytest.mark.peer
def test_retrieve_study_unknown_study_orthanc_404_not_found(
    site: OrthancPeer, archive: Archive
) -> None:
    outcome = retrieve_study(endpoint(f"{site.url}/dicom-web"), "2.25.1", archive)

    assert (outcome.outcome, outcome.http_status, outcome.completed) == (
        "not_found",
        404,
        0,
    )
    assert outcome.reason == "the site holds nothing under this UID (HTTP 404)"


def test_retrieve_study_nothing_listening_association_aborted(
    archive: Archive,
) -> None:
    url = f"http://{LOCALHOST}:{free_port()}/dicom-web"

    outcome = retrieve_study(endpoint(url), "2.25.1", archive)

    assert (outcome.outcome, outcome.error_comment) == (
        "association_aborted",
        "unreachable",
    )


# The scripted server: answers every GET with the script's status and body.


@dataclass
class Script:
    url: str = ""
    body: bytes = b""
    content_type: str = ""
    declared_length: int | None = None
    status: int = 200
    requests: list[dict[str, str]] = field(default_factory=list)


def handler_for(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            script.requests.append({"path": self.path, **dict(self.headers)})
            self.send_response(script.status)
            self.send_header("Content-Type", script.content_type)
            if script.declared_length is not None:
                self.send_header("Content-Length", str(script.declared_length))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(script.body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@pytest.fixture
def scripted() -> Iterator[Script]:
    script = Script()
    server = ThreadingHTTPServer((LOCALHOST, 0), handler_for(script))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    script.url = f"http://{LOCALHOST}:{server.server_address[1]}/wado"
    try:
        yield script
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def multipart(files: tuple[Path, ...], *, close: bool = True) -> bytes:
    out = bytearray(b"preamble\r\n")
    for path in files:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        out += path.read_bytes() + b"\r\n"
    if close:
        out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


@pytest.mark.parametrize(
    "content_type",
    [
        f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"',
        f"multipart/related;boundary={BOUNDARY};type=application/dicom",
    ],
    ids=["quoted", "unquoted"],
)
def test_retrieve_study_boundary_quoted_or_not_every_part_stored(
    scripted: Script,
    archive: Archive,
    study: RetrieveStudy,
    content_type: str,
) -> None:
    scripted.body = multipart(study.files)
    scripted.content_type = content_type

    outcome = retrieve_study(
        endpoint(scripted.url, "Bearer abc"),
        study.study_uid,
        archive,
    )

    assert (outcome.outcome, outcome.completed) == ("success", 7)
    assert cached_syntaxes(archive, study.study_uid) == study.syntaxes
    [request] = scripted.requests
    assert request["path"] == f"/wado/studies/{study.study_uid}"
    assert request["Accept"] == ACCEPT
    assert request["Authorization"] == "Bearer abc"


@pytest.mark.parametrize("declared", [False, True], ids=["eof", "short-read"])
def test_retrieve_study_body_cut_short_partial_keeps_complete_parts(
    scripted: Script, archive: Archive, study: RetrieveStudy, declared: bool
) -> None:
    whole = multipart(study.files)
    # Cut in the middle of the fourth part's content.
    fourth = whole.index(study.files[3].read_bytes())
    scripted.body = whole[: fourth + 500]
    scripted.declared_length = len(whole) if declared else None
    scripted.content_type = f"multipart/related; boundary={BOUNDARY}"

    outcome = retrieve_study(
        endpoint(scripted.url),
        study.study_uid,
        archive,
    )

    assert (outcome.outcome, outcome.completed) == ("partial", 3)
    kept = {uid for series in study.by_series.values() for uid in series}
    held = cached_syntaxes(archive, study.study_uid)
    assert len(held) == 3 and set(held) <= kept
    assert list(archive.incoming.iterdir()) == []


def test_retrieve_study_not_multipart_unable_to_process(
    scripted: Script, archive: Archive
) -> None:
    scripted.body = b"{}"
    scripted.content_type = "application/dicom+json"

    outcome = retrieve_study(
        endpoint(scripted.url),
        "2.25.1",
        archive,
    )

    assert (outcome.outcome, outcome.error_comment) == (
        "unable_to_process",
        "the answer is application/dicom+json, not multipart/related",
    )


def test_retrieve_study_server_error_503_unable_to_process(
    scripted: Script, archive: Archive
) -> None:
    scripted.status = 503
    scripted.content_type = "text/plain"

    outcome = retrieve_study(
        endpoint(scripted.url),
        "2.25.1",
        archive,
    )

    assert (outcome.outcome, outcome.http_status) == ("unable_to_process", 503)
    assert outcome.reason == "the site could not process the retrieve (HTTP 503)"


def test_retrieve_study_bandwidth_cap_reading_takes_size_over_rate(
    scripted: Script, archive: Archive, study: RetrieveStudy
) -> None:
    scripted.body = multipart(study.files)
    scripted.content_type = f"multipart/related; boundary={BOUNDARY}"
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    outcome = retrieve_study(
        endpoint(scripted.url),
        study.study_uid,
        archive,
        bandwidth_mbps=2.0,
        clock=lambda: now[0],
        sleep=sleep,
    )

    assert outcome.outcome == "success"
    # 2 Mbit/s is 250,000 bytes a second.
    assert now[0] == pytest.approx(len(scripted.body) / 250_000)


def test_retrieve_study_refused_and_foreign_parts_partial_with_counts(
    scripted: Script, archive: Archive, study: RetrieveStudy
) -> None:
    # One instance is already held for another study; one part is not DICOM.
    held = dcmread(study.files[0])
    held.StudyInstanceUID = "2.25.99"
    archive.store(study.files[0].read_bytes(), held, RLELossless, "OTHER")
    foreign = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom+json\r\n\r\n[]\r\n"
    ).encode()
    whole = multipart(study.files)
    scripted.body = whole.replace(b"preamble\r\n", b"preamble\r\n" + foreign)
    scripted.content_type = f"multipart/related; boundary={BOUNDARY}"

    outcome = retrieve_study(endpoint(scripted.url), study.study_uid, archive)

    assert (outcome.outcome, outcome.completed, outcome.failed) == ("partial", 6, 2)
    assert outcome.failed_uids == [str(held.SOPInstanceUID)]
    assert cached_syntaxes(archive, study.study_uid) == {
        uid: ts for uid, ts in study.syntaxes.items() if uid != held.SOPInstanceUID
    }
    assert list(archive.incoming.iterdir()) == []
