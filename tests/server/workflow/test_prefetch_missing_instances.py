"""A prefetch of a partly cached study asks a real Orthanc for what is missing only.

One Orthanc with the DICOMweb plugin holds a three-series study. The cache
is given part of it first (one instance of the first series, the whole
second series); the prefetch then runs against the site queried by C-FIND or
QIDO-RS and retrieved by C-MOVE, C-GET or WADO-RS. The study must end
``ready`` with exactly the site's instances, and what arrived during the
prefetch must be exactly the four missing instances, counted by what the
receiver reported (the Storage SCP's association summaries for C-MOVE, the
110104 audit records the worker writes for C-GET and WADO-RS).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from sqlalchemy import select

from ihe.dicomweb.rad107_wado_rs_retrieve import retrieve_urls
from ihe.dicomweb.rad129_qido_rs_query import (
    Endpoint,
    search_for_instances,
    search_for_series,
)
from server.config import Directory, Site
from server.models import Candidate, Patient, Prefetch, PrefetchState, Registration
from server.models.audit import AuditRecord
from server.runtime import Runtime
from server.workflow import prefetch, transports
from tests.ihe.dicom.dicom_support import cache_server
from tests.peers import LOCALHOST, OrthancPeer
from tests.retrieve_support import RetrieveStudy, cached_syntaxes, make_study

SITE_AE = "HOPITAL_P"
SITE_NAME = "hopital-p"
INSTANCES = re.compile(r'NumberOfInstances="(\d+)"')

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> RetrieveStudy:
    return make_study(tmp_path_factory.mktemp("prefetch-missing"), seed=7222)


@pytest.fixture(scope="module")
def orthanc(study: RetrieveStudy) -> Iterator[OrthancPeer]:
    with OrthancPeer(SITE_AE, dicomweb=True) as peer:
        assert peer.upload(study.files) == 7
        yield peer


def site(orthanc: OrthancPeer, query: str, retrieve: str) -> Site:
    return Site(
        name=SITE_NAME,
        ae_title=SITE_AE,
        host=LOCALHOST,
        port=orthanc.dicom_port,
        patient_id_domain="2.999.7.22",
        query=query,
        retrieve=retrieve,
        dicomweb_url=f"{orthanc.url}/dicom-web",
        timeout=10,
    )


def seed(rt: Runtime, study: RetrieveStudy) -> None:
    with rt.db.session() as session:
        session.add(Patient(id="p1", family_name="LEFÈVRE"))
        reg = Registration(
            id="r1",
            status="booked",
            patient_id="p1",
            meeting_start=datetime.now(UTC) + timedelta(hours=3),
            discovery="done",
        )
        cand = Candidate(
            site_name=SITE_NAME,
            study_uid=study.study_uid,
            patient_id_at_site="IPP-7001",
            modalities=["CT", "MR"],
            selected=True,
            selected_by="rule",
            num_instances=7,
        )
        cand.prefetch = Prefetch(
            id="f1",
            registration_id=reg.id,
            site_name=SITE_NAME,
            study_uid=study.study_uid,
            due_at=datetime.now(UTC),
            state=PrefetchState.QUEUED,
            expected_instances=7,
        )
        reg.candidates.append(cand)
        session.add(reg)


def received_by_audit(rt: Runtime) -> list[int]:
    """NumberOfInstances of each 110104 record, in order."""
    with rt.db.session() as session:
        xmls = session.scalars(
            select(AuditRecord.xml)
            .where(AuditRecord.event_id == "110104")
            .order_by(AuditRecord.id)
        ).all()
    return [sum(int(n) for n in INSTANCES.findall(xml)) for xml in xmls]


def test_search_for_series_orthanc_counts_each_series(
    orthanc: OrthancPeer, study: RetrieveStudy
) -> None:
    endpoint = Endpoint(f"{orthanc.url}/dicom-web", timeout=10)
    assert search_for_series(endpoint, study.study_uid) == {
        uid: len(study.by_series[uid]) for uid in study.series_uids
    }


def test_search_for_instances_orthanc_lists_the_series_exactly(
    orthanc: OrthancPeer, study: RetrieveStudy
) -> None:
    endpoint = Endpoint(f"{orthanc.url}/dicom-web", timeout=10)
    first = study.series_uids[0]
    found = search_for_instances(endpoint, study.study_uid, first)
    assert sorted(found) == sorted(study.by_series[first])


@pytest.mark.parametrize(
    ("query", "retrieve"),
    [("c-find", "c-move"), ("c-find", "c-get"), ("qido-rs", "wado-rs")],
)
def test_prefetch_partly_cached_study_fetches_exactly_the_missing_instances(
    rt: Runtime, orthanc: OrthancPeer, study: RetrieveStudy, query: str, retrieve: str
) -> None:
    first, second, _ = study.series_uids
    held_first = sorted(study.by_series[first])[0]
    the_site = site(orthanc, query, retrieve)
    settings = replace(rt.settings, directory=Directory(sites=(the_site,)))
    seed(rt, study)
    with cache_server(rt.archive, rt.settings.ae_title) as cache:
        orthanc.add_modality("spiders", rt.settings.ae_title, LOCALHOST, cache.port)
        # Part of the study in the cache already, fetched by C-GET.
        transports.retrieve(
            settings,
            rt.archive,
            site(orthanc, query, "c-get"),
            study.study_uid,
            [second],
            {first: [held_first]},
        )
        assert cached_syntaxes(rt.archive, study.study_uid) == {
            **study.only(second),
            held_first: study.syntaxes[held_first],
        }
        assert prefetch.claim(rt.db, "f1")
        state = prefetch.run(settings, rt.db, rt.archive, "f1")
        moved = (
            [cache.next_summary().studies[0].new for _ in range(2)]
            if retrieve == "c-move"
            else []
        )

    assert state == "ready"
    assert cached_syntaxes(rt.archive, study.study_uid) == study.syntaxes
    # Before: the 3 instances of the first C-GET; then only the missing 4.
    if retrieve == "c-move":
        assert received_by_audit(rt) == [3]
        # One association for series 3 (2), one for series 1's 2 instances.
        assert sorted(moved) == [2, 2]
    else:
        assert received_by_audit(rt) == [3, 4]
    with rt.db.session() as session:
        done = session.get(Prefetch, "f1")
        assert done is not None
        assert {s.series_uid: (s.expected, s.received) for s in done.series} == {
            uid: (len(study.by_series[uid]),) * 2 for uid in study.series_uids
        }
        assert (done.expected_instances, done.received_instances) == (7, 7)
        assert (done.attempts, done.reason) == (1, None)


class _Refusing(BaseHTTPRequestHandler):
    """A DICOMweb service that refuses every request with 401, counting them."""

    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


def test_wado_rs_instances_refused_first_request_only(rt: Runtime) -> None:
    _Refusing.paths = []
    server = ThreadingHTTPServer((LOCALHOST, 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://{LOCALHOST}:{server.server_address[1]}/dicom-web"
        refusing = replace(site_for_url(url), retrieve="wado-rs")
        outcome = transports.retrieve(
            rt.settings,
            rt.archive,
            refusing,
            "2.25.70",
            ["2.25.70.1"],
            {"2.25.70.2": ["2.25.70.2.1", "2.25.70.2.2"]},
        )
    finally:
        server.shutdown()
        server.server_close()

    assert (outcome.outcome, outcome.http_status) == ("not_authorised", 401)
    # The series first; the instance requests would be refused alike.
    assert _Refusing.paths == ["/dicom-web/studies/2.25.70/series/2.25.70.1"]


def test_wado_rs_retrieve_urls_one_per_series_and_per_instance() -> None:
    assert retrieve_urls(
        "http://pacs/dicom-web/",
        "2.25.70",
        ["2.25.70.1"],
        {"2.25.70.2": ["2.25.70.2.1", "2.25.70.2.2"]},
    ) == [
        "http://pacs/dicom-web/studies/2.25.70/series/2.25.70.1",
        "http://pacs/dicom-web/studies/2.25.70/series/2.25.70.2/instances/2.25.70.2.1",
        "http://pacs/dicom-web/studies/2.25.70/series/2.25.70.2/instances/2.25.70.2.2",
    ]
    assert retrieve_urls("http://pacs/dicom-web", "2.25.70") == [
        "http://pacs/dicom-web/studies/2.25.70"
    ]


def site_for_url(url: str) -> Site:
    return Site(
        name=SITE_NAME,
        ae_title=SITE_AE,
        host=LOCALHOST,
        port=1,
        patient_id_domain="2.999.7.22",
        dicomweb_url=url,
        timeout=5,
    )
