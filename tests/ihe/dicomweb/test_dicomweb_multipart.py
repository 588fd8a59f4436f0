"""The incremental multipart/related reader (RFC 2046 5.1) on crafted bodies."""

from __future__ import annotations

import pytest

from ihe.dicomweb.multipart import MultipartReader, media_type_params
from server.errors import PeerError

BOUNDARY = "b0undary-7f3a"
PARTS = (
    b"\x00" * 128 + b"DICM first part with \r\n and --b0undar in it",
    b"second\r\n--b0undary-7f3 not a delimiter",
    b"",
)


class Collector:
    """A sink that keeps each part's headers and content in memory."""

    def __init__(self) -> None:
        self.parts: list[tuple[dict[str, str], bytes]] = []
        self.abandoned: list[bytes] = []
        self._headers: dict[str, str] | None = None
        self._data = bytearray()

    def begin(self, headers: dict[str, str]) -> None:
        assert self._headers is None
        self._headers, self._data = headers, bytearray()

    def write(self, data: bytes) -> None:
        assert self._headers is not None
        self._data += data

    def end(self) -> None:
        assert self._headers is not None
        self.parts.append((self._headers, bytes(self._data)))
        self._headers = None

    def abandon(self) -> None:
        self.abandoned.append(bytes(self._data))
        self._headers = None


def body(
    parts: tuple[bytes, ...] = PARTS,
    *,
    preamble: bytes = b"",
    epilogue: bytes = b"",
    padding: bytes = b"",
) -> bytes:
    out = bytearray(preamble)
    for index, content in enumerate(parts):
        out += b"\r\n" if out else b""
        out += f"--{BOUNDARY}".encode() + padding + b"\r\n"
        out += b"Content-Type: application/dicom\r\n"
        out += f"Content-Length: {len(content)}\r\nX-Index: {index}\r\n\r\n".encode()
        out += content
    out += f"\r\n--{BOUNDARY}--".encode() + epilogue
    return bytes(out)


def read(data: bytes, chunks: list[int] | None = None) -> tuple[Collector, bool]:
    sink = Collector()
    reader = MultipartReader(BOUNDARY, sink)
    if chunks is None:
        reader.feed(data)
    else:
        start = 0
        for cut in [*chunks, len(data)]:
            reader.feed(data[start:cut])
            start = cut
    return sink, reader.close()


def contents(sink: Collector) -> tuple[bytes, ...]:
    return tuple(content for _, content in sink.parts)


def test_media_type_params_quoted_and_unquoted_boundary_same_value() -> None:
    quoted = media_type_params(
        f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
    )
    bare = media_type_params(
        f"Multipart/Related;boundary={BOUNDARY};type=application/dicom"
    )

    assert (
        quoted
        == bare
        == (
            "multipart/related",
            {"type": "application/dicom", "boundary": BOUNDARY},
        )
    )


def test_reader_whole_body_in_one_chunk_every_part_exact() -> None:
    sink, complete = read(body())

    assert complete
    assert contents(sink) == PARTS
    assert [h["x-index"] for h, _ in sink.parts] == ["0", "1", "2"]
    assert sink.parts[0][0]["content-type"] == "application/dicom"


def test_reader_split_at_every_offset_same_parts() -> None:
    data = body(preamble=b"preamble text\r\n", epilogue=b"\r\nepilogue")
    for cut in range(1, len(data)):
        sink, complete = read(data, [cut])

        assert complete, cut
        assert contents(sink) == PARTS, cut


def test_reader_one_byte_at_a_time_same_parts() -> None:
    data = body()

    sink, complete = read(data, list(range(1, len(data))))

    assert complete
    assert contents(sink) == PARTS


def test_reader_preamble_padding_and_epilogue_ignored() -> None:
    data = body(
        preamble=b"This is a message with multiple parts in MIME format.",
        padding=b" \t ",
        epilogue=b"\r\n--" + BOUNDARY.encode() + b"\r\nnot a part\r\n",
    )

    sink, complete = read(data)

    assert complete
    assert contents(sink) == PARTS


def test_reader_part_without_headers_has_empty_headers() -> None:
    data = f"--{BOUNDARY}\r\n\r\nraw\r\n--{BOUNDARY}--\r\n".encode()

    sink, complete = read(data)

    assert complete
    assert sink.parts == [({}, b"raw")]


@pytest.mark.parametrize("cut_back", [1, 5, 20, len(PARTS[1]) - 1])
def test_reader_stream_cut_short_keeps_complete_parts_abandons_last(
    cut_back: int,
) -> None:
    data = body()
    # Cut inside the last non-empty part's content (the second one).
    second = data.index(PARTS[1])
    truncated = data[: second + len(PARTS[1]) - cut_back]

    sink, complete = read(truncated)

    assert not complete
    assert contents(sink) == PARTS[:1]
    assert len(sink.abandoned) == 1
    assert PARTS[1].startswith(sink.abandoned[0])


def test_reader_stream_ending_before_close_delimiter_not_complete() -> None:
    data = body()
    sink, complete = read(data[: data.rindex(b"--")])

    assert not complete
    assert contents(sink) == PARTS


def test_reader_garbage_after_delimiter_peer_error() -> None:
    data = f"--{BOUNDARY}junk\r\n\r\nx\r\n--{BOUNDARY}--".encode()

    with pytest.raises(PeerError, match="delimiter followed by other characters"):
        read(data)


def test_reader_endless_headers_peer_error() -> None:
    data = f"--{BOUNDARY}\r\n".encode() + b"X-Long: " + b"a" * 20000

    with pytest.raises(PeerError, match="headers too long"):
        read(data)


def test_reader_no_boundary_refused() -> None:
    with pytest.raises(PeerError, match="boundary missing"):
        MultipartReader("", Collector())
