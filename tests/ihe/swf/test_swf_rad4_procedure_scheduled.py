"""RAD-4 over MLLP: ORM^O01 and OMI^O23 orders become study hints."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from server.models import Hl7Message, Registration
from server.runtime import Runtime
from tests.ihe.hl7v2.hl7v2_support import Client, adt, listening, siu

PID3 = "40000150^^^CHU_BELLEVAL&2.999.1.9&ISO^PI"
STUDY = "1.2.250.1.999.4.5.2.1.101"


def omi(control_id: str, control: str = "NW", study: str = STUDY) -> bytes:
    segments = [
        "MSH|^~\\&|RIS|CHU_BELLEVAL|SPIDERS|SPIDERS|20250317||OMI^O23^OMI_O23|"
        f"{control_id}|P|2.5.1|||||FRA|UNICODE UTF-8",
        f"PID|1||{PID3}||DUPONT^Marie^^^^^L||19700101|F",
        f"ORC|{control}|CMD-1^DPI|ACN101^RIS",
        "TQ1|1||||||20250320100000",
        "OBR|1|CMD-1^DPI|ACN101^RIS|SCTHO^Scanner thoracique^L",
        f"IPC|ACN101^^1.2.250.1.999.27^ISO|RP1|{study}|SPS1|CT",
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def orm(control_id: str) -> bytes:
    segments = [
        "MSH|^~\\&|RIS|CHU_BELLEVAL|SPIDERS|SPIDERS|20250317||ORM^O01|"
        f"{control_id}|P|2.3.1",
        f"PID|1||{PID3}||DUPONT^Marie||19700101|F",
        "ORC|NW|CMD-2^DPI|CMD-2^RIS",
        "OBR|1|CMD-2^DPI|CMD-2^RIS|IRMCER^IRM cerebrale||||||||||||||ACN202|RP2",
        "ZDS|1.2.250.1.999.4.5.2.1.202^^RIS^DICOM",
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


@pytest.fixture
def port(rt: Runtime) -> Iterator[int]:
    with listening(rt) as listening_port, Client(listening_port) as client:
        assert client.exchange(adt("ADT-1", PID3)).value("MSA-1") == "AA"
        yield listening_port


def hints(rt: Runtime) -> dict[str, list[str]]:
    with rt.db.session() as session:
        reg = session.scalar(select(Registration))
        assert reg is not None
        return reg.hints


def test_rad4_omi_hints_attached_to_active_registration(rt: Runtime, port: int) -> None:
    with Client(port) as client:
        client.exchange(siu("S12-1", "S12", "RDV6001", PID3, "20250402143000"))
        ack = client.exchange(omi("OMI-1"))
    assert ack.value("MSA-1") == "AA"
    assert hints(rt) == {
        "studyInstanceUIDs": [STUDY],
        "accessionNumbers": ["ACN101"],
    }


def test_rad4_orm_zds_study_uid_and_obr18_accession_attached(
    rt: Runtime, port: int
) -> None:
    with Client(port) as client:
        client.exchange(siu("S12-2", "S12", "RDV6001", PID3, "20250402143000"))
        assert client.exchange(orm("ORM-1")).value("MSA-1") == "AA"
    assert hints(rt) == {
        "studyInstanceUIDs": ["1.2.250.1.999.4.5.2.1.202"],
        "accessionNumbers": ["ACN202"],
    }


def test_rad4_cancelled_order_withdraws_its_hints(rt: Runtime, port: int) -> None:
    with Client(port) as client:
        client.exchange(siu("S12-3", "S12", "RDV6001", PID3, "20250402143000"))
        client.exchange(omi("OMI-2"))
        assert client.exchange(omi("OMI-3", control="CA")).value("MSA-1") == "AA"
    assert hints(rt) == {"studyInstanceUIDs": [], "accessionNumbers": []}


def test_rad4_order_without_registration_acknowledged_and_kept(
    rt: Runtime, port: int
) -> None:
    with Client(port) as client:
        ack = client.exchange(omi("OMI-4"))
    assert ack.value("MSA-1") == "AA"
    with rt.db.session() as session:
        row = session.scalar(select(Hl7Message).where(Hl7Message.control_id == "OMI-4"))
        assert row is not None
        assert row.detail == "1 order(s); registrations updated: none"


def test_rad4_study_uid_not_a_uid_refused_ae_102_at_ipc3(port: int) -> None:
    with Client(port) as client:
        ack = client.exchange(omi("OMI-5", study="1.2.abc"))
    assert (ack.value("MSA-1"), ack.value("ERR-3")) == ("AE", "102")
    err = ack.segment("ERR")
    assert err is not None and err.raw(2) == "IPC^1^3"
