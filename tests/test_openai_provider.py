"""OpenAIProvider against a real loopback server speaking the OpenAI streaming wire format.

Every test runs the sync (``stream``) and async (``astream``) paths alike; the
server is real (sockets, chunked HTTP), the client is the real provider.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import openai
import pytest

import streamchat
from streamchat import Error, Finish, ReasoningDelta, RetryPolicy, TextDelta, ToolCall, ToolCallDelta
from streamchat.errors import (
    AuthenticationError,
    BadRequestError,
    ConnectError,
    ModelNotFoundError,
    ProtocolError,
    RateLimitError,
    ServerError,
    StreamDropped,
    UpstreamError,
)
from streamchat.providers.openai import OpenAIProvider
from streamchat.testing.wire_server import (
    Reply,
    WireServer,
    chunk,
    comment,
    data,
    done,
    drop,
    error_reply,
    raw,
    sleep,
    text_reply,
    usage_chunk,
)

MODES = pytest.mark.parametrize("mode", ["sync", "async"])
API_KEY = "sk-test-" + "Q7rT2mXv9LpA4sKd8WnE3bYh6JcU1f"  # realistic shape, 30 chars after the prefix
FAST_RETRY = RetryPolicy(backoff_s=0.01)
MakeProvider = Callable[[WireServer | str], OpenAIProvider]


@pytest.fixture
def srv() -> Iterator[WireServer]:
    with WireServer() as server:
        yield server


@pytest.fixture
async def clients() -> AsyncIterator[list[Any]]:
    """SDK clients handed to providers, closed after the test so no socket outlives it."""
    made: list[Any] = []
    yield made
    for client in made:
        if isinstance(client, openai.AsyncOpenAI):
            await client.close()
        else:
            client.close()


@pytest.fixture
def make_provider(clients: list[Any]) -> MakeProvider:
    """``make_provider(server_or_url)``: the provider under test, with clients built as it builds its own."""

    def make(where: WireServer | str) -> OpenAIProvider:
        url = where if isinstance(where, str) else where.url
        client = openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0)
        async_client = openai.AsyncOpenAI(base_url=url, api_key=API_KEY, max_retries=0)
        clients.extend((client, async_client))
        return OpenAIProvider("test-model", base_url=url, api_key=API_KEY, client=client, async_client=async_client)

    return make


async def run(mode: str, provider: OpenAIProvider, prompt: str = "Say hello", **kwargs: Any) -> tuple[Any, list[Any]]:
    """Read one stream to its end, sync or async; check what every finished stream promises."""
    if mode == "sync":
        s: Any = streamchat.stream(provider, prompt, **kwargs)
        events = list(s)
    else:
        s = streamchat.astream(provider, prompt, **kwargs)
        events = [e async for e in s]
    finishes = [e for e in events if isinstance(e, Finish)]
    assert len(finishes) == 1 and events[-1] is finishes[0], events
    assert s.finish_reason == finishes[0].reason
    assert s.text == "".join(e.text for e in events if isinstance(e, TextDelta))
    errors = [e for e in events if isinstance(e, Error)]
    assert (s.finish_reason == "error") == bool(errors)
    if errors:
        assert errors == [s.error] and events[-2] is s.error
    return s, events


def body_of(server: WireServer, index: int) -> dict[str, Any]:
    body = server.requests[index].json()
    assert isinstance(body, dict)
    return body


# -- what healthy servers send ------------------------------------------------


@MODES
async def test_happy_path_text_usage_finish_and_timings(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    s, events = await run(mode, make_provider(srv), system="Be brief.", temperature=0.5, max_tokens=20)
    assert s.text == "Hello, world!"
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hello", ",", " world", "!"]
    assert s.finish_reason == "stop" and s.error is None
    assert s.usage is not None
    assert (s.usage.prompt_tokens, s.usage.completion_tokens, s.usage.source) == (10, 4, "server")
    t = s.timings
    assert t.token_source == "server" and t.output_tokens == 4 and t.attempts == 1
    assert t.headers_s is not None and t.ttft_s is not None and t.e2e_s is not None and t.duration_s is not None
    assert 0 < t.headers_s <= t.ttft_s <= t.e2e_s <= t.duration_s < 5
    assert t.output_chunks == 4
    body = body_of(srv, 0)
    assert body["model"] == "test-model" and body["stream"] is True
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    assert body["temperature"] == 0.5 and body["max_tokens"] == 20
    assert body["stream_options"] == {"include_usage": True}
    assert srv.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


@MODES
async def test_ttft_is_measured_at_first_content_not_role_chunk(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies(text_reply(["Hi", " there"], ttft=0.2))
    s, _ = await run(mode, make_provider(srv))
    t = s.timings
    assert s.text == "Hi there" and s.finish_reason == "stop"
    assert t.headers_s is not None and t.headers_s < 0.1
    assert t.ttft_s is not None and t.ttft_s >= 0.2
    assert t.ttfo_s is not None and t.ttfo_s >= 0.2  # the empty role chunk is not output either
    assert t.output_chunks == 2


@MODES
async def test_usage_chunk_with_empty_choices(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies(Reply(steps=(
        data(chunk("", role="assistant")),
        data(chunk("four")), data(chunk(" tokens")), data(chunk(finish_reason="length")),
        data(usage_chunk(7, 3)),
        done(),
    )))
    s, events = await run(mode, make_provider(srv))
    assert s.text == "four tokens" and s.finish_reason == "length"
    assert s.usage is not None and (s.usage.prompt_tokens, s.usage.completion_tokens) == (7, 3)
    assert s.usage.source == "server" and s.usage in events
    assert s.timings.output_tokens == 3 and s.timings.token_source == "server"


@MODES
async def test_crlf_line_endings(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies(text_reply(["Line", " one", "\n", "two"], line_ending="\r\n"))
    s, _ = await run(mode, make_provider(srv))
    assert s.text == "Line one\ntwo"
    assert s.finish_reason == "stop"
    assert s.usage is not None and s.usage.completion_tokens == 4


@MODES
async def test_comment_and_ping_lines_between_chunks(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies(Reply(steps=(
        comment("OPENROUTER PROCESSING"),
        data(chunk("", role="assistant")),
        comment(),
        data(chunk("a")),
        comment("keep-alive"),
        comment(),
        data(chunk("b")),
        raw(b":no-space comment\n\n"),
        data(chunk(finish_reason="stop")),
        done(),
    )))
    s, events = await run(mode, make_provider(srv))
    assert s.text == "ab" and s.finish_reason == "stop"
    assert [e.kind for e in events] == ["text", "text", "finish"]


@MODES
async def test_multibyte_characters_split_across_writes(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    # "é" is C3 A9 and "😀" is F0 9F 98 80; each is cut in two by separate writes.
    srv.set_replies(Reply(steps=(
        raw(b'data: {"choices":[{"index":0,"delta":{"content":"caf\xc3'),
        sleep(0.02),
        raw(b'\xa9 \xf0\x9f'),
        sleep(0.02),
        raw(b'\x98\x80"},"finish_reason":null}]}\n\n'),
        data(chunk(finish_reason="stop")),
        done(),
    )))
    s, _ = await run(mode, make_provider(srv))
    assert s.text == "café 😀"
    assert s.finish_reason == "stop"


@MODES
async def test_reasoning_content_and_reasoning_fields(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies(Reply(steps=(
        data(chunk("", role="assistant")),
        data(chunk(reasoning="The user wants ")),  # DeepSeek / vLLM: reasoning_content
        data(chunk(reasoning="a greeting.", reasoning_field="reasoning")),  # OpenRouter / Ollama: reasoning
        sleep(0.05),
        data(chunk("Hello!")),
        data(chunk(finish_reason="stop")),
        done(),
    )))
    s, events = await run(mode, make_provider(srv))
    assert s.reasoning == "The user wants a greeting."
    assert s.text == "Hello!"
    assert [e.text for e in events if isinstance(e, ReasoningDelta)] == ["The user wants ", "a greeting."]
    t = s.timings
    assert t.ttfo_s is not None and t.ttft_s is not None
    assert t.ttft_s - t.ttfo_s >= 0.04  # TTFT waits for the answer; first output includes reasoning


@MODES
async def test_think_tags_split_across_chunks_go_to_reasoning(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    pieces = ["<th", "ink>Let me", " think</th", "ink>", "The answer", " is 1 <", " 2 <"]
    srv.set_replies(Reply(steps=(
        data(chunk("", role="assistant")),
        *(data(chunk(p)) for p in pieces),
        data(chunk(finish_reason="stop")),
        done(),
    )))
    s, events = await run(mode, make_provider(srv))
    assert s.reasoning == "Let me think"
    assert s.text == "The answer is 1 < 2 <"
    assert "think" not in s.text and "<th" not in s.text
    assert all("<" not in e.text for e in events if isinstance(e, ReasoningDelta))


@MODES
async def test_tool_call_fragments_are_assembled(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    def call(index: int, *, id: str | None = None, name: str | None = None, args: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {"index": index, "function": {"arguments": args}}
        if id is not None:
            out.update(id=id, type="function")
            out["function"]["name"] = name
        return out

    srv.set_replies(Reply(steps=(
        data(chunk(role="assistant", content=None)),
        data(chunk(tool_calls=[call(0, id="call_abc", name="get_weather")])),
        data(chunk(tool_calls=[call(0, args='{"city": ')])),
        data(chunk(tool_calls=[call(0, args='"Paris"}')])),
        data(chunk(tool_calls=[call(1, id="call_def", name="get_time", args='{"tz"')])),
        data(chunk(tool_calls=[call(1, args=': "CET"}')])),
        data(chunk(finish_reason="tool_calls")),
        data(usage_chunk(12, 20)),
        done(),
    )))
    s, events = await run(mode, make_provider(srv))
    assert s.finish_reason == "tool_calls"
    assert s.tool_calls == (
        ToolCall(index=0, id="call_abc", name="get_weather", arguments='{"city": "Paris"}'),
        ToolCall(index=1, id="call_def", name="get_time", arguments='{"tz": "CET"}'),
    )
    assert [json.loads(c.arguments) for c in s.tool_calls] == [{"city": "Paris"}, {"tz": "CET"}]
    assert sum(isinstance(e, ToolCallDelta) for e in events) == 5
    assert s.text == ""
    assert s.timings.ttft_s is not None  # a tool call is content


@MODES
async def test_connection_is_reused_after_done(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    provider = make_provider(srv)
    for _ in range(2):
        s, _ = await run(mode, provider)
        assert s.text == "Hello, world!"
    assert len(srv.requests) == 2
    assert len(srv.connections) == 1


# -- failures mid-stream --------------------------------------------------------


@MODES
async def test_error_payload_mid_stream(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies(Reply(steps=(
        data(chunk("", role="assistant")),
        data(chunk("Partial ")),
        data(chunk("answer")),
        data({"error": {"message": "CUDA out of memory on worker 3", "type": "server_error", "code": 500}}),
        data(chunk(" never")),
        done(),
    )))
    s, _ = await run(mode, make_provider(srv), retry=FAST_RETRY)
    assert s.finish_reason == "error"
    assert s.text == "Partial answer"
    assert s.error is not None and s.error.streamed is True and s.error.retryable is False
    assert isinstance(s.error.error, UpstreamError)
    assert "CUDA out of memory on worker 3" in s.error.message
    assert "mid-stream" in s.error.message
    assert len(srv.requests) == 1


@MODES
async def test_dropped_connection_keeps_partial_text_and_is_not_retried(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies([
        Reply(steps=(data(chunk("", role="assistant")), data(chunk("Hel")), data(chunk("lo")), drop())),
        text_reply(["must", " not", " appear"]),
    ])
    s, events = await run(mode, make_provider(srv), retry=FAST_RETRY)
    assert s.finish_reason == "error"
    assert s.text == "Hello"  # kept, and not duplicated by a retry
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hel", "lo"]
    assert s.error is not None and s.error.streamed is True and s.error.retryable is False
    assert isinstance(s.error.error, StreamDropped)
    assert "connection" in s.error.message
    assert len(srv.requests) == 1
    assert s.timings.attempts == 1


@MODES
async def test_end_without_finish_reason_or_done_is_an_interruption(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies(Reply(steps=(data(chunk("", role="assistant")), data(chunk("The answer is")))))
    s, _ = await run(mode, make_provider(srv), retry=FAST_RETRY)
    assert s.finish_reason == "error"
    assert s.text == "The answer is"
    assert s.error is not None and isinstance(s.error.error, StreamDropped)
    assert "finish reason" in s.error.message
    assert len(srv.requests) == 1


@MODES
async def test_done_without_finish_reason_is_stop(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies(Reply(steps=(data(chunk("", role="assistant")), data(chunk("Complete.")), done())))
    s, _ = await run(mode, make_provider(srv))
    assert s.finish_reason == "stop" and s.error is None
    assert s.text == "Complete."


@MODES
async def test_malformed_json_chunk(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies(Reply(steps=(
        data(chunk("ok ")),
        raw(b'data: {"choices": [{"delta": {"content": "x"\n\n'),
        data(chunk(finish_reason="stop")),
        done(),
    )))
    s, _ = await run(mode, make_provider(srv), retry=FAST_RETRY)
    assert s.finish_reason == "error"
    assert s.text == "ok "
    assert s.error is not None and isinstance(s.error.error, ProtocolError)
    assert "malformed chunk" in s.error.message
    assert '{"choices": [{"delta": {"content": "x"' in s.error.message  # names the chunk


@MODES
async def test_invalid_utf8(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies(Reply(steps=(
        data(chunk("ok ")),
        raw(b'data: {"choices":[{"index":0,"delta":{"content":"\xff\xfe"}}]}\n\n'),
        data(chunk(finish_reason="stop")),
        done(),
    )))
    s, _ = await run(mode, make_provider(srv), retry=FAST_RETRY)
    assert s.finish_reason == "error"
    assert s.text == "ok "
    assert s.error is not None and isinstance(s.error.error, ProtocolError)
    assert "UTF-8" in s.error.message


# -- HTTP errors and retries ----------------------------------------------------


@MODES
async def test_429_retry_after_is_honoured_then_success(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies([
        error_reply(429, "Rate limit reached for requests", type_="requests", code="rate_limit_exceeded",
                    headers=(("Retry-After", "0.2"),)),
        text_reply(["Hello", " again"]),
    ])
    s, _ = await run(mode, make_provider(srv), retry=FAST_RETRY)
    assert s.finish_reason == "stop"
    assert s.text == "Hello again"  # exactly once
    assert s.timings.attempts == 2
    assert s.timings.ttft_s is not None and s.timings.ttft_s >= 0.2  # the 0.2 s wait, not the 0.01 s backoff
    assert len(srv.requests) == 2
    assert body_of(srv, 0) == body_of(srv, 1)


@MODES
async def test_500_is_retried(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies([error_reply(500, "The server had an error", type_="server_error"), text_reply(["Recovered"])])
    s, _ = await run(mode, make_provider(srv), retry=FAST_RETRY)
    assert s.finish_reason == "stop" and s.text == "Recovered"
    assert s.timings.attempts == 2 and len(srv.requests) == 2


@MODES
async def test_persistent_500_gives_up_after_max_retries(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies(error_reply(503, "overloaded", type_="server_error"))
    s, _ = await run(mode, make_provider(srv), retry=RetryPolicy(max_retries=2, backoff_s=0.01))
    assert s.finish_reason == "error"
    assert s.error is not None and isinstance(s.error.error, ServerError)
    assert "503" in s.error.message and "overloaded" in s.error.message
    assert s.error.streamed is False
    assert len(srv.requests) == 3 and s.timings.attempts == 3


@MODES
async def test_401_is_not_retried_and_never_leaks_the_key(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies(error_reply(401, f"Incorrect API key provided: {API_KEY}.", code="invalid_api_key"))
    provider = make_provider(srv)
    s, events = await run(mode, provider, retry=FAST_RETRY)
    assert s.finish_reason == "error"
    assert s.error is not None and isinstance(s.error.error, AuthenticationError)
    assert "401" in s.error.message and "API key" in s.error.message
    assert len(srv.requests) == 1  # no retry
    assert srv.requests[0].headers["authorization"] == f"Bearer {API_KEY}"  # the key was really used
    for text in (s.error.message, str(s.error.error), repr(s.error.error), repr(s.error), repr(provider), repr(s),
                 repr(events)):
        assert API_KEY not in text
        assert API_KEY[len("sk-test-"):] not in text


@MODES
async def test_404_names_the_model(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies(error_reply(404, "Not Found", type_="invalid_request_error", code="model_not_found"))
    s, _ = await run(mode, make_provider(srv), model="llama-3-nonexistent", retry=FAST_RETRY)
    assert s.finish_reason == "error"
    assert s.error is not None and isinstance(s.error.error, ModelNotFoundError)
    assert "llama-3-nonexistent" in s.error.message and "404" in s.error.message
    assert len(srv.requests) == 1
    assert body_of(srv, 0)["model"] == "llama-3-nonexistent"


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@MODES
async def test_unreachable_host_is_retried_then_fails(mode: str, make_provider: MakeProvider) -> None:
    port = _closed_port()
    provider = make_provider(f"http://127.0.0.1:{port}/v1")
    s, _ = await run(mode, provider, retry=RetryPolicy(max_retries=2, backoff_s=0.01))
    assert s.finish_reason == "error"
    assert s.error is not None and isinstance(s.error.error, ConnectError)
    assert s.error.message.startswith(f"could not connect to 127.0.0.1:{port}")
    assert s.error.streamed is False and s.error.retryable is True
    assert s.timings.attempts == 3
    assert s.text == "" and s.timings.ttft_s is None


@MODES
async def test_stream_options_rejected_is_retried_without_it(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies([
        error_reply(400, "Unrecognized request argument supplied: stream_options"),
        text_reply(["Fine"], usage=False),
    ])
    provider = make_provider(srv)
    s, _ = await run(mode, provider, retry=RetryPolicy(max_retries=0))
    assert s.finish_reason == "stop" and s.text == "Fine"
    assert len(srv.requests) == 2
    assert body_of(srv, 0)["stream_options"] == {"include_usage": True}
    assert "stream_options" not in body_of(srv, 1)
    assert s.usage is None and s.timings.token_source == "chunks"


@MODES
async def test_other_400_is_not_retried(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies(error_reply(400, "max_tokens is too large: 999999"))
    s, _ = await run(mode, make_provider(srv), retry=FAST_RETRY)
    assert s.finish_reason == "error"
    assert s.error is not None and isinstance(s.error.error, BadRequestError)
    assert "max_tokens is too large" in s.error.message
    assert len(srv.requests) == 1
    assert "stream_options" in body_of(srv, 0)


@MODES
async def test_rate_limit_without_retries_reports_429(mode: str, srv: WireServer, make_provider: MakeProvider) -> None:
    srv.set_replies(error_reply(429, "You exceeded your current quota", type_="insufficient_quota"))
    s, _ = await run(mode, make_provider(srv), retry=RetryPolicy(max_retries=0))
    assert s.error is not None and isinstance(s.error.error, RateLimitError)
    assert "429" in s.error.message and "quota" in s.error.message
    assert len(srv.requests) == 1
