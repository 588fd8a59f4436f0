"""MLLP frame decoding: frames as a connection delivers them, in any cut."""

from __future__ import annotations

from ihe.hl7v2.mllp import (
    CARRIAGE_RETURN,
    END_BLOCK,
    END_OF_FRAME,
    OVERSIZED_HEAD,
    START_BLOCK,
    FrameDecoder,
    Oversized,
    frame,
)

MESSAGE = b"MSH|^~\\&|A|B|C|D|20250101||ADT^A08|1|P|2.5\rPID|1||X^^^D^PI\r"


def test_frame_wraps_payload_in_start_and_end_blocks() -> None:
    assert frame(b"abc") == b"\x0babc\x1c\x0d"
    assert frame(b"abc") == START_BLOCK + b"abc" + END_OF_FRAME


def test_decoder_byte_by_byte_delivers_one_frame_at_the_end() -> None:
    decoder = FrameDecoder(1024)
    data = frame(MESSAGE)
    out = [item for i in range(len(data)) for item in decoder.feed(data[i : i + 1])]
    assert out == [MESSAGE]
    assert decoder.pending == 0


def test_decoder_several_frames_in_one_read_delivered_in_order() -> None:
    decoder = FrameDecoder(1024)
    data = frame(b"one") + frame(b"two") + frame(b"three")[:4]
    assert decoder.feed(data) == [b"one", b"two"]
    assert decoder.pending == 3
    assert decoder.feed(frame(b"three")[4:]) == [b"three"]


def test_decoder_bytes_before_start_block_discarded_and_counted() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(b"garbage\r\n" + frame(b"one") + b"\n") == [b"one"]
    assert decoder.discarded == len(b"garbage")


def test_decoder_end_block_split_from_carriage_return_completes_frame() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(START_BLOCK + b"one\x1c") == []
    assert decoder.pending == 4
    assert decoder.feed(b"\x0d") == [b"one"]


def test_decoder_end_block_without_cr_ends_frame_next_byte_outside() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(START_BLOCK + b"a\x1c") == []
    assert decoder.awaiting_end
    assert decoder.feed(b"b" + frame(b"c")) == [b"a", b"c"]
    assert (decoder.unterminated, decoder.discarded, decoder.pending) == (1, 1, 0)


def test_decoder_end_block_without_cr_in_one_read_then_next_frame() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(START_BLOCK + b"a\x1c" + frame(b"b")) == [b"a", b"b"]
    assert decoder.unterminated == 1


def test_decoder_flush_completes_frame_whose_cr_never_came() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(START_BLOCK + b"a" + END_BLOCK) == []
    assert decoder.flush() == [b"a"]
    assert (decoder.unterminated, decoder.pending, decoder.awaiting_end) == (
        1,
        0,
        False,
    )
    # The late 0x0D is blank outside any frame; nothing more comes out.
    assert decoder.feed(CARRIAGE_RETURN) == []
    assert decoder.flush() == []
    assert decoder.discarded == 0


def test_decoder_end_block_split_from_its_cr_is_a_proper_end() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(START_BLOCK + b"a" + END_BLOCK) == []
    assert decoder.feed(CARRIAGE_RETURN) == [b"a"]
    assert decoder.unterminated == 0


def test_decoder_start_block_inside_frame_abandons_partial_frame() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(START_BLOCK + b"partial" + frame(b"whole")) == [b"whole"]
    assert decoder.abandoned == 1


def test_decoder_frame_above_limit_delivered_as_oversized_head() -> None:
    decoder = FrameDecoder(OVERSIZED_HEAD * 2)
    payload = MESSAGE + b"NTE|" + b"x" * (OVERSIZED_HEAD * 3)
    data = frame(payload) + frame(b"next")
    out = [
        item
        for i in range(0, len(data), 1000)
        for item in decoder.feed(data[i : i + 1000])
    ]
    assert len(out) == 2
    big = out[0]
    assert isinstance(big, Oversized)
    assert big.size == len(payload)
    assert big.head == payload[:OVERSIZED_HEAD]
    assert out[1] == b"next"
