"""The ER7 codec: an HL7 v2 message from bytes to segments and unescaped values.

The steps follow HL7 v2.5 chapter 2 (2.5 message construction rules, 2.7 use
of escape sequences), in the order that keeps each one safe:

1. :func:`read_header` reads the MSH segment from the bytes, before anything
   is decoded: the field separator, the encoding characters and MSH-18, the
   character set of the rest (MSH itself is ASCII).
2. :func:`decode` turns the bytes into text with the codec MSH-18 names (an
   empty MSH-18 takes the site default).
3. :func:`split_segments` normalises segment separators: a message holding at
   least one CR is split on CR only (CRLF counting as one CR, a lone LF being
   data); a message without any CR is split on LF. Empty segments are dropped.
4. Fields, repetitions, components and subcomponents are split, and only then
   is each value unescaped (:func:`unescape`), so that an escaped delimiter is
   never taken for a real one. Unknown or unterminated escape sequences are
   kept as written.

MSH-2 must declare four distinct encoding characters, or five from HL7 v2.7
on (the truncation character); anything else cannot be split safely and is
rejected (``AR``, ERR-3 102 at ``MSH^1^2``). A NUL character, written or
escaped as ``\\X00\\``, is refused in any field (``AE`` 102 at the field):
no text column can hold it.

:func:`escape` is the inverse for the values SPIDERS writes.

Limitations
-----------
Fields are split when first read and never validated against the message
structure of the standard: a segment in an unexpected place is not an error
here, only in the mapping that needs it. Formatting sequences other than
``\\.br\\`` (``\\H\\``, ``\\N\\``, ``\\.sp\\``...) and the character-set
switches ``\\C..\\`` and ``\\M..\\`` are kept as written.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import cached_property

from ihe.hl7v2.codes import CHARSETS, SUPPORTED_VERSIONS, ErrorCode
from server.errors import MessageError, MessageRejected

logger = logging.getLogger(__name__)

MSH = "MSH"
DEFAULT_FIELD_SEPARATOR = "|"
DEFAULT_ENCODING_CHARACTERS = "^~\\&"
SEGMENT_TERMINATOR = "\r"
LINE_BREAK = "\n"  # what \.br\ stands for
UTF8_BOM = b"\xef\xbb\xbf"

# A component holds subcomponents, a repetition components, a field repetitions.
Component = list[str]
Repetition = list[Component]
Field = list[Repetition]

_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_HEX = re.compile(r"^(?:[0-9A-Fa-f]{2})+$")
_VERSION_VARIANT = re.compile(r"^(\d+\.\d+(?:\.[1-9]\d*)?)(?:\.0)?$")
# The first version whose MSH-2 may hold a fifth (truncation) character.
TRUNCATION_VERSION = (2, 7)
NUL = "\x00"


@dataclass(frozen=True)
class Delimiters:
    """The field separator (MSH-1) and encoding characters (MSH-2) of a message.

    The truncation character is the fifth encoding character of v2.7; empty
    when the message declares only four.
    """

    field: str = DEFAULT_FIELD_SEPARATOR
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @classmethod
    def from_msh(cls, field_separator: str, encoding_characters: str) -> Delimiters:
        """The delimiters a message declares in MSH-1 and MSH-2.

        Raises
        ------
        MessageRejected
            MSH-2 holds fewer than four or more than five characters, or
            repeats a delimiter (ERR-3 102, at MSH-2).
        """
        chars = list(encoding_characters)
        if not 4 <= len(chars) <= 5 or len({field_separator, *chars}) != len(chars) + 1:
            raise MessageRejected(
                "MSH-2 must hold 4 (or, from v2.7, 5) distinct encoding characters",
                ErrorCode.DATA_TYPE_ERROR,
                (MSH, 1, 2),
            )
        chars += [""] * (5 - len(chars))
        return cls(field_separator, chars[0], chars[1], chars[2], chars[3], chars[4])

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as these delimiters write it."""
        return (
            self.component
            + self.repetition
            + self.escape
            + self.subcomponent
            + self.truncation
        )


DEFAULT_DELIMITERS = Delimiters()


