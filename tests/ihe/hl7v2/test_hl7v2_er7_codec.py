"""The ER7 codec: header from bytes, charsets, separators, escapes, versions."""

from __future__ import annotations

import pytest
from hl7apy.exceptions import InvalidName, UnsupportedVersion
from hl7apy.parser import parse_message

from ihe.hl7v2 import er7
from server.errors import MessageError, MessageRejected
from tests.ihe.hl7v2.hl7v2_support import case

UTF8 = "UNICODE UTF-8"
MSH = "MSH|^~\\&|APP|FAC|SPIDERS|SPIDERS|20250101||ADT^A08|1|P|2.5|||||FRA|{}"


def message(charset: str, *segments: str) -> str:
    return "\r".join([MSH.format(charset), *segments]) + "\r"


def test_read_header_reads_msh18_before_decoding() -> None:
    raw = case("C04-adt-a02-msh18-8859-1-zbe.hl7")
    header = er7.read_header(raw)
    assert er7.charset_of(header) == "8859/1"
    assert header.value(10) == "ADTA02-0001"


def test_read_header_without_msh_raises_segment_sequence_error() -> None:
    with pytest.raises(MessageError) as raised:
        er7.read_header(b"PID|1||X\r")
    assert raised.value.code == 100


@pytest.mark.parametrize(
    ("label", "text"),
    [("8859/15", "CŒUR"), ("8859/1", "Hélène"), (UTF8, "Noël ŒUF"), ("", "Zoé")],
)
def test_parse_bytes_decodes_with_msh18_codec(label: str, text: str) -> None:
    codec = {"8859/15": "iso8859_15", "8859/1": "latin-1"}.get(label, "utf-8")
    raw = message(label, f"PID|1||X^^^D^PI||{text}").encode(codec)
    assert er7.parse_bytes(raw, UTF8).value("PID-5") == text


def test_parse_bytes_unknown_charset_raises_table_value_not_found() -> None:
    with pytest.raises(MessageError) as raised:
        er7.parse_bytes(message("KLINGON", "PID|1").encode(), UTF8)
    assert (raised.value.code, raised.value.location) == (103, ("MSH", 1, 18))


def test_split_segments_blank_lines_and_crlf_dropped_lone_lf_kept() -> None:
    text = "MSH|x\r\n\r\nPID|a\nb\r\rPV1|1\r\n"
    assert er7.split_segments(text) == ["MSH|x", "PID|a\nb", "PV1|1"]
    assert er7.split_segments("MSH|x\nPID|1\n\nPV1\n") == ["MSH|x", "PID|1", "PV1"]


@pytest.mark.parametrize(
    ("escaped", "value"),
    [
        ("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f", "a|b^c&d~e\\f"),
        ("\\XC389\\", "É"),
        ("ligne\\.br\\suite", "ligne\nsuite"),
        ("\\H\\gras\\N\\", "\\H\\gras\\N\\"),
        ("C:\\dir\\fichier", "C:\\dir\\fichier"),
        ("fin \\", "fin \\"),
        ("\\X0\\", "\\X0\\"),
        ("\\XFF\\", "\\XFF\\"),
        ("\\P\\", "\\P\\"),
    ],
)
def test_unescape_known_decoded_unknown_kept(escaped: str, value: str) -> None:
    assert er7.unescape(escaped, er7.DEFAULT_DELIMITERS, "utf-8") == value


def test_unescape_latin1_hex_and_truncation_character_of_v27() -> None:
    v27 = er7.Delimiters.from_msh("|", "^~\\&#")
    assert er7.unescape("\\P\\\\XC9\\", v27, "latin-1") == "#É"


def test_escape_then_split_gives_back_every_value() -> None:
    value = "a|b^c&d~e\\f\r\ng"
    field = er7.split_field(er7.escape(value), er7.DEFAULT_DELIMITERS, "utf-8")
    assert field == [[[value]]]


def test_delimiters_repeated_encoding_character_raises_data_type_error() -> None:
    with pytest.raises(MessageError) as raised:
        er7.Delimiters.from_msh("|", "^^\\&")
    assert raised.value.location == ("MSH", 1, 2)


@pytest.mark.parametrize(
    ("written", "version"),
    [("2.3.0", "2.3"), ("2.5.1.0", "2.5.1"), ("2.5", "2.5"), ("2.7", "2.7")],
)
def test_version_id_close_variants_mapped(written: str, version: str) -> None:
    assert er7.version_id(written) == version


def test_version_id_french_form_read_from_first_component() -> None:
    msg = er7.parse(MSH.replace("|2.5|", "|2.5^FRA^2.11|").format(UTF8) + "\r")
    assert msg.version == "2.5"


@pytest.mark.parametrize("written", ["9.9", "2.2", "", "2.5.x"])
def test_version_id_unknown_rejected_with_203(written: str) -> None:
    with pytest.raises(MessageRejected) as raised:
        er7.version_id(written)
    assert (raised.value.code, raised.value.location) == (203, ("MSH", 1, 12))


def test_message_value_terse_paths_and_missing_values_empty() -> None:
    msg = er7.parse(message(UTF8, "PID|1||A^^^D&1.2&ISO^PI~B^^^E^PI||N^G"))
    assert msg.value("PID-3(2).1") == "B"
    assert msg.value("PID-3.4.2") == "1.2"
    assert msg.value("PID-5.2") == "G"
    assert msg.value("PID-30") == ""
    assert msg.value("ZZZ-1") == ""
    assert msg.msh.value(1) == "|"


def test_hl7apy_parses_only_after_normalisation() -> None:
    for name, names in [
        ("C01a-lf-separators-siu-s12.hl7", ["MSH", "SCH", "PID", "RGS", "AIS"]),
        ("C01b-crlf-doubled-separators-adt-a08.hl7", ["MSH", "EVN", "PID", "PV1"]),
    ]:
        raw = case(name).decode("utf-8")
        with pytest.raises((UnsupportedVersion, InvalidName)):
            parse_message(raw, find_groups=False)
        normalised = "\r".join(er7.split_segments(raw))
        parsed = parse_message(normalised, find_groups=False)
        assert [child.name for child in parsed.children] == names


def test_parse_bytes_leading_blank_lines_and_bom_skipped() -> None:
    raw = b"\r\n\xef\xbb\xbf" + message(UTF8, "PID|1||X^^^D^PI||Zoé").encode()
    msg = er7.parse_bytes(raw, UTF8)
    assert msg.names == ["MSH", "PID"]
    assert msg.value("PID-5") == "Zoé"
