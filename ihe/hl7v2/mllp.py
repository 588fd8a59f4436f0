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

The end block is ``0x1C 0x0D`` (HL7 MLLP release 2). ``0x1C`` is not valid
HL7 text, so, as lenient MLLP servers do for senders that forget the final
``0x0D``, a ``0x1C`` ends the frame whatever follows it: followed by
``0x0D`` it is a proper end; followed by any other byte, the frame is
complete and that byte is outside any frame (a ``0x0B`` there starts the
next frame). A ``0x1C`` that is the last byte received so far waits for the
next byte; when none comes, the listener completes the frame after
:data:`END_GRACE` seconds (:meth:`FrameDecoder.flush`) rather than waiting for
the sender to time out. Frames that ended without ``0x0D`` are counted in
:attr:`FrameDecoder.unterminated`.

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
# Seconds to wait for the 0x0D after a 0x1C that ended a read.
END_GRACE = 0.5
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
        self.unterminated = 0  # frames whose end block had no 0x0D after it
        self._in_frame = False
        self._held_end_block = False
        self._buf = bytearray()
        self._size = 0

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame (0 between frames)."""
        return self._size + int(self._held_end_block) if self._in_frame else 0

    @property
    def awaiting_end(self) -> bool:
        """True when the last byte read was an end block, its 0x0D still due."""
        return self._in_frame and self._held_end_block

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
                frames.append(self._end(data, pos))
                pos += int(data[pos : pos + 1] == CARRIAGE_RETURN)
                continue
            end = data.find(END_BLOCK, pos)
            stop = end if end >= 0 else len(data)
            restart = data.find(START_BLOCK, pos, stop)
            if restart >= 0:
                self.abandoned += 1
                self._in_frame = False
                pos = restart
                continue
            self._append(data[pos:stop])
            if end < 0:
                break
            if end + 1 == len(data):
                self._held_end_block = True
                break
            frames.append(self._end(data, end + 1))
            pos = end + 1 + int(data[end + 1 : end + 2] == CARRIAGE_RETURN)
        return frames

    def flush(self) -> list[bytes | Oversized]:
        """Complete a frame whose end block came last and no 0x0D after it."""
        if not self.awaiting_end:
            return []
        self._held_end_block = False
        self.unterminated += 1
        return [self._complete()]

    def _end(self, data: bytes, after: int) -> bytes | Oversized:
        """Complete the frame whose end block precedes `data[after]`."""
        self._held_end_block = False
        if data[after : after + 1] != CARRIAGE_RETURN:
            self.unterminated += 1
        return self._complete()

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