class Segment:
    """One segment: its name and its fields, split on first use.

    Field ``n`` is ``MSH-n`` for the header too: MSH-1 is the field separator
    and MSH-2 the encoding characters, both returned as written.

    Parameters
    ----------
    text : str
        The segment as received (escaped), without its terminator.
    delimiters : Delimiters
        The message's delimiters.
    charset : str
        The Python codec of the message, for ``\\Xhh\\`` sequences.
    """

    def __init__(self, text: str, delimiters: Delimiters, charset: str) -> None:
        self.text = text
        self.delimiters = delimiters
        self.charset = charset
        parts = text.split(delimiters.field)
        self.name = parts[0]
        if self.name == MSH:
            parts = [MSH, delimiters.field, *parts[1:]]
        self._raw = parts
        self._fields: dict[int, Field] = {}

    def __repr__(self) -> str:
        return f"<Segment {self.name}>"

    @property
    def size(self) -> int:
        """The number of the last field present."""
        return len(self._raw) - 1

    def raw(self, n: int) -> str:
        """Field `n` as written (escaped), or ``""`` when absent."""
        return self._raw[n] if 0 < n < len(self._raw) else ""

    def field(self, n: int) -> Field:
        """Field `n` split into repetitions, components and unescaped subcomponents."""
        if n not in self._fields:
            raw = self.raw(n)
            if self.name == MSH and n in (1, 2):
                self._fields[n] = [[[raw]]]
            else:
                self._fields[n] = split_field(raw, self.delimiters, self.charset)
        return self._fields[n]

    def repetitions(self, n: int) -> list[Repetition]:
        """The non-empty repetitions of field `n`."""
        return [rep for rep in self.field(n) if any(any(c) for c in rep)]

    def value(self, n: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
        """One unescaped value, ``""`` when absent (positions count from 1)."""
        return pick(self.field(n), rep, comp, sub)


def pick(fld: Field, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
    """The value at (`rep`, `comp`, `sub`) of a split field, ``""`` when absent."""
    try:
        return fld[rep - 1][comp - 1][sub - 1]
    except IndexError:
        return ""


def component(repetition: Repetition, comp: int, sub: int = 1) -> str:
    """The value at (`comp`, `sub`) of one repetition, ``""`` when absent."""
    try:
        return repetition[comp - 1][sub - 1]
    except IndexError:
        return ""


@dataclass
class Message:
    """A decoded message: its segments in order.

    Attributes
    ----------
    segments : list of Segment
        Every non-empty segment, MSH first.
    delimiters : Delimiters
        The delimiters MSH-1 and MSH-2 declare.
    charset : str
        The Python codec the bytes were decoded with.
    """

    segments: list[Segment]
    delimiters: Delimiters
    charset: str
    _by_name: dict[str, list[Segment]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for seg in self.segments:
            self._by_name.setdefault(seg.name, []).append(seg)

    @property
    def msh(self) -> Segment:
        """The header segment."""
        return self.segments[0]

    @property
    def names(self) -> list[str]:
        """The segment names, in order."""
        return [seg.name for seg in self.segments]

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        """The `occurrence`-th segment called `name`, if any."""
        found = self._by_name.get(name, [])
        return found[occurrence - 1] if len(found) >= occurrence else None

    def all(self, name: str) -> list[Segment]:
        """Every segment called `name`, in order."""
        return list(self._by_name.get(name, []))

    def value(self, path: str) -> str:
        """A value by terse path: ``PID-5.2``, ``PID-3(2).4.2``, ``OBR-4``.

        ``(n)`` selects a repetition; the segment is the first of its name.
        """
        match = re.fullmatch(
            r"([A-Z][A-Z0-9]{2})-(\d+)(?:\((\d+)\))?((?:\.\d+){0,2})", path
        )
        if match is None:
            raise ValueError(f"not a terse path: {path!r}")
        name, n, rep, rest = match.groups()
        seg = self.segment(name)
        if seg is None:
            return ""
        positions = [int(p) for p in rest.split(".")[1:]] + [1, 1]
        return seg.value(int(n), int(rep or 1), positions[0], positions[1])

    @cached_property
    def version(self) -> str:
        """MSH-12 mapped to a supported version ID (:func:`version_id`)."""
        return version_id(self.msh.value(12))

    @property
    def message_type(self) -> str:
        """MSH-9.1, e.g. ``SIU``."""
        return self.msh.value(9, 1, 1).strip().upper()

    @property
    def event(self) -> str:
        """MSH-9.2, e.g. ``S12``."""
        return self.msh.value(9, 1, 2).strip().upper()

    @property
    def control_id(self) -> str:
        """MSH-10, the sender's message control ID."""
        return self.msh.value(10)


def read_header(raw: bytes) -> Segment:
    """Read the MSH segment from the message bytes, before decoding them.

    The header is read as ISO 8859-1, which maps every byte to a character, so
    that reading it never fails; its values are ASCII in every real message.

    Raises
    ------
    MessageRejected
        The bytes do not start with an MSH segment (ERR-3 100), or MSH-2 is
        not usable (102).
    """
    # Blank lines and a UTF-8 byte order mark some senders put first.
    start = len(raw) - len(raw.lstrip(b"\r\n \t").removeprefix(UTF8_BOM))
    ends = [i for i in (raw.find(b"\r", start), raw.find(b"\n", start)) if i >= 0]
    line = raw[start : min(ends) if ends else len(raw)].decode("latin-1")
    # "MSH", the field separator and the encoding characters at the least.
    if not line.startswith("MSH") or len(line) < 8:
        raise MessageRejected(
            "the message does not start with an MSH segment",
            ErrorCode.SEGMENT_SEQUENCE_ERROR,
            (MSH,),
        )
    return _header(line, "latin-1")


def charset_of(header: Segment) -> str:
    """The MSH-18 label (first repetition) a header declares, upper-cased."""
    return header.value(18).strip().upper()


def codec_for(label: str, default: str) -> str:
    """The Python codec for an MSH-18 label; `default` is the label for ``""``.

    Raises
    ------
    MessageError
        The label is not a character set SPIDERS decodes (ERR-3 103, MSH-18).
    """
    codec = CHARSETS.get(label or default.strip().upper())
    if codec is None:
        raise MessageError(
            f"character set {label!r} (MSH-18) is not supported",
            ErrorCode.TABLE_VALUE_NOT_FOUND,
            (MSH, 1, 18),
        )
    return codec


def decode(raw: bytes, codec: str) -> str:
    """The message text, decoded with `codec`.

    Raises
    ------
    MessageError
        The bytes are not valid in that character set (ERR-3 102, MSH-18).
    """
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        raise MessageError(
            f"the bytes are not valid {codec} as MSH-18 declares "
            f"(byte 0x{raw[exc.start]:02X} at offset {exc.start})",
            ErrorCode.DATA_TYPE_ERROR,
            (MSH, 1, 18),
        ) from exc


def parse_bytes(raw: bytes, default_charset: str) -> Message:
    """Read, decode and split one message (steps 1 to 4 above).

    Raises
    ------
    MessageError
        Anything that prevents reading the message; see the steps.
    """
    header = read_header(raw)
    codec = codec_for(charset_of(header), default_charset)
    return parse(decode(raw, codec), codec)


def parse(text: str, charset: str = "utf-8") -> Message:
    """Split decoded message text into segments.

    Parameters
    ----------
    text : str
        The message, any segment separators.
    charset : str
        The codec the text came from, for ``\\Xhh\\`` sequences.

    Raises
    ------
    MessageRejected
        No MSH first (ERR-3 100), or unusable MSH-2 (102).
    MessageError
        A segment whose name is not three capitals or digits (100), or a
        NUL character in a field (102).
    """
    lines = split_segments(text.lstrip().removeprefix("\ufeff"))
    if not lines or not lines[0].startswith(MSH) or len(lines[0]) < 8:
        raise MessageRejected(
            "the message does not start with an MSH segment",
            ErrorCode.SEGMENT_SEQUENCE_ERROR,
            (MSH,),
        )
    delimiters = _header(lines[0], charset).delimiters
    segments = [Segment(line, delimiters, charset) for line in lines]
    for index, seg in enumerate(segments, start=1):
        if not _SEGMENT_NAME.match(seg.name):
            raise MessageError(
                f"segment {index} has no valid segment name",
                ErrorCode.SEGMENT_SEQUENCE_ERROR,
                (),
            )
    _refuse_nul(segments)
    return Message(segments, delimiters, charset)


def split_segments(text: str) -> list[str]:
    """The segments of `text`, separators normalised (step 3 above)."""
    if "\r" in text:
        lines = text.replace("\r\n", "\r").split("\r")
        # A segment cannot start with a line feed: one there ends a blank line.
        lines = [line.lstrip("\n") for line in lines]
    else:
        lines = text.split("\n")
    return [line for line in lines if line.strip()]


def split_field(raw: str, delimiters: Delimiters, charset: str) -> Field:
    """Split one field's text, then unescape each subcomponent."""
    reps = raw.split(delimiters.repetition) if delimiters.repetition else [raw]
    sub = delimiters.subcomponent
    return [
        [
            [unescape(s, delimiters, charset) for s in (c.split(sub) if sub else [c])]
            for c in rep.split(delimiters.component)
        ]
        for rep in reps
    ]


def unescape(text: str, delimiters: Delimiters, charset: str) -> str:
    """Decode the escape sequences of one value (HL7 v2.5 section 2.7).

    ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` (and ``\\P\\`` when MSH-2 declares a
    truncation character) become the delimiters, ``\\Xhh..\\`` the bytes it
    names in the message's character set and ``\\.br\\`` a line break. Any
    other sequence, and an escape character without a closing one, is kept as
    written.
    """
    esc = delimiters.escape
    if not esc or esc not in text:
        return text
    out: list[str] = []
    pos = 0
    while True:
        start = text.find(esc, pos)
        if start < 0:
            out.append(text[pos:])
            break
        end = text.find(esc, start + 1)
        if end < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:start])
        decoded = _sequence(text[start + 1 : end], delimiters, charset)
        out.append(text[start : end + 1] if decoded is None else decoded)
        pos = end + 1
    return "".join(out)


def escape(text: str, delimiters: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Escape one value for writing: the inverse of :func:`unescape`.

    Delimiters become their sequences; CR and LF become ``\\X0D\\`` and
    ``\\X0A\\`` since they cannot appear inside a segment.
    """
    esc = delimiters.escape
    table = {
        delimiters.escape: f"{esc}E{esc}",
        delimiters.field: f"{esc}F{esc}",
        delimiters.component: f"{esc}S{esc}",
        delimiters.subcomponent: f"{esc}T{esc}",
        delimiters.repetition: f"{esc}R{esc}",
        "\r": f"{esc}X0D{esc}",
        "\n": f"{esc}X0A{esc}",
    }
    if delimiters.truncation:
        table[delimiters.truncation] = f"{esc}P{esc}"
    return text.translate({ord(k): v for k, v in table.items() if k})


def encode_field(fld: Field, delimiters: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Write a split field back as ER7 text with `delimiters`."""
    return delimiters.repetition.join(
        delimiters.component.join(
            delimiters.subcomponent.join(escape(s, delimiters) for s in comp)
            for comp in rep
        )
        for rep in fld
    )


def version_id(value: str) -> str:
    """Map MSH-12.1 to a supported version ID.

    Close variants are read as the version they name: ``2.3.0`` is ``2.3``
    and ``2.5.1.0`` is ``2.5.1``; the French ``2.5^FRA^2.11`` arrives here as
    its first component, ``2.5``.

    Raises
    ------
    MessageRejected
        The version is not one SPIDERS reads (ERR-3 203, MSH-12).
    """
    text = value.strip()
    match = _VERSION_VARIANT.match(text)
    version = match.group(1) if match else text
    if version not in SUPPORTED_VERSIONS:
        raise MessageRejected(
            f"version {text!r} (MSH-12) is not supported",
            ErrorCode.UNSUPPORTED_VERSION_ID,
            (MSH, 1, 12),
        )
    return version


def _header(line: str, charset: str) -> Segment:
    """The MSH segment of `line`, its delimiters checked against MSH-12.

    Raises
    ------
    MessageRejected
        Unusable MSH-2, or five encoding characters in a message of a
        version before 2.7 (ERR-3 102, at MSH-2).
    """
    separator = line[3]
    delimiters = Delimiters.from_msh(separator, line[4:].split(separator, 1)[0])
    header = Segment(line, delimiters, charset)
    if delimiters.truncation:
        match = _VERSION_VARIANT.match(header.value(12).strip())
        numbers = tuple(int(n) for n in match.group(1).split(".")) if match else ()
        if numbers and numbers < TRUNCATION_VERSION:
            raise MessageRejected(
                "MSH-2 holds a fifth (truncation) character, which only v2.7 "
                "and later define; send the four encoding characters ^~\\&",
                ErrorCode.DATA_TYPE_ERROR,
                (MSH, 1, 2),
            )
    return header


def _refuse_nul(segments: list[Segment]) -> None:
    """Refuse a NUL character, as written or escaped, in any field.

    Raises
    ------
    MessageError
        The first field holding one (ERR-3 102, at that field).
    """
    seen: dict[str, int] = {}
    for seg in segments:
        seen[seg.name] = seen.get(seg.name, 0) + 1
        escaped = seg.delimiters.escape and f"{seg.delimiters.escape}X" in seg.text
        if NUL not in seg.text and not escaped:
            continue
        for n in range(1, seg.size + 1):
            values = [s for rep in seg.field(n) for comp in rep for s in comp]
            if NUL in seg.raw(n) or any(NUL in value for value in values):
                raise MessageError(
                    "a field holds a NUL character, which no field may hold",
                    ErrorCode.DATA_TYPE_ERROR,
                    (seg.name, seen[seg.name], n),
                )


def _sequence(body: str, delimiters: Delimiters, charset: str) -> str | None:
    """The text an escape sequence's body stands for; None to keep it."""
    simple = {
        "F": delimiters.field,
        "S": delimiters.component,
        "T": delimiters.subcomponent,
        "R": delimiters.repetition,
        "E": delimiters.escape,
        "P": delimiters.truncation,
        ".br": LINE_BREAK,
    }
    if body in simple:
        return simple[body] or None
    if body[:1] == "X" and _HEX.match(body[1:]):
        try:
            return bytes.fromhex(body[1:]).decode(charset)
        except UnicodeDecodeError:
            return None
    return None
