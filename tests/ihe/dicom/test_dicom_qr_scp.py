"""Query/Retrieve SCP over an archive of generated studies.

pynetdicom is the client where exact DIMSE statuses are asserted; dcmtk's
``movescu`` and ``storescp`` are the foreign peers of a C-MOVE.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.events import Event

from ihe.dicom.sop_classes import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from server.demo.studies import (
    DemoPatient,
    GeneratedStudy,
    SeriesSpec,
    StudySpec,
    generate_study,
)
from tests.ihe.dicom.dicom_support import (
    CT_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    CacheServer,
    cache_server,
    open_archive,
)
from tests.peers import LOCALHOST, StoreSCP, require, run_dcmtk

CONSOLE_AE = "CONSOLE"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet


def _patient(patient_id: str, family: str, given: str) -> DemoPatient:
    return DemoPatient(
        patient_id, "CHU_NORD", "2.999.1.1", family, given, "19580314", "M"
    )


def _series(modality: str, images: int) -> SeriesSpec:
    return SeriesSpec(modality, f"{modality} series", images, rows=64, columns=64)


SPECS = {
    "leveque": StudySpec(
        _patient("NORD-000123", "LÉVÊQUE", "Noël"),
        "20240105",
        "TDM TAP et IRM",
        (_series("CT", 3), _series("MR", 3)),
    ),
    "dupont": StudySpec(
        _patient("NORD-000456", "DUPONT", "Marie"),
        "20231120",
        "TDM thorax",
        (_series("CT", 2),),
    ),
    "martin": StudySpec(
        _patient("NORD-000789", "MARTIN", "Jean"),
        "20240310",
        "Radio thorax",
        (_series("CR", 1),),
    ),
}


@dataclass
class Filled:
    """The listener and what its archive holds."""

    cache: CacheServer
    studies: dict[str, GeneratedStudy]

    def uid(self, name: str) -> str:
        return self.studies[name].study_uid


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filled]:
    root = tmp_path_factory.mktemp("qr")
    archive, db = open_archive(root)
    studies = {
        name: generate_study(spec, root / "generated", seed=seed)
        for seed, (name, spec) in enumerate(SPECS.items(), start=31)
    }
    for study in studies.values():
        for path in study.files:
            ds = dcmread(path)
            archive.store(
                path.read_bytes(), ds, str(ds.file_meta.TransferSyntaxUID), None
            )
    try:
        with cache_server(archive) as cache:
            yield Filled(cache, studies)
    finally:
        db.dispose()


def _client() -> AE:
    ae = AE(ae_title=CONSOLE_AE)
    for model in (FIND, MOVE, GET):
        ae.add_requested_context(model)

    return ae


def c_find(cache: CacheServer, **keys: object) -> tuple[list[Dataset], int]:
    """Send one C-FIND; return the pending identifiers and the final status."""
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    assoc = _client().associate(LOCALHOST, cache.port, ae_title=cache.ae_title)
    assert assoc.is_established
    matches: list[Dataset] = []
    final = -1
    try:
        for status, rsp in assoc.send_c_find(identifier, FIND):
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                assert rsp is not None
                matches.append(rsp)
            else:
                final = code
    finally:
        assoc.release()

    return matches, final


def study_uids(filled: Filled, **keys: object) -> set[str]:
    matches, final = c_find(
        filled.cache, QueryRetrieveLevel="STUDY", StudyInstanceUID="", **keys
    )
    assert final == 0x0000

    return {str(rsp.StudyInstanceUID) for rsp in matches}


def test_qr_scp_find_study_counts_and_modalities_exact(filled: Filled) -> None:
    matches, final = c_find(
        filled.cache,
        QueryRetrieveLevel="STUDY",
        StudyInstanceUID=filled.uid("leveque"),
        PatientName="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        ModalitiesInStudy="",
    )

    assert final == 0x0000
    [rsp] = matches
    assert rsp.QueryRetrieveLevel == "STUDY"
    assert rsp.StudyInstanceUID == filled.uid("leveque")
    assert rsp.PatientID == "NORD-000123"
    assert str(rsp.PatientName) == "LÉVÊQUE^Noël"
    assert rsp.NumberOfStudyRelatedSeries == 2
    assert rsp.NumberOfStudyRelatedInstances == 6
    assert list(rsp.ModalitiesInStudy) == ["CT", "MR"]
    assert rsp.RetrieveAETitle == "SPIDERS"


def test_qr_scp_find_series_level_related_instances(filled: Filled) -> None:
    study = filled.studies["leveque"]

    matches, final = c_find(
        filled.cache,
        QueryRetrieveLevel="SERIES",
        StudyInstanceUID=study.study_uid,
        SeriesInstanceUID="",
        Modality="",
        NumberOfSeriesRelatedInstances="",
    )

    assert final == 0x0000
    found = {
        str(rsp.SeriesInstanceUID): (rsp.Modality, rsp.NumberOfSeriesRelatedInstances)
        for rsp in matches
    }
    assert found == {
        study.series_uids[0]: ("CT", 3),
        study.series_uids[1]: ("MR", 3),
    }
    assert {rsp.QueryRetrieveLevel for rsp in matches} == {"SERIES"}


def test_qr_scp_find_image_level_instances_of_series(filled: Filled) -> None:
    study = filled.studies["leveque"]

    matches, final = c_find(
        filled.cache,
        QueryRetrieveLevel="IMAGE",
        StudyInstanceUID=study.study_uid,
        SeriesInstanceUID=study.series_uids[1],
        SOPInstanceUID="",
        SOPClassUID="",
        InstanceNumber="",
    )

    assert final == 0x0000
    assert sorted((rsp.InstanceNumber, rsp.SOPInstanceUID) for rsp in matches) == [
        (1, study.sop_instance_uids[3]),
        (2, study.sop_instance_uids[4]),
        (3, study.sop_instance_uids[5]),
    ]
    assert {rsp.SOPClassUID for rsp in matches} == {MR_IMAGE_STORAGE}


@pytest.mark.parametrize(
    "name", ["lev*", "LEV*", "lévêque^noël", "LEVEQUE^NOEL", "*^noel", "l?v?que*"]
)
def test_qr_scp_find_patient_name_accents_case_insensitive(
    filled: Filled, name: str
) -> None:
    assert study_uids(filled, PatientName=name) == {filled.uid("leveque")}


def test_qr_scp_find_patient_name_no_match_empty(filled: Filled) -> None:
    assert study_uids(filled, PatientName="lev") == set()


@pytest.mark.parametrize(
    ("dates", "names"),
    [
        ("20240101-", {"leveque", "martin"}),
        ("-20231231", {"dupont"}),
        ("20240101-20240131", {"leveque"}),
        ("20240310", {"martin"}),
    ],
)
def test_qr_scp_find_study_date_range_inclusive(
    filled: Filled, dates: str, names: set[str]
) -> None:
    assert study_uids(filled, StudyDate=dates) == {filled.uid(n) for n in names}


def test_qr_scp_find_uid_list_both_studies(filled: Filled) -> None:
    matches, final = c_find(
        filled.cache,
        QueryRetrieveLevel="STUDY",
        StudyInstanceUID=[filled.uid("leveque"), filled.uid("dupont")],
    )

    assert final == 0x0000
    assert {str(rsp.StudyInstanceUID) for rsp in matches} == {
        filled.uid("leveque"),
        filled.uid("dupont"),
    }


@pytest.mark.parametrize(
    ("modality", "names"),
    [("MR", {"leveque"}), ("CT", {"leveque", "dupont"}), ("CR", {"martin"})],
)
def test_qr_scp_find_modalities_in_study_filters(
    filled: Filled, modality: str, names: set[str]
) -> None:
    uids = study_uids(filled, ModalitiesInStudy=modality)

    assert uids == {filled.uid(n) for n in names}


def test_qr_scp_find_unknown_level_status_a900(filled: Filled) -> None:
    matches, final = c_find(
        filled.cache, QueryRetrieveLevel="FRAME", StudyInstanceUID=""
    )

    assert matches == []
    assert final == 0xA900


def test_qr_scp_move_unknown_destination_status_a801(filled: Filled) -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = filled.uid("dupont")
    assoc = _client().associate(
        LOCALHOST, filled.cache.port, ae_title=filled.cache.ae_title
    )
    assert assoc.is_established
    try:
        statuses = [
            int(status.Status)
            for status, _ in assoc.send_c_move(identifier, "NOWHERE", MOVE)
        ]
    finally:
        assoc.release()

    assert statuses == [0xA801]


@pytest.mark.peer
def test_qr_scp_movescu_known_destination_all_instances_arrive(
    filled: Filled,
) -> None:
    require("movescu", "dcmtk")
    study = filled.studies["leveque"]
    with StoreSCP(aet="STORESCP") as storescp:
        filled.cache.destinations["STORESCP"] = (LOCALHOST, storescp.port)
        try:
            proc = run_dcmtk(
                "movescu",
                "-S",
                "-aet",
                CONSOLE_AE,
                "-aec",
                filled.cache.ae_title,
                "-aem",
                "STORESCP",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={study.study_uid}",
                LOCALHOST,
                str(filled.cache.port),
                timeout=30,
            )
        finally:
            del filled.cache.destinations["STORESCP"]
        received = {dcmread(path).SOPInstanceUID for path in storescp.files()}

    assert proc.returncode == 0, proc.stderr
    assert received == set(study.sop_instance_uids)


def test_qr_scp_get_with_role_selection_all_instances_arrive(filled: Filled) -> None:
    study = filled.studies["leveque"]
    received: list[str] = []

    def handle_store(event: Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    ae = _client()
    for sop_class in (CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, CR_IMAGE_STORAGE):
        ae.add_requested_context(sop_class)
    roles: list[Any] = [
        build_role(sop_class, scp_role=True)
        for sop_class in (CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, CR_IMAGE_STORAGE)
    ]
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study.study_uid
    assoc = ae.associate(
        LOCALHOST,
        filled.cache.port,
        ae_title=filled.cache.ae_title,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, handle_store)],
    )
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_get(identifier, GET))
    finally:
        assoc.release()

    final = responses[-1][0]
    assert int(final.Status) == 0x0000
    assert final.NumberOfCompletedSuboperations == 6
    assert final.NumberOfFailedSuboperations == 0
    assert sorted(received) == sorted(study.sop_instance_uids)


def test_qr_scp_get_unknown_level_fails_instead_of_success(filled: Filled) -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "FRAME"
    identifier.StudyInstanceUID = filled.uid("dupont")
    assoc = _client().associate(
        LOCALHOST, filled.cache.port, ae_title=filled.cache.ae_title
    )
    assert assoc.is_established
    try:
        statuses = [
            int(status.Status) for status, _ in assoc.send_c_get(identifier, GET)
        ]
    finally:
        assoc.release()

    assert statuses == [0xA900]


def test_qr_scp_find_patient_name_bracket_is_literal(filled: Filled) -> None:
    matches, final = c_find(
        filled.cache,
        QueryRetrieveLevel="STUDY",
        PatientName="[LD]*",
        StudyInstanceUID="",
    )

    assert final == 0x0000
    assert matches == []
