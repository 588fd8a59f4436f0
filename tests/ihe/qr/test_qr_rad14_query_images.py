"""RAD-14 Query Images against a fake site answering as PACS really do.

The site is a pynetdicom C-FIND SCP written here: padded values, no Query/
Retrieve Level in the responses, 0xFF01 pending statuses, ModalitiesInStudy as
one backslash-joined string, counts as text, a study of another patient and a
study sent twice.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import pytest
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from ihe.dicom.sop_classes import StudyRootQueryRetrieveInformationModelFind
from ihe.qr.rad14_query_images import RETURN_KEYS, query_studies
from mappings.dicom_study import StudyFound
from server.errors import AssociationFailed, DimseFailure
from tests.peers import LOCALHOST, free_port

SITE_AE = "PACS_NORD"
PATIENT_ID = "NORD-000123"
STUDY_A = "2.999.14.1"
STUDY_B = "2.999.14.2"
CLOSED_PORT_LIMIT_S = 2.0

Handler = Callable[[Event], Iterator[tuple[int, Dataset | None]]]


@dataclass
class FakeSite:
    """A C-FIND SCP on loopback that records the identifiers it received."""

    port: int
    server: ThreadedAssociationServer
    received: list[Dataset] = field(default_factory=list)


def _response(**values: str) -> Dataset:
    # Latin-1, as many PACS still answer; values padded with spaces by hand,
    # which pydicom's validation would otherwise refuse for some VRs (TM).
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    for keyword, value in values.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None
        vr = dictionary_VR(tag)
        ds.add(DataElement(tag, vr, value, validation_mode=config.IGNORE))

    return ds


def realistic_responses() -> Iterator[tuple[int, Dataset | None]]:
    """What a real PACS sent: one study twice, one of another patient."""
    study_a = _response(
        StudyInstanceUID=STUDY_A,
        PatientID=PATIENT_ID + " ",
        PatientName="LÉVÊQUE^Noël ",
        PatientBirthDate="19580314",
        PatientSex="M ",
        StudyDate="20240105",
        StudyTime="101500 ",
        AccessionNumber="ACC2024001  ",
        StudyDescription="TDM TAP ",
        ModalitiesInStudy="CT\\MR ",
        NumberOfStudyRelatedSeries="2 ",
        NumberOfStudyRelatedInstances="12",
        RetrieveAETitle=SITE_AE,
    )
    other_patient = _response(
        StudyInstanceUID="2.999.14.9",
        PatientID="NORD-000124",
        PatientName="LEVEQUE^Noe",
        ModalitiesInStudy="CR",
    )
    study_b = _response(
        StudyInstanceUID=STUDY_B,
        PatientID=PATIENT_ID,
        PatientName="LÉVÊQUE^Noël",
        StudyDate="20231120",
        ModalitiesInStudy="PT",
        NumberOfStudyRelatedSeries="1",
        NumberOfStudyRelatedInstances="",
    )
    yield 0xFF01, study_a
    yield 0xFF01, other_patient
    yield 0xFF00, study_b
    yield 0xFF01, study_a


@pytest.fixture
def site() -> Iterator[Callable[[Handler], FakeSite]]:
    servers: list[ThreadedAssociationServer] = []

    def start(replay: Handler) -> FakeSite:
        ae = AE(ae_title=SITE_AE)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        received: list[Dataset] = []

        def handle_find(event: Event) -> Iterator[tuple[int, Dataset | None]]:
            received.append(event.identifier)
            yield from replay(event)

        port = free_port()
        server = ae.start_server(
            (LOCALHOST, port),
            block=False,
            evt_handlers=[(evt.EVT_C_FIND, handle_find)],
        )
        assert server is not None
        servers.append(server)

        return FakeSite(port, server, received)

    yield start
    for server in servers:
        server.shutdown()


def query(port: int, patient_id: str = PATIENT_ID, timeout: float = 10.0) -> Any:
    return query_studies(
        calling_ae="SPIDERS",
        ae_title=SITE_AE,
        host=LOCALHOST,
        port=port,
        patient_id=patient_id,
        timeout=timeout,
    )


def test_query_studies_padded_responses_mapped_exactly(
    site: Callable[[Handler], FakeSite],
) -> None:
    fake = site(lambda event: realistic_responses())

    result = query(fake.port)

    assert result.studies == (
        StudyFound(
            study_uid=STUDY_A,
            patient_id=PATIENT_ID,
            patient_name="LÉVÊQUE^Noël",
            patient_birth_date="19580314",
            patient_sex="M",
            study_date="20240105",
            study_time="101500",
            accession_number="ACC2024001",
            modalities=("CT", "MR"),
            description="TDM TAP",
            num_series=2,
            num_instances=12,
        ),
        StudyFound(
            study_uid=STUDY_B,
            patient_id=PATIENT_ID,
            patient_name="LÉVÊQUE^Noël",
            patient_birth_date=None,
            patient_sex=None,
            study_date="20231120",
            study_time=None,
            accession_number=None,
            modalities=("PT",),
            description=None,
            num_series=1,
            num_instances=None,
        ),
    )


def test_query_studies_other_patient_ignored_and_counted(
    site: Callable[[Handler], FakeSite],
) -> None:
    fake = site(lambda event: realistic_responses())

    result = query(fake.port)

    assert result.ignored == 1
    assert "2.999.14.9" not in {study.study_uid for study in result.studies}


def test_query_studies_duplicated_study_deduplicated(
    site: Callable[[Handler], FakeSite],
) -> None:
    fake = site(lambda event: realistic_responses())

    result = query(fake.port)

    assert [study.study_uid for study in result.studies] == [STUDY_A, STUDY_B]


def test_query_studies_identifier_study_level_with_return_keys(
    site: Callable[[Handler], FakeSite],
) -> None:
    fake = site(lambda event: realistic_responses())

    result = query(fake.port)

    [sent] = fake.received
    assert sent.QueryRetrieveLevel == "STUDY"
    assert sent.PatientID == PATIENT_ID
    assert all(keyword in sent for keyword in RETURN_KEYS)
    # The audit copy is the same identifier, Implicit VR Little Endian.
    audited = read_dataset(BytesIO(result.query), True, True)
    assert audited.QueryRetrieveLevel == "STUDY"
    assert audited.PatientID == PATIENT_ID
    assert set(RETURN_KEYS) <= {element.keyword for element in audited}


def test_query_studies_no_match_empty_result(
    site: Callable[[Handler], FakeSite],
) -> None:
    fake = site(lambda event: iter(()))

    result = query(fake.port)

    assert (result.studies, result.ignored) == ((), 0)


def test_query_studies_site_status_c001_dimse_failure(
    site: Callable[[Handler], FakeSite],
) -> None:
    def unable_to_process(event: Event) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xC001, None

    fake = site(unable_to_process)

    with pytest.raises(DimseFailure) as failure:
        query(fake.port)

    assert failure.value.status == 0xC001
    assert "0xC001" in str(failure.value)


# pynetdicom 3.0.4 leaves the refused socket to the garbage collector (its
# shutdown() of the unconnected socket raises before close()).
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
def test_query_studies_closed_port_association_failed_quickly() -> None:
    port = free_port()
    started = time.monotonic()

    with pytest.raises(AssociationFailed):
        query(port, timeout=10.0)

    assert time.monotonic() - started < CLOSED_PORT_LIMIT_S
    gc.collect()
