"""MLLP framing: the start block, the end block, and a frame decoder for a stream.

The Minimal Lower Layer Protocol (HL7 v2.5 Appendix C, and IHE ITI TF-2
appendix C) wraps each message in a frame: the start block ``0x0B``, the
message bytes, then the end block ``0x1C 0x0D``. This module is the only place
those bytes are defined.

:class:`FrameDecoder` turns the bytes of one connection, as they arrive, into
whole frames: a frame split over many reads, several frames in one read, bytes
before a start block (skipped) and frames larger than any read all come out
the same. A frame longer than the configured limit is not kept: only its head
is, so that the receiver can still answer it.

Limitations
-----------
A start block inside an unfinished frame abandons that frame and starts a new
one (``0x0B`` is not valid HL7 text); nothing is answered for the abandoned
bytes. Bytes are never decoded here: the frame is handed on as bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

START_BLOCK = b"\x0b"  # VT
END_BLOCK = b"\x1c"  # FS
CARRIAGE_RETURN = b"\x0d"
END_OF_FRAME = END_BLOCK + CARRIAGE_RETURN
# What an oversized frame keeps: enough for any MSH segment.
OVERSIZED_HEAD = 4096
_WHITESPACE = b"\r\n \t"


def frame(payload: bytes) -> bytes:
    """Wrap `payload` in an MLLP frame."""
    return START_BLOCK + payload + END_OF_FRAME


@dataclass(frozen=True)
class Oversized:
    """A frame longer than the limit: its first bytes and its total size."""

    head: bytes
    size: int


class FrameDecoder:
    """Cut the byte stream of one connection into MLLP frames.

    Parameters
    ----------
    max_frame : int
        Largest payload kept, in bytes; longer frames come out as
        :class:`Oversized`.
    """

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self.discarded = 0  # non-blank bytes seen outside any frame
        self.abandoned = 0  # frames cut short by a new start block
        self._in_frame = False
        self._held_end_block = False
        self._buf = bytearray()
        self._size = 0

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame (0 between frames)."""
        return self._size + int(self._held_end_block) if self._in_frame else 0

    def feed(self, data: bytes) -> list[bytes | Oversized]:
        """Add the bytes of one read; return the frames they complete, in order."""
        frames: list[bytes | Oversized] = []
        pos = 0
        while pos < len(data):
            if not self._in_frame:
                pos = self._find_start(data, pos)
                continue
            # An end block at the very end of the previous read.
            if self._held_end_block:
                self._held_end_block = False
                if data[pos : pos + 1] == CARRIAGE_RETURN:
                    frames.append(self._complete())
                    pos += 1
                    continue
                self._append(END_BLOCK)
            end = data.find(END_OF_FRAME, pos)
            stop = end if end >= 0 else len(data)
            restart = data.find(START_BLOCK, pos, stop)
            if restart >= 0:
                self.abandoned += 1
                self._in_frame = False
                pos = restart
                continue
            if end < 0:
                if data.endswith(END_BLOCK):
                    self._held_end_block = True
                    stop -= 1
                self._append(data[pos:stop])
                break
            self._append(data[pos:end])
            frames.append(self._complete())
            pos = end + len(END_OF_FRAME)
        return frames

    def _find_start(self, data: bytes, pos: int) -> int:
        start = data.find(START_BLOCK, pos)
        skipped = data[pos : start if start >= 0 else len(data)]
        self.discarded += len(skipped.strip(_WHITESPACE))
        if start < 0:
            return len(data)
        self._in_frame = True
        self._buf = bytearray()
        self._size = 0
        return start + len(START_BLOCK)

    def _append(self, chunk: bytes) -> None:
        self._size += len(chunk)
        # Past the limit only the head is kept, for the answer.
        limit = self.max_frame if self._size <= self.max_frame else OVERSIZED_HEAD
        if len(self._buf) < limit:
            self._buf += chunk[: limit - len(self._buf)]
        elif len(self._buf) > limit:
            del self._buf[limit:]

    def _complete(self) -> bytes | Oversized:
        self._in_frame = False
        payload, size = bytes(self._buf), self._size
        self._buf = bytearray()
        self._size = 0
        if size > self.max_frame:
            return Oversized(payload[:OVERSIZED_HEAD], size)
        return payload
