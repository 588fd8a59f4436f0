"""An incremental reader of ``multipart/related`` bodies (RFC 2046 5.1, RFC 2387).

WADO-RS answers a study as one ``multipart/related`` body whose parts are
DICOM files (PS3.18 8.7.3.4). A study can be gigabytes: the reader is fed the
body chunk by chunk as it arrives and hands each part's bytes to a sink as
soon as they are known not to belong to a delimiter, so that at most one
delimiter's length (plus one header block) is held in memory.

The grammar read: an optional preamble; ``CRLF--boundary`` delimiters (the
first may open the body without its CRLF) followed by optional transport
padding (spaces and tabs) and CRLF; each part's header lines up to an empty
line, then its content; the close delimiter ``--boundary--`` and an ignored
epilogue.

Limitations
-----------
Header lines folded over several lines are not unfolded. A header block over
:data:`MAX_HEADER_BYTES` is refused as malformed rather than read.
"""

from __future__ import annotations

import logging
from email.message import Message
from enum import Enum
from typing import Protocol

from server.errors import PeerError

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
CRLF = b"\r\n"


class PartSink(Protocol):
    """Where the parts of a multipart body go, one after the other."""

    def begin(self, headers: dict[str, str]) -> None:
        """A part starts; `headers` by lower-case name."""

    def write(self, data: bytes) -> None:
        """The next bytes of the current part's content."""

    def end(self) -> None:
        """The current part is complete."""

    def abandon(self) -> None:
        """The body ended in the middle of the current part."""


class _State(Enum):
    PREAMBLE = "preamble"
    DELIMITER = "delimiter"
    HEADERS = "headers"
    CONTENT = "content"
    EPILOGUE = "epilogue"


def media_type_params(content_type: str) -> tuple[str, dict[str, str]]:
    """The media type and its parameters, quoted or not (RFC 9110 8.3.1).

    >>> media_type_params('multipart/related; type="application/dicom"; boundary=x')
    ('multipart/related', {'type': 'application/dicom', 'boundary': 'x'})
    """
    msg = Message()
    msg["Content-Type"] = content_type
    params: dict[str, str] = {}
    for name, value in (msg.get_params(header="Content-Type") or [])[1:]:
        params[name.lower()] = str(value)
    return msg.get_content_type(), params


class MultipartReader:
    """Feed a ``multipart/related`` body in chunks of any size.

    Parameters
    ----------
    boundary : str
        The ``boundary`` parameter of the body's Content-Type, unquoted.
    sink : PartSink
        Told of each part's start, content and end.

    Raises
    ------
    server.errors.PeerError
        From :meth:`feed` when the body is not multipart with this boundary.
    """

    def __init__(self, boundary: str, sink: PartSink) -> None:
        if not boundary or len(boundary) > 70:
            raise PeerError("multipart boundary missing or longer than 70 characters")
        self.sink = sink
        self.parts = 0
        self._delimiter = CRLF + b"--" + boundary.encode("ascii", "replace")
        # The first delimiter may open the body: read it as if a CRLF came first.
        self._buffer = bytearray(CRLF)
        self._state = _State.PREAMBLE

    @property
    def complete(self) -> bool:
        """True once the close delimiter has been read."""
        return self._state is _State.EPILOGUE

    def feed(self, data: bytes) -> None:
        """Read the next bytes of the body."""
        if self._state is _State.EPILOGUE:
            return
        self._buffer += data
        while self._step():
            pass

    def close(self) -> bool:
        """The body has ended; True when it ended with its close delimiter.

        A part cut short is abandoned: its sink is told, nothing else is.
        """
        if self._state in (_State.CONTENT, _State.HEADERS, _State.DELIMITER):
            if self._state is _State.CONTENT:
                self.sink.abandon()
            logger.warning(
                "multipart body cut short", extra={"parts_complete": self.parts}
            )
        return self.complete

    def _step(self) -> bool:
        """Advance by one token if the buffer holds one; False to wait."""
        if self._state is _State.PREAMBLE:
            return self._skip_to_delimiter()
        if self._state is _State.DELIMITER:
            return self._after_delimiter()
        if self._state is _State.HEADERS:
            return self._headers()
        if self._state is _State.CONTENT:
            return self._content()
        self._buffer.clear()
        return False

    def _skip_to_delimiter(self) -> bool:
        at = self._buffer.find(self._delimiter)
        if at < 0:
            del self._buffer[: max(0, len(self._buffer) - len(self._delimiter) + 1)]
            return False
        del self._buffer[: at + len(self._delimiter)]
        self._state = _State.DELIMITER
        return True

    def _after_delimiter(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer.startswith(b"--"):
            self._state = _State.EPILOGUE
            self._buffer.clear()
            return False
        end = self._buffer.find(CRLF)
        if end < 0:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise PeerError("multipart delimiter line never ends")
            return False
        if self._buffer[:end].strip(b" \t"):
            raise PeerError("multipart delimiter followed by other characters")
        del self._buffer[: end + 2]
        self._state = _State.HEADERS
        return True

    def _headers(self) -> bool:
        if self._buffer.startswith(CRLF):
            block, size = b"", 2
        else:
            end = self._buffer.find(CRLF + CRLF)
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise PeerError("multipart part headers too long")
                return False
            block, size = bytes(self._buffer[:end]), end + 4
        del self._buffer[:size]
        self.sink.begin(_parse_headers(block))
        self._state = _State.CONTENT
        return True

    def _content(self) -> bool:
        at = self._buffer.find(self._delimiter)
        if at < 0:
            # Keep what could still be the start of a delimiter.
            keep = len(self._delimiter) - 1
            if len(self._buffer) > keep:
                cut = len(self._buffer) - keep
                self.sink.write(bytes(self._buffer[:cut]))
                del self._buffer[:cut]
            return False
        if at:
            self.sink.write(bytes(self._buffer[:at]))
        del self._buffer[: at + len(self._delimiter)]
        self.sink.end()
        self.parts += 1
        self._state = _State.DELIMITER
        return True


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(CRLF) if block else []:
        name, sep, value = line.partition(b":")
        if not sep:
            raise PeerError("multipart part header line without a colon")
        headers[name.decode("ascii", "replace").strip().lower()] = value.decode(
            "latin-1"
        ).strip()
    return headers
