"""RAD-16 over C-GET against a real Orthanc: study and series level.

Orthanc holds a generated study of three series, the first RLE Lossless; the
C-GET client receives the C-STORE sub-operations on its own association and
stores them in an archive, which must then hold exactly the study's SOP
Instance UIDs in the transfer syntaxes Orthanc holds them in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
)

from ihe.dicom.archive import Archive
from ihe.qr.rad16_retrieve_images import retrieve_identifier
from ihe.qr.rad16_retrieve_images_cget import (
    COMPRESSED_SYNTAXES,
    DEFAULT_SOP_CLASSES,
    MAX_CONTEXTS,
    NON_IMAGE_SOP_CLASSES,
    get_study,
    sop_classes_in_study,
    storage_contexts,
)
from tests.peers import LOCALHOST, OrthancPeer, free_port
from tests.retrieve_support import RetrieveStudy, cached_syntaxes, make_study

SITE_AE = "HOPITAL_R"

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> RetrieveStudy:
    return make_study(tmp_path_factory.mktemp("cget-study"))


@pytest.fixture(scope="module")
def site(study: RetrieveStudy) -> Iterator[OrthancPeer]:
    with OrthancPeer(SITE_AE) as orthanc:
        assert orthanc.upload(study.files) == 7
        yield orthanc


def get(site: OrthancPeer, archive: Archive, study_uid: str, **kwargs: Any) -> Any:
    return get_study(
        calling_ae="SPIDERS",
        ae_title=SITE_AE,
        host=LOCALHOST,
        port=site.dicom_port,
        study_uid=study_uid,
        archive=archive,
        timeout=10,
        **kwargs,
    )


def test_get_study_whole_study_exact_instances_and_syntaxes(
    site: OrthancPeer, archive: Archive, study: RetrieveStudy
) -> None:
    progress: list[tuple[int, int | None]] = []

    outcome = get(
        site, archive, study.study_uid, on_progress=lambda c, r: progress.append((c, r))
    )

    assert (outcome.outcome, outcome.status) == ("success", 0x0000)
    assert (outcome.completed, outcome.failed) == (7, 0)
    assert cached_syntaxes(archive, study.study_uid) == study.syntaxes
    [delivery] = outcome.studies
    assert (delivery.study_uid, delivery.new, delivery.replaced) == (
        study.study_uid,
        7,
        0,
    )
    assert dict(delivery.sop_classes) == {CTImageStorage: 5, MRImageStorage: 2}
    assert delivery.patient_id == "IPP-7001"
    assert progress and progress[-1][1] is not None


def test_get_study_series_level_only_named_series_arrive(
    site: OrthancPeer, archive: Archive, study: RetrieveStudy
) -> None:
    first, _, mr = study.series_uids

    outcome = get(site, archive, study.study_uid, series_uids=[first, mr])

    assert (outcome.outcome, outcome.completed) == ("success", 5)
    assert cached_syntaxes(archive, study.study_uid) == study.only(first, mr)
    assert set(study.by_series[first].values()) == {RLELossless}


def test_get_study_default_contexts_keep_rle_as_sent(
    site: OrthancPeer, archive: Archive, study: RetrieveStudy
) -> None:
    outcome = get(site, archive, study.study_uid, sop_classes=[])

    assert outcome.outcome == "success"
    assert cached_syntaxes(archive, study.study_uid) == study.syntaxes


def test_get_study_instance_refused_by_archive_partial_with_failed_uid(
    site: OrthancPeer, archive: Archive, study: RetrieveStudy
) -> None:
    # The cache already holds one SOP Instance UID for another study: the
    # archive refuses it, the site must count that sub-operation as failed.
    path = study.files[-1]
    ds = dcmread(path)
    ds.StudyInstanceUID = "2.25.99"
    archive.store(path.read_bytes(), ds, ExplicitVRLittleEndian, "OTHER")

    outcome = get(site, archive, study.study_uid)

    assert (outcome.outcome, outcome.status) == ("partial", 0xB000)
    assert (outcome.completed, outcome.failed) == (6, 1)
    # Orthanc 1.10 counts the failure but sends no Failed SOP Instance UID List.
    assert outcome.failed_uids == []
    held = cached_syntaxes(archive, study.study_uid)
    assert held == {
        uid: ts for uid, ts in study.syntaxes.items() if uid != ds.SOPInstanceUID
    }


def test_get_study_unknown_study_orthanc_c000_nothing_stored(
    site: OrthancPeer, archive: Archive
) -> None:
    outcome = get(site, archive, "2.25.1")

    assert (outcome.outcome, outcome.status) == ("unable_to_process", 0xC000)
    assert outcome.completed == 0
    assert outcome.reason == "the site could not process the retrieve (0xC000)"
    assert archive.instances() == []


# pynetdicom 3.0.4 leaves the refused socket to the garbage collector.
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
def test_get_study_closed_port_association_aborted(archive: Archive) -> None:
    outcome = get_study(
        calling_ae="SPIDERS",
        ae_title=SITE_AE,
        host=LOCALHOST,
        port=free_port(),
        study_uid="2.25.1",
        archive=archive,
        sop_classes=[CTImageStorage],
        timeout=2,
    )

    assert outcome.outcome == "association_aborted"
    assert outcome.studies == []


def test_sop_classes_in_study_orthanc_reports_ct_and_mr(
    site: OrthancPeer, study: RetrieveStudy
) -> None:
    found = sop_classes_in_study(
        calling_ae="SPIDERS",
        ae_title=SITE_AE,
        host=LOCALHOST,
        port=site.dicom_port,
        study_uid=study.study_uid,
    )

    assert sorted(found) == sorted([CTImageStorage, MRImageStorage])


def test_storage_contexts_default_set_fills_exactly_127() -> None:
    contexts = storage_contexts(DEFAULT_SOP_CLASSES)

    assert len(contexts) == MAX_CONTEXTS - 1
    assert contexts[0] == (
        CTImageStorage,
        (ExplicitVRLittleEndian, ImplicitVRLittleEndian),
    )
    assert (CTImageStorage, (RLELossless,)) in contexts
    compressed = {
        ts for _, syntaxes in contexts[len(DEFAULT_SOP_CLASSES) :] for ts in syntaxes
    }
    assert compressed == set(COMPRESSED_SYNTAXES)
    assert not [
        uid
        for uid, ts in contexts
        if uid in NON_IMAGE_SOP_CLASSES
        and ts != (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    ]


def test_storage_contexts_too_many_classes_uncompressed_only_capped() -> None:
    classes = [f"1.2.826.0.1.3680043.2.{n}" for n in range(200)]

    contexts = storage_contexts(classes)

    assert len(contexts) == MAX_CONTEXTS - 1
    assert [uid for uid, _ in contexts] == classes[: MAX_CONTEXTS - 1]


def test_storage_contexts_study_classes_every_compressed_syntax() -> None:
    contexts = storage_contexts([CTImageStorage, MRImageStorage])

    assert len(contexts) == 2 * (1 + len(COMPRESSED_SYNTAXES))


def test_retrieve_identifier_series_level_lists_series_uids() -> None:
    ds = retrieve_identifier("2.25.10", ["2.25.11", "2.25.12"])

    assert ds.QueryRetrieveLevel == "SERIES"
    assert ds.StudyInstanceUID == "2.25.10"
    assert list(ds.SeriesInstanceUID) == ["2.25.11", "2.25.12"]
    assert retrieve_identifier("2.25.10").QueryRetrieveLevel == "STUDY"
    assert "SeriesInstanceUID" not in retrieve_identifier("2.25.10")
