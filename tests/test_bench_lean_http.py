"""The benchmark's own HTTP client against a real loopback server: what it reads, how it fails, how it hangs up."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from streamchat import RetryPolicy, Timeouts, astream, stream
from streamchat._stream import AsyncStream
from streamchat.bench import LeanHTTPProvider
from streamchat.bench.lean_http import _Body
from streamchat.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ConnectError,
    ModelNotFoundError,
    ProtocolError,
    RateLimitError,
    ServerError,
    StreamDropped,
    StreamTimeout,
)
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

NO_RETRY = RetryPolicy(max_retries=0)
KEY = "sk-lean-" + "R4nD0mK3yF0rT3sts9x8y7w6v5u4t"


@pytest.fixture
async def lean() -> AsyncIterator[Any]:
    """``lean(server)``: a provider for that server; its pooled connections are closed after the test."""
    made: list[LeanHTTPProvider] = []

    def make(server: WireServer | str, key: str | None = KEY) -> LeanHTTPProvider:
        url = server if isinstance(server, str) else server.url
        made.append(LeanHTTPProvider("test-model", base_url=url, api_key=key))
        return made[-1]

    yield make
    for provider in made:
        await provider.release()


async def read(provider: LeanHTTPProvider, prompt: str = "hi", **kw: Any) -> AsyncStream:
    kw.setdefault("retry", NO_RETRY)
    async with aclosing(astream(provider, prompt, **kw)) as s:
        async for _ in s:
            pass
    return s


async def test_streams_text_usage_and_reuses_its_connection(lean: Any) -> None:
    with WireServer(text_reply(["Hel", "lo", " wörld", " 👋"], ttft=0.01)) as server:
        provider = lean(server)
        first = await read(provider, max_tokens=20, temperature=0.5, extra={"extra_body": {"ignore_eos": True}})
        second = await read(provider)
        body = server.requests[0].json()
        auth = server.requests[0].headers["authorization"]
    assert first.text == second.text == "Hello wörld 👋" and first.finish_reason == "stop"
    assert first.usage is not None and first.usage.completion_tokens == 4 and first.timings.token_source == "server"
    assert first.timings.headers_s is not None and first.timings.ttft_s is not None
    assert first.timings.headers_s < first.timings.ttft_s
    assert len(server.connections) == 1  # keep-alive: the second request reused the first connection
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"], body["ignore_eos"]) == (20, 0.5, True)
    assert auth == f"Bearer {KEY}" and server.requests[0].path == "/v1/chat/completions"


async def test_crlf_pings_and_bytes_split_anywhere(lean: Any) -> None:
    line = ('data: {"choices":[{"index":0,"delta":{"content":"sp' + "é" + 'lit"},"finish_reason":null}]}\r\n\r\n').encode()
    cut = line.index("é".encode()) + 1  # in the middle of a two-byte character
    steps = (
        data(chunk("", role="assistant")), comment("keep-alive"), raw(line[:7]), raw(line[7:cut]), raw(line[cut:]),
        data(chunk(finish_reason="stop")), done(),
    )
    with WireServer(Reply(steps=steps, line_ending="\r\n")) as server:
        s = await read(lean(server))
    assert s.text == "spélit" and s.finish_reason == "stop" and s.timings.token_source == "chunks"


async def test_a_body_with_a_content_length_and_no_chunking(lean: Any) -> None:
    events = [chunk("one"), chunk(" two"), chunk(finish_reason="stop"), usage_chunk(3, 2)]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    with WireServer(Reply(body=body, headers=(("Content-Type", "text/event-stream"),))) as server:
        s = await read(lean(server))
    assert s.text == "one two" and s.usage is not None and s.usage.completion_tokens == 2


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (error_reply(401, f"Incorrect API key provided: {KEY}"), AuthenticationError, "refused the API key (HTTP 401)"),
        (error_reply(404, "The model `test-model` does not exist"), ModelNotFoundError, "answered 404 for model 'test-model'"),
        (error_reply(429, "slow down", headers=(("Retry-After", "7"),)), RateLimitError, "is rate limiting (HTTP 429): slow down"),
        (error_reply(503, "overloaded", type_="server_error"), ServerError, "failed (HTTP 503): overloaded"),
        (error_reply(400, "messages: too long"), BadRequestError, "refused the request (HTTP 400): messages: too long"),
        (Reply(status=500, body=b"<html>gateway</html>"), ServerError, "failed (HTTP 500): <html>gateway</html>"),
    ],
)
async def test_http_errors_are_named_and_keep_no_key(lean: Any, reply: Reply, error: type[Exception], message: str) -> None:
    with WireServer(reply) as server:
        s = await read(lean(server))
    assert s.finish_reason == "error" and s.error is not None
    assert isinstance(s.error.error, error) and message in s.error.message
    assert KEY not in s.error.message and KEY[8:] not in s.error.message
    if error is RateLimitError:
        assert s.error.error.retry_after == 7.0  # type: ignore[attr-defined]


async def test_a_server_that_refuses_stream_options_is_asked_again_without(lean: Any) -> None:
    def script(req: Any) -> Reply:
        if "stream_options" in req.json():
            return error_reply(400, "Unrecognized request argument supplied: stream_options")
        return text_reply(["ok"], usage=False)

    with WireServer(script) as server:
        provider = lean(server)
        s = await read(provider)
        again = await read(provider)
    assert s.text == again.text == "ok" and provider.include_usage is False
    assert [("stream_options" in r.json()) for r in server.requests] == [True, False, False]


async def test_unreachable_dropped_malformed(lean: Any) -> None:
    refused = await read(lean("http://127.0.0.1:9/v1"))
    assert isinstance(refused.error.error, ConnectError)  # type: ignore[union-attr]
    assert "could not connect to 127.0.0.1:9" in refused.error.message  # type: ignore[union-attr]
    steps = (data(chunk("", role="assistant")), data(chunk("partial")), drop())
    with WireServer(Reply(steps=steps)) as server:
        dropped = await read(lean(server))
    assert dropped.text == "partial" and isinstance(dropped.error.error, StreamDropped)  # type: ignore[union-attr]
    with WireServer(Reply(steps=(raw(b"data: {not json\n\n"),))) as server:
        bad = await read(lean(server))
    assert isinstance(bad.error.error, ProtocolError) and "not JSON" in bad.error.message  # type: ignore[union-attr]


async def test_a_stalled_server_times_out_and_sees_the_hang_up(lean: Any) -> None:
    steps = (data(chunk("", role="assistant")), data(chunk("a")), sleep(30))
    with WireServer(Reply(steps=steps)) as server:
        started = time.perf_counter()
        s = await read(lean(server), timeouts=Timeouts(idle=0.3))
        record = await asyncio.to_thread(server.wait_closed, 0, 5)  # the loop must run to close the socket
    assert isinstance(s.error.error, StreamTimeout) and s.error.error.phase == "idle"  # type: ignore[union-attr]
    assert s.text == "a" and time.perf_counter() - started < 5
    assert record.client_closed_ns is not None


async def test_closing_mid_answer_hangs_up_at_once(lean: Any) -> None:
    steps = (data(chunk("", role="assistant")), data(chunk("first")), sleep(30))
    with WireServer(Reply(steps=steps)) as server:
        async with aclosing(astream(lean(server), "hi")) as s:
            async for event in s:
                if event.kind == "text":
                    break
        closed = time.perf_counter_ns()
        record = await asyncio.to_thread(server.wait_closed, 0, 5)
    assert s.finish_reason == "cancelled" and s.text == "first"
    assert record.client_closed_ns is not None and record.client_closed_ns - closed < 1e9


async def test_a_connection_the_server_closes_is_not_reused(lean: Any) -> None:
    reply = text_reply(["x"])
    closing = Reply(steps=reply.steps, headers=(("Connection", "close"),))
    with WireServer(closing) as server:
        provider = lean(server)
        for _ in range(3):
            assert (await read(provider)).text == "x"
        connections = len(server.connections)
    assert connections == 3


async def test_without_a_key_no_authorization_header(lean: Any) -> None:
    with WireServer(text_reply(["x"])) as server:
        await read(lean(server, key=""))
        headers = server.requests[0].headers
    assert "authorization" not in headers


def test_async_only_and_a_clear_error_for_a_bad_url() -> None:
    provider = LeanHTTPProvider("m", base_url="http://127.0.0.1:9/v1")
    with stream(provider, "hi") as s:
        s.until_done()
    assert s.finish_reason == "error" and "async only" in s.error.message  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="base_url must start with http"):
        LeanHTTPProvider("m", base_url="ftp://x")
    with pytest.raises(ConfigError, match="model is required"):
        LeanHTTPProvider("", base_url="http://x/v1")
    assert KEY not in repr(LeanHTTPProvider("m", base_url="http://x/v1", api_key=KEY))


def test_chunked_framing_survives_any_split() -> None:
    payloads = [b"data: one\n\n", b"data: " + b"x" * 300 + b"\n\n", b"data: [DONE]\n\n"]
    wire = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in payloads) + b"0\r\nTrailer: v\r\n\r\n"
    rng = random.Random(5)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(wire)), 6))
        body, buf, got = _Body({"transfer-encoding": "chunked"}), bytearray(), b""
        for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
            buf += wire[a:b]
            got += body.take(buf)
        assert got == b"".join(payloads) and body.complete and not buf


async def test_many_streams_at_once(lean: Any) -> None:
    with WireServer(text_reply(["a", "b", "c"], ttft=0.05, gap=0.01)) as server:
        provider = lean(server)
        results = await asyncio.gather(*(read(provider) for _ in range(32)))
        again = await asyncio.gather(*(read(provider) for _ in range(32)))
        connections = len(server.connections)
    assert all(s.text == "abc" for s in [*results, *again])
    assert connections == 32  # the second wave reused the first wave's connections
