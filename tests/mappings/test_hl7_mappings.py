"""HL7 v2 mappings: date-times in Europe/Paris (C20), PID, SIU and orders."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.patient import Patient as FhirPatient

from ihe.hl7v2 import er7
from mappings import hl7_order, hl7_pid, hl7_siu
from mappings.hl7_types import parse_date, parse_dtm, parse_ei
from mappings.identifiers import Identifier
from server.errors import MessageError
from tests.ihe.hl7v2.hl7v2_support import case, siu

WHERE = ("SCH", 1, 11, 1, 4)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("20250402143000", "2025-04-02T14:30:00+02:00"),
        ("20250330100000", "2025-03-30T10:00:00+02:00"),
        ("20251026023000+0100", "2025-10-26T02:30:00+01:00"),
        ("20251026023000+0200", "2025-10-26T02:30:00+02:00"),
        ("20250330013000", "2025-03-30T01:30:00+01:00"),
        ("20250402", "2025-04-02T00:00:00+02:00"),
        ("202504021430", "2025-04-02T14:30:00+02:00"),
        ("20250402143000.25-0500", "2025-04-02T14:30:00.250000-05:00"),
    ],
)
def test_parse_dtm_c20_local_time_in_paris_offset_kept(
    written: str, expected: str
) -> None:
    value = parse_dtm(written, WHERE)
    assert value is not None
    assert value.isoformat() == expected


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        ("20251026023000", "ambiguous"),
        ("20250330023000", "skipped"),
        ("2025", "not a date-time"),
        ("20250231", "not a valid"),
        ("2025-04-02", "not a date-time"),
    ],
)
def test_parse_dtm_c20_ambiguous_skipped_or_malformed_refused_102(
    written: str, reason: str
) -> None:
    with pytest.raises(MessageError) as raised:
        parse_dtm(written, WHERE)
    assert (raised.value.code, raised.value.location) == (102, WHERE)
    assert reason in str(raised.value)


def test_parse_date_partial_birth_date_unknown_full_date_read() -> None:
    assert parse_date("197001", ("PID", 1, 7)) is None
    assert parse_date("19700101120000", ("PID", 1, 7)) == date(1970, 1, 1)
    assert parse_date("", ("PID", 1, 7)) is None


def test_parse_ei_authority_from_universal_id_then_namespace_then_sender() -> None:
    field = er7.split_field("R1^APP^2.999.1^ISO", er7.DEFAULT_DELIMITERS, "utf-8")
    assert parse_ei(field[0]) == Identifier("2.999.1", "R1", namespace="APP")
    field = er7.split_field("R2", er7.DEFAULT_DELIMITERS, "utf-8")
    assert parse_ei(field[0], "FAC") == Identifier("FAC", "R2")


def test_read_pid_c06_record_identifiers_names_and_resource() -> None:
    msg = er7.parse_bytes(case("C06-pid3-repetitions-adt-a31.hl7"), "UNICODE UTF-8")
    pid = hl7_pid.read_pid(msg)
    record = pid.record
    assert [i.system for i in record.identifiers] == [
        "2.999.1.1",
        "1.2.250.1.213.1.4.8",
        "2.999.1.2",
    ]
    assert record.identifiers[1].type_code == "INS"
    assert (record.family, record.given, record.birth_family) == (
        "FAURE",
        ("Hélène",),
        "FAURE",
    )
    assert (record.birth_date, record.sex) == (date(1979, 8, 22), "F")
    assert (record.identity_status, record.identity_attributes) == (None, None)
    resource = hl7_pid.patient_resource(pid)
    FhirPatient.model_validate(resource)
    assert resource["identifier"][1]["system"] == "urn:oid:1.2.250.1.213.1.4.8"
    assert [n["use"] for n in resource["name"]] == ["official", "maiden"]


def test_read_siu_c01a_request_and_appointment_resource() -> None:
    msg = er7.parse_bytes(case("C01a-lf-separators-siu-s12.hl7"), "UNICODE UTF-8")
    pid = hl7_pid.read_pid(msg)
    appt = hl7_siu.read_siu(msg, pid.record.identifiers)
    request = appt.request
    assert request.status == "booked"
    assert request.start == datetime.fromisoformat("2025-04-02T14:30:00+02:00")
    assert request.end == datetime.fromisoformat("2025-04-02T15:00:00+02:00")
    assert request.identifier == Identifier(
        "INTEROP_GW", "RDV0778", namespace="INTEROP_GW"
    )
    assert [k.value for k in appt.keys] == ["RDV0778", "RDV0778"]
    assert request.location_reference == "Location?identifier=CHU_BELLEVAL|IRMGEN"
    assert request.location_display == "IRM genou"
    resource = hl7_siu.appointment_resource(appt, "p-1")
    Appointment.model_validate(resource)
    assert resource["start"] == "2025-04-02T14:30:00+02:00"
    assert resource["end"] == "2025-04-02T15:00:00+02:00"


def test_read_siu_without_board_refused_101_at_ail3() -> None:
    text = siu("X", "S12", "R1", "P1^^^F^PI", "20250402143000").decode()
    text = text.replace("AIS|1|A|RCP-ONCO^RCP oncologie^L", "AIS|1|A|").replace(
        "AIL|1|A|RCP-ONCO^^^CHU_BELLEVAL\r", ""
    )
    msg = er7.parse(text)
    with pytest.raises(MessageError) as raised:
        hl7_siu.read_siu(msg, (Identifier("F", "P1"),))
    assert (raised.value.code, raised.value.location) == (101, ("AIL", 1, 3))


def test_read_orders_c08b_order_to_dicom() -> None:
    msg = er7.parse_bytes(
        case("C08b-msh2-five-encoding-chars-v27-orm.hl7"), "UNICODE UTF-8"
    )
    (order,) = hl7_order.read_orders(msg)
    assert (order.control, order.placer_number) == ("NW", "CMD-0008")
    ds = hl7_order.to_dicom(order)
    assert ds.RequestedProcedureDescription == "Scanner abdominal"
    assert ds.PlacerOrderNumberImagingServiceRequest == "CMD-0008"
    assert "StudyInstanceUID" not in ds


@pytest.mark.parametrize(
    ("pid11", "pid23", "expected"),
    [
        ("1 rue X^^Rennes^^35000^FRA^H~^^Brest^^^FRA^BDL^^29019", "", "29019"),
        ("", "Quimper", "Quimper"),
        ("", "", None),
    ],
)
def test_read_pid_birth_place_bdl_insee_code_then_pid23(
    pid11: str, pid23: str, expected: str | None
) -> None:
    fields = ["PID", "1", "", "A1^^^CH_X&2.999.1.1&ISO^PI", "", "DOE^Jane", ""]
    fields += ["19700101", "F", "", "", pid11] + [""] * 11 + [pid23]
    raw = (
        "MSH|^~\\&|GAM|CH_X|SPIDERS|SPIDERS|20250317090000||ADT^A28^ADT_A05|C1|P|2.5\r"
        + "|".join(fields)
        + "\r"
    ).encode()
    pid = hl7_pid.read_pid(er7.parse_bytes(raw, "UNICODE UTF-8"))
    assert pid.record.birth_place == expected


@pytest.mark.parametrize(
    ("pid30", "message"),
    [
        (
            "VALI",
            "patient death indicator (PID-30) is not Y or N (HL7 table 0136): "
            "identity reliability codes belong in PID-32",
        ),
        ("YES", "patient death indicator (PID-30) is not Y or N (HL7 table 0136)"),
    ],
)
def test_read_pid_death_indicator_outside_table_0136_raises_103_at_pid30(
    pid30: str, message: str
) -> None:
    text = "MSH|^~\\&|GAM|CHU_X|SPIDERS|RCP|20250317||ADT^A28^ADT_A05|M-1|P|2.5\r"
    text += "PID|1||A1^^^CHU_X&2.999.1.1&ISO^PI||DUPONT^Marie||19700101|F"
    text += "|" * 22 + pid30 + "\r"
    with pytest.raises(MessageError) as raised:
        hl7_pid.read_pid(er7.parse(text))
    assert (raised.value.code, raised.value.location) == (103, ("PID", 1, 30))
    assert str(raised.value) == message


@pytest.mark.parametrize("pid30", ["Y", "N", "", '""'])
def test_read_pid_death_indicator_y_n_or_empty_read(pid30: str) -> None:
    text = "MSH|^~\\&|GAM|CHU_X|SPIDERS|RCP|20250317||ADT^A28^ADT_A05|M-1|P|2.5\r"
    text += "PID|1||A1^^^CHU_X&2.999.1.1&ISO^PI||DUPONT^Marie||19700101|F"
    text += "|" * 22 + pid30 + "||VALI\r"
    assert hl7_pid.read_pid(er7.parse(text)).record.identity_status == "VALI"
