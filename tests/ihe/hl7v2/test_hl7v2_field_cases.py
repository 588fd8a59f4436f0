"""Field cases C01-C08: HL7 v2 inputs that broke other software, over a real socket."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from ihe.hl7v2 import er7
from ihe.pix import patient_index
from mappings import hl7_order, hl7_pid
from mappings.fhir_patient import to_dicom_patient
from mappings.hl7_types import Cx
from mappings.identifiers import Identifier
from server.models import Hl7Message, Patient, Registration
from server.runtime import Runtime
from tests.ihe.hl7v2.hl7v2_support import DATA, Client, ack_of, adt, case, listening

PARIS = ZoneInfo("Europe/Paris")
UTF8 = "UNICODE UTF-8"
# The patient of C01a, as the index must know it for the SIU to be accepted.
MARTIN_LOUISE = {"name": "MARTIN^Louise^^^^^L", "birth_date": "19720415"}


def stored(rt: Runtime) -> list[Hl7Message]:
    with rt.db.session() as session:
        return list(session.scalars(select(Hl7Message).order_by(Hl7Message.id)))


def test_c01a_lf_separated_siu_parsed_and_acknowledged(rt: Runtime) -> None:
    raw = case("C01a-lf-separators-siu-s12.hl7")
    msg = er7.parse_bytes(raw, UTF8)
    assert msg.names == ["MSH", "SCH", "PID", "RGS", "AIS"]
    assert msg.value("MSH-12") == "2.5"
    assert msg.value("MSH-10") == "SIU-LF-0001"
    assert msg.value("SCH-11.4") == "20250402143000"
    with listening(rt) as port, Client(port) as client:
        fed = client.exchange(
            adt("A28-1", "40000123^^^CHU_BELLEVAL^PI", **MARTIN_LOUISE)
        )
        assert fed.value("MSA-1") == "AA"
        ack = client.exchange(raw)
    assert ack.value("MSA-1") == "AA"
    assert ack.value("MSA-2") == "SIU-LF-0001"


def test_c01b_crlf_and_blank_lines_dropped_and_acknowledged(rt: Runtime) -> None:
    raw = case("C01b-crlf-doubled-separators-adt-a08.hl7")
    msg = er7.parse_bytes(raw, UTF8)
    assert msg.names == ["MSH", "EVN", "PID", "PV1"]
    assert msg.value("PID-5.2") == "Léa"
    with listening(rt) as port, Client(port) as client:
        ack = client.exchange(raw)
    assert ack.value("MSA-1") == "AA"
    assert ack.value("MSA-2") == "ADT-CRLF-0002"


def test_c01c_lf_inside_cr_separated_message_kept_as_data() -> None:
    msg = er7.parse_bytes(case("C01c-lf-inside-nte-orm-o01.hl7"), UTF8)
    assert msg.names == ["MSH", "PID", "PV1", "ORC", "OBR", "NTE"]
    assert msg.value("NTE-3") == "Patient claustrophobe.\nPrévoir une prémédication."


def test_c02_frame_in_five_reads_acknowledged_once_after_end_block(
    rt: Runtime,
) -> None:
    data = json.loads((DATA / "C02-mllp-fragmented-frame.json").read_text())
    chunks = [bytes.fromhex(c) for c in data["chunks_hex"]]
    with listening(rt) as port, Client(port) as client:
        for chunk in chunks[:-1]:
            client.sock.sendall(chunk)
            assert client.silent(0.1)
        client.sock.sendall(chunks[-1])
        ack = ack_of(client.read())
        assert client.silent(0.2)
    assert ack.value("MSA-1") == "AA"
    assert ack.value("MSA-2") == "ORM-FRAG-0002"
    rows = stored(rt)
    assert len(rows) == 1
    assert rows[0].raw.decode("utf-8") == data["message_text"]
    msg = er7.parse_bytes(rows[0].raw, UTF8)
    assert msg.value("PID-5.1") == "GRÉGOIRE"
    assert msg.value("PID-5.2") == "Zoé"


def test_c02_frame_far_above_read_size_acknowledged_once(rt: Runtime) -> None:
    data = json.loads((DATA / "C02-mllp-fragmented-frame.json").read_text())
    head = data["message_text"].replace("ORM-FRAG-0002", "ORM-BIG-0002")
    notes = "".join(
        f"NTE|{n}||Ligne de commentaire numéro {n} — éèàç\r" for n in range(1, 3001)
    )
    payload = (head + notes).encode("utf-8")
    assert len(payload) > 150_000
    with listening(rt) as port, Client(port) as client:
        ack = client.exchange(payload)
        assert client.silent(0.2)
    assert ack.value("MSA-2") == "ORM-BIG-0002"
    (row,) = stored(rt)
    msg = er7.parse_bytes(row.raw, UTF8)
    assert len(msg.segments) == 3005
    assert msg.segments[-1].text == "NTE|3000||Ligne de commentaire numéro 3000 — éèàç"


def test_c03_two_frames_and_partial_in_one_read_answered_in_order(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ihe.hl7v2")
    raw = case("C03-mllp-two-frames-and-partial-one-read.mllp")
    assert len(raw) == 828
    with listening(rt) as port:
        with Client(port) as client:
            fed = client.exchange(
                adt(
                    "A28-3",
                    "40000126^^^CHU_BELLEVAL^PI",
                    name="ROUX^Anaïs^^^^^L",
                    birth_date="19930130",
                )
            )
            assert fed.value("MSA-1") == "AA"
        with Client(port) as client:
            client.sock.sendall(raw)
            acks = [ack_of(client.read()), ack_of(client.read())]
            assert client.silent(0.3)
            assert not [r for r in caplog.records if "partial" in r.getMessage()]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _dropped(caplog):
            time.sleep(0.02)
    assert [a.value("MSA-1") for a in acks] == ["AA", "AA"]
    assert [a.value("MSA-2") for a in acks] == ["SIU-0001", "SIU-0002"]
    assert len(_dropped(caplog)) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    with rt.db.session() as session:
        registration = session.scalar(
            select(Registration).where(Registration.identifier_value == "RDV1001")
        )
        assert registration is not None
        assert registration.meeting_start == datetime(2025, 4, 2, 15, 30, tzinfo=PARIS)


def _dropped(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("partial MLLP")]


def test_c04_latin1_bytes_decoded_by_msh18_and_acknowledged(rt: Runtime) -> None:
    raw = case("C04-adt-a02-msh18-8859-1-zbe.hl7")
    with pytest.raises(UnicodeDecodeError) as decoding:
        raw.decode("utf-8")
    assert decoding.value.start == 205
    msg = er7.parse_bytes(raw, UTF8)
    assert msg.value("PID-5.1") == "KERGUÉLEN"
    assert msg.value("PID-5.2") == "Maëlys-Gwénaëlle"
    assert msg.value("PID-5.5") == "MME"
    assert msg.value("PID-5.7") == "L"
    assert msg.value("PID-11.1") == "12 rue de l'Église"
    assert msg.value("PID-11.3") == "SAINT-AUBIN"
    assert msg.value("PV1-7.3") == "Étienne"
    assert msg.value("ZBE-1.1") == "MVT0007"
    assert msg.value("ZBE-4") == "INSERT"
    assert msg.value("ZBE-9") == "L"
    with listening(rt) as port, Client(port) as client:
        ack = client.exchange(raw)
    assert ack.value("MSA-1") == "AA"
    assert ack.value("MSA-2") == "ADTA02-0001"
    with rt.db.session() as session:
        patient = patient_index.find_patient(
            session, Identifier("CH_SAINT_AUBIN", "40000128")
        )
        assert patient is not None
        assert patient.family_name == "KERGUÉLEN"


def test_c04_latin1_bytes_declared_utf8_refused_with_ae_102(rt: Runtime) -> None:
    raw = case("C04-adt-a02-msh18-8859-1-zbe.hl7").replace(
        b"|8859/1|", b"|UNICODE UTF-8|"
    )
    with listening(rt) as port, Client(port) as client:
        ack = client.exchange(raw)
    assert ack.value("MSA-1") == "AE"
    assert ack.value("ERR-2") == "MSH"
    assert ack.value("ERR-2.3") == "18"
    assert ack.value("ERR-3.1") == "102"


def test_c05_escape_sequences_decoded_after_splitting() -> None:
    msg = er7.parse_bytes(case("C05-escape-sequences-orm-o01.hl7"), UTF8)
    obr = msg.segment("OBR")
    assert obr is not None
    assert len(obr.field(4)[0]) == 3
    assert msg.value("OBR-4.2") == "IRM genou G&D"
    assert msg.value("OBR-13") == "Porteur pace-maker|défibrillateur"
    assert msg.value("OBR-31.2") == "Douleur^gonflement genou"
    notes = [seg.value(3) for seg in msg.all("NTE")]
    assert notes == [
        "Chemin : \\\\srv-pacs\\partage$\\cr-genou.pdf",
        "Allergies : iode~latex",
        "Ligne 1\r\nLigne 2",
        "Code littéral : \\R\\",
        "Fin tronquée : \\R\\",
    ]
    raw_nte = [seg.raw(3) for seg in msg.all("NTE")]
    pairs = [
        (msg.value("OBR-4.2"), obr.raw(4).split("^")[1]),
        (msg.value("OBR-13"), obr.raw(13)),
        (msg.value("OBR-31.2"), obr.raw(31).split("^")[1]),
        (notes[0], raw_nte[0]),
        (notes[1], raw_nte[1]),
        (notes[3], raw_nte[3]),
    ]
    for value, original in pairs:
        assert er7.escape(value).encode("utf-8") == original.encode("utf-8")
    (order,) = hl7_order.read_orders(msg)
    assert hl7_order.to_dicom(order).RequestedProcedureDescription == "IRM genou G&D"


def test_c06_every_pid3_repetition_kept_and_primary_by_authority(
    rt: Runtime,
) -> None:
    raw = case("C06-pid3-repetitions-adt-a31.hl7")
    pid = hl7_pid.read_pid(er7.parse_bytes(raw, UTF8))
    assert pid.cxs == (
        Cx("40000127", "CH_SAINT_AUBIN", "2.999.1.1", "ISO", "PI"),
        Cx(
            "279089912300175", "ASIP-SANTE-INS-NIR", "1.2.250.1.213.1.4.8", "ISO", "INS"
        ),
        Cx("778899", "CH_VALMONT", "2.999.1.2", "ISO", "PI"),
    )
    ds = to_dicom_patient(pid.record, "CH_VALMONT")
    assert ds.PatientID == "778899"
    assert ds.IssuerOfPatientID == "CH_VALMONT"
    others = ds.OtherPatientIDsSequence
    assert len(others) == 2
    assert (others[0].PatientID, others[0].IssuerOfPatientID) == (
        "40000127",
        "CH_SAINT_AUBIN",
    )
    assert (others[1].PatientID, others[1].IssuerOfPatientID) == (
        "279089912300175",
        "ASIP-SANTE-INS-NIR",
    )
    qualifiers = others[1].IssuerOfPatientIDQualifiersSequence[0]
    assert qualifiers.UniversalEntityID == "1.2.250.1.213.1.4.8"
    assert qualifiers.UniversalEntityIDType == "ISO"
    assert to_dicom_patient(pid.record, None).PatientID == "40000127"
    assert len(pid.names) == 2
    first = pid.names[0]
    assert (first.family, first.given, first.type_code) == ("FAURE", "Hélène", "L")
    with listening(rt) as port, Client(port) as client:
        assert client.exchange(raw).value("MSA-1") == "AA"
    with rt.db.session() as session:
        patient = patient_index.find_patient(session, Identifier("2.999.1.2", "778899"))
        assert patient is not None
        # The two local IPPs travel together: linked. The INS has no identity
        # status (no PID-32): kept as sent, but it links nothing.
        assert [i.value for i in patient.identifiers] == ["40000127", "778899"]
        assert (patient.ins_system, patient.ins_value) == (
            "1.2.250.1.213.1.4.8",
            "279089912300175",
        )
        assert patient.ins_status is None


def test_c07a_self_merge_refused_with_err_mrg_205_patient_unchanged(
    rt: Runtime,
) -> None:
    raw = case("C07a-adt-a40-self-merge.hl7")
    pid = "40000130^^^CH_SAINT_AUBIN^PI"
    with listening(rt) as port, Client(port) as client:
        fed = client.exchange(adt("A28-7", pid, sender="GAM|CH_SAINT_AUBIN"))
        assert fed.value("MSA-1") == "AA"
        before = _patient_state(rt)
        ack = client.exchange(raw)
    assert ack.value("MSA-1") in {"AE", "AR"}
    assert ack.value("MSA-2") == "A40-0001"
    assert ack.value("ERR-2.1") == "MRG"
    assert ack.value("ERR-2.3") == "1"
    assert ack.value("ERR-3.1") == "205"
    after = _patient_state(rt)
    assert after == before
    assert after[3] is True


def _patient_state(rt: Runtime) -> tuple[object, ...]:
    with rt.db.session() as session:
        patient = patient_index.find_patient(
            session, Identifier("CH_SAINT_AUBIN", "40000130")
        )
        assert patient is not None
        return (
            patient.id,
            patient.version,
            patient.family_name,
            patient.active,
            [(i.system, i.value) for i in patient.identifiers],
        )


def test_c08a_version_230_read_as_23_and_acknowledged(rt: Runtime) -> None:
    raw = case("C08a-msh12-2.3.0-siu-s12.hl7")
    msg = er7.parse_bytes(raw, UTF8)
    assert msg.version == "2.3"
    assert msg.value("SCH-1.1") == "RDV2001"
    assert msg.value("AIS-4") == "20250410090000"
    with listening(rt) as port, Client(port) as client:
        fed = client.exchange(
            adt(
                "A28-8",
                "40000133^^^CHU_BELLEVAL^PI",
                name="BLANC^Manon^^^^^L",
                birth_date="19990511",
            )
        )
        assert fed.value("MSA-1") == "AA"
        ack = client.exchange(raw)
        unknown = client.exchange(
            raw.replace(b"|2.3.0\r", b"|9.9\r").replace(b"SIU-230-0008", b"SIU-99")
        )
    assert ack.value("MSA-1") == "AA"
    assert ack.value("MSA-2") == "SIU-230-0008"
    assert unknown.value("MSA-1") == "AR"
    assert unknown.value("ERR-3.1") == "203"


def test_c08b_five_encoding_characters_read_and_acknowledged(rt: Runtime) -> None:
    raw = case("C08b-msh2-five-encoding-chars-v27-orm.hl7")
    msg = er7.parse_bytes(raw, UTF8)
    assert msg.value("MSH-2") == "^~\\&#"
    assert msg.value("PID-5.2") == "Théo"
    assert msg.value("PID-3.4.2") == "2.999.1.3"
    with listening(rt) as port, Client(port) as client:
        ack = client.exchange(raw)
    assert ack.value("MSA-1") == "AA"
    assert ack.value("MSA-2") == "ORM-27-0008"


def test_c01_c08_every_case_file_answered_on_one_connection(rt: Runtime) -> None:
    files = sorted(DATA.glob("C0*.hl7"))
    with listening(rt) as port, Client(port) as client:
        for path in files:
            ack = client.exchange(path.read_bytes())
            assert ack.value("MSA-1") in {"AA", "AE", "AR"}
    with rt.db.session() as session:
        assert session.scalar(select(Patient.id).limit(1)) is not None
    assert len(stored(rt)) == len(files)
