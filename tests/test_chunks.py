from __future__ import annotations

import pytest

from streamchat import ReasoningDelta, TextDelta, ToolCallDelta, Usage
from streamchat._chunks import DONE, ChunkDecoder, ThinkSplitter
from streamchat.errors import ProtocolError, UpstreamError


def chunk(**delta: object) -> dict[str, object]:
    finish = delta.pop("finish", None)
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def split_all(pieces: list[str]) -> tuple[str, str]:
    splitter = ThinkSplitter()
    parts = [p for piece in pieces for p in splitter.feed(piece)] + splitter.flush()
    return "".join(t for r, t in parts if not r), "".join(t for r, t in parts if r)


@pytest.mark.parametrize(
    "pieces",
    [
        ["<think>plan</think>answer"],
        ["<th", "ink>pl", "an</thi", "nk>ans", "wer"],
        list("<think>plan</think>answer"),
    ],
)
def test_think_tags_split_anywhere(pieces: list[str]) -> None:
    assert split_all(pieces) == ("answer", "plan")


def test_text_that_only_looks_like_a_tag_is_kept() -> None:
    assert split_all(["a <b> c <thi"]) == ("a <b> c <thi", "")
    assert split_all(["x < y", " and <thinking"]) == ("x < y and <thinking", "")


def test_role_only_and_empty_chunks_produce_nothing() -> None:
    decoder = ChunkDecoder()
    assert decoder.feed(chunk(role="assistant", content=""), 1) == []
    assert decoder.feed(chunk(), 2) == []


def test_text_reasoning_and_both_reasoning_field_names() -> None:
    decoder = ChunkDecoder()
    assert decoder.feed(chunk(reasoning_content="a"), 1) == [ReasoningDelta("a", 1)]
    assert decoder.feed(chunk(reasoning="b"), 2) == [ReasoningDelta("b", 2)]
    assert decoder.feed(chunk(content="c"), 3) == [TextDelta("c", 3)]


def test_tool_call_fragments() -> None:
    decoder = ChunkDecoder()
    first = {"index": 0, "id": "call_1", "function": {"name": "get_weather", "arguments": '{"ci'}}
    events = decoder.feed(chunk(tool_calls=[first]), 1)
    events += decoder.feed(chunk(tool_calls=[{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]), 2)
    assert events == [
        ToolCallDelta(0, 1, "call_1", "get_weather", '{"ci'),
        ToolCallDelta(0, 2, None, None, 'ty": "Oslo"}'),
    ]


def test_usage_chunk_with_empty_choices() -> None:
    decoder = ChunkDecoder()
    usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    assert decoder.feed({"choices": [], "usage": usage}, 9) == [Usage(5, 7, 9)]


def test_finish_reason_is_remembered_and_done_implies_stop() -> None:
    decoder = ChunkDecoder()
    decoder.feed(chunk(finish="length"), 1)
    assert decoder.finish_reason == "length"
    other = ChunkDecoder()
    other.feed(DONE, 1)
    assert other.finish_reason == "stop"


def test_error_payload_is_an_upstream_error_without_secrets() -> None:
    decoder = ChunkDecoder(secrets=("sk-verysecretvalue123",))
    with pytest.raises(UpstreamError, match="overloaded") as info:
        decoder.feed({"error": {"message": "model overloaded for sk-verysecretvalue123"}}, 1)
    assert "verysecret" not in str(info.value)


@pytest.mark.parametrize("bad", [[1, 2], {"choices": "nope"}, {"id": "x"}, {"choices": [None]}])
def test_malformed_chunks_are_protocol_errors(bad: object) -> None:
    with pytest.raises(ProtocolError, match="malformed chunk"):
        ChunkDecoder().feed(bad, 1)  # type: ignore[arg-type]
