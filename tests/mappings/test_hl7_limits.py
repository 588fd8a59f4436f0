"""HL7 v2 values the records cannot hold are refused with ERR-3 102, never cut."""

from __future__ import annotations

import pytest

from ihe.hl7v2 import ack, er7
from ihe.hl7v2.codes import AckCode, ApplicationErrorCode, ErrorCode
from mappings.hl7_types import parse_cx, parse_dtm, parse_ei
from server.errors import MessageError


@pytest.mark.parametrize("value", ["20250402143000+2500", "20250402143000-0060"])
def test_parse_dtm_impossible_utc_offset_raises_102_at_field(value: str) -> None:
    with pytest.raises(MessageError) as raised:
        parse_dtm(value, ("SCH", 1, 11, 1, 4))
    assert (raised.value.code, raised.value.location) == (
        ErrorCode.DATA_TYPE_ERROR,
        ("SCH", 1, 11, 1, 4),
    )


def test_parse_dtm_widest_real_offset_kept() -> None:
    parsed = parse_dtm("20250402143000+1400", ("TQ1", 1, 7))
    assert parsed is not None and parsed.utcoffset() is not None


@pytest.mark.parametrize(
    ("rep", "location"),
    [
        ([["9" * 129], [""], [""], ["CHU_X"]], ("PID", 1, 3, 1, 1)),
        (
            [["9" * 128], [""], [""], ["CHU_X", "1" * 129, "ISO"]],
            ("PID", 1, 3, 1, 4, 2),
        ),
        ([["9"], [""], [""], ["CHU_X"], ["T" * 17]], ("PID", 1, 3, 1, 5)),
    ],
)
def test_parse_cx_over_long_component_raises_102(
    rep: er7.Repetition, location: tuple[str | int, ...]
) -> None:
    with pytest.raises(MessageError) as raised:
        parse_cx(rep, ("PID", 1, 3, 1))
    assert (raised.value.code, raised.value.location) == (102, location)


def test_parse_ei_over_long_id_raises_102_at_ei1() -> None:
    with pytest.raises(MessageError) as raised:
        parse_ei([["R" * 129], ["RDV_APP"]], "CHU_X", ("SCH", 1, 2, 1))
    assert raised.value.location == ("SCH", 1, 2, 1, 1)


def test_ack_application_rule_error_writes_err5_with_table_0533() -> None:
    detail = ack.ErrorDetail(
        ErrorCode.APPLICATION_INTERNAL_ERROR,
        ("PID", 1, 7),
        "the birth date (PID-7) differs",
        application=ApplicationErrorCode.DEMOGRAPHICS_DIFFER,
    )
    payload = ack.build(None, AckCode.APPLICATION_ERROR, [detail])
    err = er7.parse_bytes(payload, "UNICODE UTF-8").segment("ERR")
    assert err is not None
    assert err.raw(2) == "PID^1^7"
    assert err.raw(3) == "207^Application internal error^HL70357"
    assert err.raw(5) == (
        "904^Patient demographics differ from the patient index^HL70533"
    )
