"""RAD-14 beyond the plain Study Root query: Patient Root, hints, character sets.

The site is a pynetdicom C-FIND SCP written here that records every
identifier it receives. Field case C09 (``tests/data/dicom/C09-...py``): a
response identifier whose Specific Character Set is spelled as some devices
write it is still read right, with a warning naming the value received, and
the dataset carries the defined term afterwards.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from ihe.dicom.sop_classes import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)
from ihe.qr.rad14_query_images import (
    LOG_CHARSET_CORRECTED,
    PATIENT_ROOT_SOP_CLASS,
    query_studies,
)
from mappings.dicom_study import normalise_character_set
from tests.peers import LOCALHOST, free_port

SITE_AE = "PACS_SUD"
PATIENT_ID = "SUD-4242"
C09_FILE = (
    Path(__file__).parents[2] / "data" / "dicom" / "C09-charset-nonstandard-terms.py"
)

Replay = Callable[[Dataset], Iterator[tuple[int, Dataset | None]]]


def _c09() -> ModuleType:
    spec = importlib.util.spec_from_file_location("c09", C09_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


C09 = _c09()


@pytest.fixture
def site() -> Iterator[Callable[[Replay], tuple[int, list[Dataset]]]]:
    servers: list[ThreadedAssociationServer] = []

    def start(replay: Replay) -> tuple[int, list[Dataset]]:
        ae = AE(ae_title=SITE_AE)
        # Explicit VR Little Endian only: raw response bytes go out unchanged.
        for sop_class in (
            StudyRootQueryRetrieveInformationModelFind,
            PatientRootQueryRetrieveInformationModelFind,
        ):
            ae.add_supported_context(sop_class, [ExplicitVRLittleEndian])
        received: list[Dataset] = []

        def handle_find(event: Event) -> Iterator[tuple[int, Dataset | None]]:
            identifier = event.identifier
            classes.append(str(event.request.AffectedSOPClassUID))
            received.append(identifier)
            yield from replay(identifier)

        port = free_port()
        server = ae.start_server(
            (LOCALHOST, port), block=False, evt_handlers=[(evt.EVT_C_FIND, handle_find)]
        )
        assert server is not None
        servers.append(server)
        return port, received

    yield start
    for server in servers:
        server.shutdown()


# The SOP classes of the C-FINDs received, in order (one test at a time).
classes: list[str] = []


@pytest.fixture(autouse=True)
def _clear_classes() -> None:
    classes.clear()


def query(port: int, **kwargs: Any) -> Any:
    return query_studies(
        calling_ae="SPIDERS",
        ae_title=SITE_AE,
        host=LOCALHOST,
        port=port,
        patient_id=PATIENT_ID,
        timeout=10.0,
        **kwargs,
    )


def _study(uid: str, **values: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID = PATIENT_ID
    ds.StudyInstanceUID = uid
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_query_studies_patient_root_patient_then_study_level(
    site: Callable[[Replay], tuple[int, list[Dataset]]],
) -> None:
    def replay(identifier: Dataset) -> Iterator[tuple[int, Dataset | None]]:
        if identifier.QueryRetrieveLevel == "PATIENT":
            patient = Dataset()
            patient.PatientID = PATIENT_ID
            patient.PatientName = "DURAND^Léa"
            patient.PatientBirthDate = "19700101"
            patient.PatientSex = "F"
            yield 0xFF00, patient
        else:
            yield 0xFF00, _study("2.999.20.1", NumberOfStudyRelatedInstances="4")

    port, received = site(replay)

    result = query(port, query_model="patient")

    patient_level, study_level = received
    assert classes == [PATIENT_ROOT_SOP_CLASS, PATIENT_ROOT_SOP_CLASS]
    assert (patient_level.QueryRetrieveLevel, patient_level.PatientID) == (
        "PATIENT",
        PATIENT_ID,
    )
    assert "StudyInstanceUID" not in patient_level
    assert (study_level.QueryRetrieveLevel, study_level.PatientID) == (
        "STUDY",
        PATIENT_ID,
    )
    # Hierarchical search: no patient-level key but the unique one at STUDY.
    assert "PatientName" not in study_level
    [study] = result.studies
    assert (study.study_uid, study.patient_name, study.patient_birth_date) == (
        "2.999.20.1",
        "DURAND^Léa",
        "19700101",
    )
    assert study.num_instances == 4
    assert result.sop_class_uid == PATIENT_ROOT_SOP_CLASS
    assert len(result.queries) == 2


def test_query_studies_patient_root_unknown_patient_no_study_query(
    site: Callable[[Replay], tuple[int, list[Dataset]]],
) -> None:
    port, received = site(lambda identifier: iter(()))

    result = query(port, query_model="patient")

    assert [ds.QueryRetrieveLevel for ds in received] == ["PATIENT"]
    assert result.studies == ()


def test_query_studies_hints_sent_as_keys_beside_patient_id(
    site: Callable[[Replay], tuple[int, list[Dataset]]],
) -> None:
    def replay(identifier: Dataset) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xFF00, _study("2.999.20.1", AccessionNumber="ACC-1")

    port, received = site(replay)

    query(
        port,
        study_uids=["2.999.20.7", "2.999.20.8", "2.999.20.7"],
        accession_numbers=["ACC-9", "AC*", "ACC-9 "],
    )

    broad, by_uid, by_accession = received
    assert all(ds.PatientID == PATIENT_ID for ds in received)
    assert broad.StudyInstanceUID == "" and broad.AccessionNumber == ""
    assert list(by_uid.StudyInstanceUID) == ["2.999.20.7", "2.999.20.8"]
    assert by_accession.AccessionNumber == "ACC-9"
    assert by_accession.StudyInstanceUID == ""


# pydicom warns too while pynetdicom decodes the response (it guesses the
# same terms); only our correction is asserted here.
@pytest.mark.filterwarnings("ignore:Incorrect value for Specific Character Set")
@pytest.mark.parametrize("variant", C09.VARIANTS, ids=lambda v: v["label"])
def test_query_studies_c09_charset_spelling_read_with_warning(
    site: Callable[[Replay], tuple[int, list[Dataset]]],
    variant: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = C09.build(variant)

    def replay(identifier: Dataset) -> Iterator[tuple[int, Dataset | None]]:
        rsp = read_dataset(BytesIO(raw), False, True)
        del rsp[0x00100020]  # the case's PatientID, replaced by the queried one
        rsp.PatientID = PATIENT_ID
        yield 0xFF00, rsp

    port, _ = site(replay)
    caplog.set_level(logging.WARNING, logger="ihe.qr.rad14_query_images")

    result = query(port)

    [study] = result.studies
    assert study.patient_name == variant["expected_name"]
    corrected = [r for r in caplog.records if r.getMessage() == LOG_CHARSET_CORRECTED]
    if variant["charset"] == b"ISO 2022 IR 100":  # a defined term: kept as is
        assert corrected == []
    else:
        [record] = corrected
        assert record.received == variant["charset"].decode()


@pytest.mark.filterwarnings("ignore:Incorrect value for Specific Character Set")
@pytest.mark.parametrize("variant", C09.VARIANTS, ids=lambda v: v["label"])
def test_normalise_character_set_c09_written_value_is_a_defined_term(
    variant: dict[str, Any],
) -> None:
    ds = read_dataset(BytesIO(C09.build(variant)), False, True)

    normalise_character_set(ds)

    assert ds.SpecificCharacterSet in variant["expected_output_charset"]
    assert str(ds.PatientName) == variant["expected_name"]


@pytest.mark.filterwarnings("ignore:Unknown encoding")
@pytest.mark.parametrize(
    ("charset", "name_bytes", "expected"),
    [
        (b"UTF-8", "GRÉGOIRE^Zoé".encode(), "ISO_IR 192"),
        (b"LATIN1", "GRÉGOIRE^Zoé".encode("latin-1"), "ISO_IR 100"),
        (b"WINDOWS-FR", "GRÉGOIRE^Zoé".encode(), "ISO_IR 192"),
        (b"WINDOWS-FR", "GRÉGOIRE^Zoé".encode("latin-1"), "ISO_IR 100"),
    ],
)
def test_normalise_character_set_unknown_terms_decoded(
    charset: bytes, name_bytes: bytes, expected: str
) -> None:
    variant = {"charset": charset, "name": name_bytes}
    ds = read_dataset(BytesIO(C09.build(variant)), False, True)

    assert normalise_character_set(ds) == charset.decode()

    assert ds.SpecificCharacterSet == expected
    assert str(ds.PatientName) == "GRÉGOIRE^Zoé"
