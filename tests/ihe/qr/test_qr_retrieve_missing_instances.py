"""Retrieving only what is missing: IMAGE-level lists of SOP Instance UIDs.

The identifiers are checked as built (levels, unique keys, lists cut at
:data:`MAX_UIDS_PER_REQUEST`); the outcome of several requests is checked as
combined. Then against a real Orthanc: the IMAGE-level C-FIND lists a series'
instances, and a C-MOVE or a C-GET naming some series whole and some
instances of another brings exactly those, on one association.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset

from ihe.dicom.archive import Archive
from ihe.qr.rad14_query_images import query_instances
from ihe.qr.rad16_retrieve_images import (
    MAX_UIDS_PER_REQUEST,
    RetrieveOutcome,
    combine,
    move_study,
    retrieve_identifiers,
    sent_in_turn,
)
from ihe.qr.rad16_retrieve_images_cget import get_study
from server.errors import AssociationFailed
from tests.ihe.dicom.dicom_support import cache_server
from tests.peers import LOCALHOST, OrthancPeer, free_port
from tests.retrieve_support import RetrieveStudy, cached_syntaxes, make_study

SITE_AE = "HOPITAL_M"
STUDY = "2.25.500"


def test_retrieve_identifiers_nothing_named_is_one_study_level_request() -> None:
    [ds] = retrieve_identifiers(STUDY)
    assert (ds.QueryRetrieveLevel, ds.StudyInstanceUID) == ("STUDY", STUDY)
    assert "SeriesInstanceUID" not in ds


def test_retrieve_identifiers_series_then_one_image_request_per_series() -> None:
    found = retrieve_identifiers(
        STUDY,
        ["2.25.500.1", "2.25.500.2"],
        {"2.25.500.3": ["2.25.500.3.1", "2.25.500.3.2"], "2.25.500.4": ["2.25.9"]},
    )
    assert [ds.QueryRetrieveLevel for ds in found] == ["SERIES", "IMAGE", "IMAGE"]
    assert list(found[0].SeriesInstanceUID) == ["2.25.500.1", "2.25.500.2"]
    assert found[1].StudyInstanceUID == STUDY
    assert found[1].SeriesInstanceUID == "2.25.500.3"
    assert list(found[1].SOPInstanceUID) == ["2.25.500.3.1", "2.25.500.3.2"]
    # One UID is a single value, not a list of one.
    assert found[2].SOPInstanceUID == "2.25.9"
    assert found[2].SeriesInstanceUID == "2.25.500.4"


def test_retrieve_identifiers_long_list_cut_into_requests_of_the_limit() -> None:
    uids = [f"2.25.600.{n}" for n in range(MAX_UIDS_PER_REQUEST * 2 + 1)]
    found = retrieve_identifiers(STUDY, instance_uids={"2.25.600": uids})
    assert [len(ds.SOPInstanceUID) for ds in found[:2]] == [500, 500]
    assert found[2].SOPInstanceUID == uids[-1]
    assert [u for ds in found[:2] for u in ds.SOPInstanceUID] == uids[:-1]


def test_combine_worst_outcome_counters_summed() -> None:
    combined = combine(
        [
            RetrieveOutcome("success", status=0, completed=5, failed=0, warning=0),
            RetrieveOutcome(
                "partial",
                status=0xB000,
                completed=3,
                failed=2,
                warning=None,
                failed_uids=["2.25.1", "2.25.2"],
            ),
            RetrieveOutcome("success", status=0, completed=1),
        ]
    )
    assert (combined.outcome, combined.status) == ("partial", 0xB000)
    assert (combined.completed, combined.failed, combined.warning) == (9, 2, 0)
    assert combined.failed_uids == ["2.25.1", "2.25.2"]


def test_combine_destination_unknown_outranks_everything() -> None:
    combined = combine(
        [
            RetrieveOutcome("unable_to_process", status=0xC000),
            RetrieveOutcome(
                "move_destination_unknown", status=0xA801, error_comment="X (A801)"
            ),
        ]
    )
    assert (combined.outcome, combined.status, combined.error_comment) == (
        "move_destination_unknown",
        0xA801,
        "X (A801)",
    )
    assert combined.completed is None


@pytest.mark.parametrize(
    ("first", "sent"),
    [
        ("association_aborted", 1),
        ("move_destination_unknown", 1),
        ("cancelled", 1),
        ("unable_to_process", 3),
        ("partial", 3),
    ],
)
def test_sent_in_turn_stops_only_when_the_next_requests_would_fare_the_same(
    first: str, sent: int
) -> None:
    identifiers = retrieve_identifiers(
        STUDY, ["2.25.500.1"], {"2.25.500.2": ["2.25.7"], "2.25.500.3": ["2.25.8"]}
    )
    asked: list[str] = []

    def send(ds: Dataset) -> RetrieveOutcome:
        asked.append(ds.QueryRetrieveLevel)
        return RetrieveOutcome(first if len(asked) == 1 else "success")

    outcomes = list(sent_in_turn(identifiers, send))

    assert asked == ["SERIES", "IMAGE", "IMAGE"][:sent]
    assert combine(outcomes).outcome == first


# Against Orthanc.


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> RetrieveStudy:
    return make_study(tmp_path_factory.mktemp("missing-study"), seed=7111)


@pytest.fixture(scope="module")
def site(study: RetrieveStudy) -> Iterator[OrthancPeer]:
    with OrthancPeer(SITE_AE) as orthanc:
        assert orthanc.upload(study.files) == 7
        yield orthanc


def _wanted(study: RetrieveStudy) -> tuple[str, dict[str, list[str]]]:
    """Series 3 whole, and the second and third instance of series 1."""
    first = study.series_uids[0]
    return study.series_uids[2], {first: sorted(study.by_series[first])[1:]}


@pytest.mark.peer
def test_query_instances_orthanc_lists_each_series_exactly(
    site: OrthancPeer, study: RetrieveStudy
) -> None:
    first, second, _ = study.series_uids
    found = query_instances(
        calling_ae="SPIDERS",
        ae_title=SITE_AE,
        host=LOCALHOST,
        port=site.dicom_port,
        study_uid=study.study_uid,
        series_uids=[first, second, "2.25.404"],
        timeout=10,
    )
    assert {uid: sorted(sops) for uid, sops in found.items()} == {
        first: sorted(study.by_series[first]),
        second: sorted(study.by_series[second]),
        "2.25.404": [],
    }


# pynetdicom 3.0.4 leaves the refused socket to the garbage collector.
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
def test_query_instances_nobody_listening_association_failed() -> None:
    with pytest.raises(AssociationFailed, match="no association with NOBODY"):
        query_instances(
            calling_ae="SPIDERS",
            ae_title="NOBODY",
            host=LOCALHOST,
            port=free_port(),
            study_uid=STUDY,
            series_uids=["2.25.500.1"],
            timeout=3,
        )
    gc.collect()


@pytest.mark.peer
def test_move_study_series_and_instance_lists_bring_exactly_those(
    site: OrthancPeer, archive: Archive, study: RetrieveStudy
) -> None:
    whole, instances = _wanted(study)
    with cache_server(archive, "SPIDERS") as cache:
        site.add_modality("spiders", "SPIDERS", LOCALHOST, cache.port)
        outcome = move_study(
            calling_ae="SPIDERS",
            ae_title=SITE_AE,
            host=LOCALHOST,
            port=site.dicom_port,
            study_uid=study.study_uid,
            destination="SPIDERS",
            timeout=10,
            series_uids=[whole],
            instance_uids=instances,
        )
        summaries = [cache.next_summary(), cache.next_summary()]

    assert (outcome.outcome, outcome.status) == ("success", 0)
    assert (outcome.completed, outcome.failed) == (4, 0)
    expected = study.only(whole)
    expected.update(
        {uid: study.syntaxes[uid] for uid in instances[study.series_uids[0]]}
    )
    assert cached_syntaxes(archive, study.study_uid) == expected
    # Orthanc opens one storage association per C-MOVE request.
    assert sorted(s.studies[0].new for s in summaries) == [2, 2]


@pytest.mark.peer
def test_get_study_instance_list_brings_exactly_those(
    site: OrthancPeer, archive: Archive, study: RetrieveStudy
) -> None:
    whole, instances = _wanted(study)
    outcome = get_study(
        calling_ae="SPIDERS",
        ae_title=SITE_AE,
        host=LOCALHOST,
        port=site.dicom_port,
        study_uid=study.study_uid,
        archive=archive,
        timeout=10,
        series_uids=[whole],
        instance_uids=instances,
    )

    assert (outcome.outcome, outcome.status, outcome.completed) == ("success", 0, 4)
    expected = study.only(whole)
    expected.update(
        {uid: study.syntaxes[uid] for uid in instances[study.series_uids[0]]}
    )
    assert cached_syntaxes(archive, study.study_uid) == expected
    assert [(s.new, s.replaced) for s in outcome.studies] == [(4, 0)]
