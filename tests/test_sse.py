from __future__ import annotations

import pytest

from streamchat._sse import SSEDecoder, SSEEvent, encode_comment, encode_sse
from streamchat.errors import ProtocolError

WIRE = b'data: {"a": 1}\n\n: ping\n\nevent: delta\nid: 7\nretry: 1500\ndata: line one\ndata: line two\n\ndata: [DONE]\n\n'
EXPECTED = [
    SSEEvent('{"a": 1}'),
    SSEEvent("line one\nline two", "delta", "7", 1500),
    SSEEvent("[DONE]", "message", "7"),
]


def decode_in_pieces(data: bytes, size: int) -> list[SSEEvent]:
    decoder = SSEDecoder()
    out: list[SSEEvent] = []
    for i in range(0, len(data), size):
        out.extend(decoder.feed(data[i : i + size]))
    out.extend(decoder.flush())
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_result_does_not_depend_on_how_bytes_are_split(size: int) -> None:
    assert decode_in_pieces(WIRE, size) == EXPECTED


@pytest.mark.parametrize("ending", [b"\r\n", b"\r", b"\n"])
@pytest.mark.parametrize("size", [1, 5, 1000])
def test_every_line_ending(ending: bytes, size: int) -> None:
    assert decode_in_pieces(WIRE.replace(b"\n", ending), size) == EXPECTED


def test_multibyte_character_split_across_reads() -> None:
    data = 'data: {"t": "héllo 🌊"}\n\n'.encode()
    cut = data.index("🌊".encode()) + 2
    decoder = SSEDecoder()
    assert decoder.feed(data[:cut]) == []
    assert decoder.feed(data[cut:]) == [SSEEvent('{"t": "héllo 🌊"}')]


def test_unicode_line_separators_do_not_split_lines() -> None:
    assert decode_in_pieces('data: a\u2028b\u0085c\n\n'.encode(), 3) == [SSEEvent("a\u2028b\u0085c")]


def test_bad_utf8_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="UTF-8"):
        SSEDecoder().feed(b"data: \xff\xfe\n\n")


def test_comments_are_counted_and_not_dispatched() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b": ping\n\n: ping\n\n") == []
    assert decoder.comments == 2


def test_spec_corner_cases() -> None:
    # no space after the colon, only one space stripped, a field without colon, unknown fields
    data = b"data:x\n\ndata:  y\n\ndata\n\nfoo: bar\ndata: z\n\n"
    assert [e.data for e in decode_in_pieces(data, 4)] == ["x", " y", "", "z"]


def test_incomplete_event_at_end_is_dropped() -> None:
    assert decode_in_pieces(b"data: complete\n\ndata: cut off", 5) == [SSEEvent("complete")]


def test_encoder_round_trips() -> None:
    wire = encode_sse("one\ntwo\r\nthree", event="text", id="3", retry_ms=2000) + encode_comment("hb")
    assert decode_in_pieces(wire, 3) == [SSEEvent("one\ntwo\nthree", "text", "3", 2000)]


def test_encoder_strips_newlines_from_fields() -> None:
    assert encode_sse("x", event="a\nb", id="1\r2").startswith(b"id: 12\nevent: ab\n")
