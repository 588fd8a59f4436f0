"""The ACK builder: header swap, MSA, ERR layouts, enhanced mode, exceptions."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from ihe.hl7v2 import ack, er7
from ihe.hl7v2.codes import AckCode, ErrorCode, Severity
from server.errors import (
    Conflict,
    IdentityError,
    MessageError,
    MessageRejected,
    UnknownReference,
)

NOW = datetime(2025, 3, 17, 9, 30, tzinfo=ZoneInfo("Europe/Paris"))


def header(version: str = "2.5^FRA^2.10", extra: str = "") -> er7.Segment:
    text = (
        f"MSH|^~\\&|RDV_APP|CHU_X|SPIDERS|RCP|20250317||SIU^S12^SIU_S12|M-1|P|"
        f"{version}{extra}"
    )
    return er7.parse(text + "\r").msh


def test_build_original_mode_swaps_sender_and_receiver_copies_version() -> None:
    text = ack.build(header(), AckCode.APPLICATION_ACCEPT, version="2.5", now=NOW)
    msg = er7.parse_bytes(text, "UNICODE UTF-8")
    assert msg.names == ["MSH", "MSA"]
    assert [msg.value(f"MSH-{n}") for n in (3, 4, 5, 6)] == [
        "SPIDERS",
        "RCP",
        "RDV_APP",
        "CHU_X",
    ]
    assert msg.value("MSH-7") == "20250317093000+0100"
    assert msg.msh.raw(9) == "ACK^S12^ACK"
    assert msg.value("MSH-11") == "P"
    assert msg.msh.raw(12) == "2.5^FRA^2.10"
    assert msg.value("MSH-10") not in ("", "M-1")
    assert msg.msh.raw(1) + msg.msh.raw(2) == "|^~\\&"
    assert (msg.value("MSA-1"), msg.value("MSA-2")) == ("AA", "M-1")
    assert text.endswith(b"\r") and b"\n" not in text


def test_build_error_writes_err_with_location_code_and_severity() -> None:
    error = ack.ErrorDetail(
        ErrorCode.DUPLICATE_KEY_IDENTIFIER, ("MRG", 1, 1), "MRG-1 matches PID-3"
    )
    text = ack.build(header(), AckCode.APPLICATION_ERROR, [error], version="2.5")
    msg = er7.parse_bytes(text, "UNICODE UTF-8")
    err = msg.segment("ERR")
    assert err is not None
    assert err.raw(2) == "MRG^1^1"
    assert err.raw(3) == "205^Duplicate key identifier^HL70357"
    assert err.value(4) == Severity.ERROR
    assert err.value(8) == "MRG-1 matches PID-3"
    assert err.raw(1) == ""
    assert msg.value("MSA-3") == "MRG-1 matches PID-3"


def test_build_error_for_v23_also_writes_eld_in_err1() -> None:
    error = ack.ErrorDetail(ErrorCode.UNKNOWN_KEY_IDENTIFIER, ("PID", 1, 3))
    text = ack.build(
        header("2.3"), AckCode.APPLICATION_ERROR, [error], version="2.3"
    ).decode()
    err = er7.parse(text).segment("ERR")
    assert err is not None
    assert err.raw(1) == "PID^1^3^204&Unknown key identifier&HL70357"
    assert err.raw(2) == "PID^1^3"


def test_build_unsupported_version_writes_25_instead_of_copying() -> None:
    text = ack.build(header("9.9"), AckCode.APPLICATION_REJECT).decode()
    assert er7.parse(text).msh.raw(12) == "2.5"


@pytest.mark.parametrize(
    ("code", "commit"),
    [
        (AckCode.APPLICATION_ACCEPT, "CA"),
        (AckCode.APPLICATION_ERROR, "CE"),
        (AckCode.APPLICATION_REJECT, "CR"),
    ],
)
def test_build_enhanced_mode_answers_commit_codes(code: AckCode, commit: str) -> None:
    msh = header(extra="|||AL|NE")
    assert ack.enhanced(msh)
    text = ack.build(msh, code, version="2.5").decode()
    assert er7.parse(text).value("MSA-1") == commit


@pytest.mark.parametrize(
    ("condition", "accepted", "error"),
    [
        ("AL", True, True),
        ("NE", False, False),
        ("ER", False, True),
        ("SU", True, False),
    ],
)
def test_wanted_enhanced_mode_follows_msh15(
    condition: str, accepted: bool, error: bool
) -> None:
    msh = header(extra=f"|||{condition}|AL")
    assert ack.wanted(msh, AckCode.APPLICATION_ACCEPT) is accepted
    assert ack.wanted(msh, AckCode.APPLICATION_ERROR) is error


def test_wanted_original_mode_always_answers() -> None:
    assert ack.wanted(header(), AckCode.APPLICATION_ERROR)
    assert not ack.enhanced(header())


def test_build_encodes_per_msh18_of_the_message() -> None:
    msh = er7.parse(
        "MSH|^~\\&|GAM|CHÂTEAU|SPIDERS|RCP|20250317||ADT^A08|1|P|2.5|||||FRA|8859/1\r"
    ).msh
    text = ack.build(msh, AckCode.APPLICATION_ACCEPT, version="2.5")
    assert b"CH\xc2TEAU" in text
    assert er7.parse_bytes(text, "UNICODE UTF-8").value("MSH-18") == "8859/1"


def test_build_without_header_still_answers_ar() -> None:
    error = ack.ErrorDetail(ErrorCode.SEGMENT_SEQUENCE_ERROR, ("MSH",))
    msg = er7.parse(ack.build(None, AckCode.APPLICATION_REJECT, [error]).decode())
    assert (msg.value("MSA-1"), msg.value("MSA-2")) == ("AR", "")
    assert msg.value("ERR-3") == "100"


@pytest.mark.parametrize(
    ("exc", "code", "error"),
    [
        (MessageError("x", 101, ("PID", 1, 3)), "AE", 101),
        (MessageRejected("x", 203, ("MSH", 1, 12)), "AR", 203),
        (UnknownReference("x"), "AE", 204),
        (IdentityError("x"), "AE", 205),
        (Conflict("x"), "AE", 205),
        (RuntimeError("boom"), "AE", 207),
    ],
)
def test_for_exception_maps_error_tree_to_ack(
    exc: Exception, code: str, error: int
) -> None:
    ack_code, detail = ack.for_exception(exc)
    assert (ack_code.value, int(detail.code)) == (code, error)
    assert "boom" not in detail.message


def test_build_accept_with_warning_writes_err_w_with_code_0() -> None:
    warning = ack.ErrorDetail(
        ErrorCode.MESSAGE_ACCEPTED,
        ("PID", 1, 32),
        "INS kept without linking",
        Severity.WARNING,
    )
    text = ack.build(
        header(), AckCode.APPLICATION_ACCEPT, [warning], version="2.5", now=NOW
    ).decode("ascii")
    assert text.split("\r")[1:] == [
        "MSA|AA|M-1|INS kept without linking",
        "ERR||PID^1^32|0^Message accepted^HL70357|W||||INS kept without linking",
        "",
    ]


def test_build_enhanced_accept_with_information_commit_ca_keeps_err_i() -> None:
    info = ack.ErrorDetail(
        ErrorCode.MESSAGE_ACCEPTED, ("PID", 1, 32), "kept", Severity.INFORMATION
    )
    msh = header(extra="|||AL|NE")
    text = ack.build(msh, AckCode.APPLICATION_ACCEPT, [info], version="2.5")
    msg = er7.parse_bytes(text, "UNICODE UTF-8")
    assert (msg.value("MSA-1"), msg.value("ERR-3"), msg.value("ERR-4")) == (
        "CA",
        "0",
        "I",
    )
    assert ack.wanted(msh, AckCode.APPLICATION_ACCEPT)
