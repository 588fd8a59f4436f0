"""The retrieve dispatch: one Orthanc site reached by C-MOVE, C-GET and WADO-RS.

Each test names the site's ``retrieve`` and checks what the cache's archive
holds afterwards (exact SOP Instance UIDs and transfer syntaxes) and the
audit trail: C-GET and WADO-RS store in this process, which writes the DICOM
Instances Transferred message (110104) itself; for C-MOVE the cache's Storage
SCP receives, as in ``spiders serve``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from server.config import Site
from server.models import Prefetch, PrefetchState, utcnow
from server.models.audit import AuditRecord
from server.runtime import Runtime
from server.workflow import prefetch, transports
from tests.ihe.dicom.dicom_support import cache_server
from tests.peers import LOCALHOST, OrthancPeer
from tests.retrieve_support import RetrieveStudy, cached_syntaxes, make_study

SITE_AE = "HOPITAL_T"

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> RetrieveStudy:
    return make_study(tmp_path_factory.mktemp("transport-study"), seed=7003)


@pytest.fixture(scope="module")
def orthanc(study: RetrieveStudy) -> Iterator[OrthancPeer]:
    with OrthancPeer(SITE_AE, dicomweb=True) as peer:
        assert peer.upload(study.files) == 7
        yield peer


def site(orthanc: OrthancPeer, retrieve: str, url: str | None = "") -> Site:
    return Site(
        name="hopital-t",
        ae_title=SITE_AE,
        host=LOCALHOST,
        port=orthanc.dicom_port,
        patient_id_domain="2.999.7.3",
        retrieve=retrieve,
        dicomweb_url=f"{orthanc.url}/dicom-web" if url == "" else url,
        timeout=10,
    )


def transfers(rt: Runtime) -> list[AuditRecord]:
    with rt.db.session() as session:
        return list(
            session.scalars(
                select(AuditRecord)
                .where(AuditRecord.event_id == "110104")
                .order_by(AuditRecord.id)
            )
        )


def test_retrieve_c_move_series_level_only_named_series_arrive(
    rt: Runtime, orthanc: OrthancPeer, study: RetrieveStudy
) -> None:
    wanted = study.series_uids[1]
    with cache_server(rt.archive, rt.settings.ae_title) as cache:
        orthanc.add_modality("spiders", rt.settings.ae_title, LOCALHOST, cache.port)

        outcome = transports.retrieve(
            rt.settings, rt.archive, site(orthanc, "c-move"), study.study_uid, [wanted]
        )
        summary = cache.next_summary()

    assert (outcome.outcome, outcome.status, outcome.completed) == ("success", 0, 2)
    assert outcome.studies == []
    assert cached_syntaxes(rt.archive, study.study_uid) == study.only(wanted)
    assert summary.calling_ae == SITE_AE
    assert [s.new for s in summary.studies] == [2]


def test_retrieve_c_get_whole_study_stored_and_audited(
    rt: Runtime, orthanc: OrthancPeer, study: RetrieveStudy
) -> None:
    outcome = transports.retrieve(
        rt.settings, rt.archive, site(orthanc, "c-get"), study.study_uid
    )

    assert (outcome.outcome, outcome.completed) == ("success", 7)
    assert cached_syntaxes(rt.archive, study.study_uid) == study.syntaxes
    [record] = transfers(rt)
    assert (record.event_action, record.outcome) == ("C", 0)
    assert study.study_uid in record.xml
    assert f'UserID="{SITE_AE}"' in record.xml

    again = transports.retrieve(
        rt.settings, rt.archive, site(orthanc, "c-get"), study.study_uid
    )

    assert again.studies[0].replaced == 7
    assert [r.event_action for r in transfers(rt)] == ["C", "R"]


def test_retrieve_wado_rs_series_level_stored_and_audited(
    rt: Runtime, orthanc: OrthancPeer, study: RetrieveStudy
) -> None:
    first, _, mr = study.series_uids

    outcome = transports.retrieve(
        rt.settings,
        rt.archive,
        site(orthanc, "wado-rs"),
        study.study_uid,
        [first, mr],
    )

    assert (outcome.outcome, outcome.http_status, outcome.completed) == (
        "success",
        200,
        5,
    )
    assert cached_syntaxes(rt.archive, study.study_uid) == study.only(first, mr)
    [record] = transfers(rt)
    assert (record.event_action, record.outcome) == ("C", 0)
    assert study.study_uid in record.xml
    assert f'UserID="{SITE_AE}"' in record.xml


def test_retrieve_wado_rs_without_url_unable_to_process(
    rt: Runtime, orthanc: OrthancPeer
) -> None:
    outcome = transports.retrieve(
        rt.settings, rt.archive, site(orthanc, "wado-rs", url=None), "2.25.1"
    )

    assert (outcome.outcome, outcome.error_comment) == (
        "unable_to_process",
        "the site has no dicomweb url",
    )
    assert transfers(rt) == []


def test_retrieve_wado_rs_401_prefetch_fails_without_retry(
    rt: Runtime, orthanc: OrthancPeer, study: RetrieveStudy
) -> None:
    # A second site that requires credentials, sent none.
    with OrthancPeer("HOPITAL_AUTH", dicomweb=True, http_user=("a", "b")) as locked:
        outcome = transports.retrieve(
            rt.settings, rt.archive, site(locked, "wado-rs"), study.study_uid
        )
    row = Prefetch(
        id="p1",
        registration_id="r1",
        site_name="hopital-t",
        study_uid=study.study_uid,
        due_at=utcnow(),
        attempts=1,
        expected_instances=7,
        received_instances=0,
    )

    state = prefetch.conclude(row, outcome, 0)

    assert (outcome.outcome, outcome.http_status) == ("not_authorised", 401)
    assert state == PrefetchState.FAILED
    assert row.reason == (
        "0 of 7 instance(s) received; not authorised by the site: "
        "check the site's dicomweb auth_header (HTTP 401)"
    )
    assert row.dimse_status is None
    assert transfers(rt) == []
