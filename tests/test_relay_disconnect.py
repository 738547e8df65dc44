"""A client that leaves makes the relay close its upstream within 200 ms: checked on the upstream side.

The upstream is a real OpenAI-compatible server (the wire server) that records,
with ``perf_counter_ns``, when the relay hung up on it. The client is a raw
socket (or a real WebSocket client) that leaves at a known moment: before the
upstream sent headers, after headers but before the first token, or
mid-answer; on every endpoint, streamed or not. The usage line is written
every time, with ``client_disconnected`` and the tokens that had arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from streamchat import ScriptedProvider
from streamchat.providers.openai import OpenAIProvider
from streamchat.relay import ClientKey, RelayConfig, UsageLog, create_app
from streamchat.relay.testing import ServedRelay
from streamchat.testing.wire_server import Reply, WireServer, chunk, data, done, sleep

KEY = "disconnect-test-key-0123456789"
UPSTREAM_KEY = "sk-upstream-" + "Dc7Vb3Nq8Lw1Xe5"
LIMIT_NS = 200_000_000  # the upstream must see the hang-up within 200 ms

ROLE = data(chunk("", role="assistant"))
LATER = (data(chunk(" never")), data(chunk(finish_reason="stop")), done())
PHASES = {
    "before_headers": Reply(headers_delay=10.0, steps=(ROLE, *LATER)),
    "before_first_token": Reply(steps=(ROLE, sleep(10.0), *LATER)),
    "mid_stream": Reply(steps=(ROLE, data(chunk("Hel")), data(chunk("lo")), sleep(10.0), *LATER)),
}
ENDPOINTS = ["chat_stream", "chat_whole", "events", "ndjson", "ws"]


@pytest.fixture(scope="module")
def wire() -> Iterator[WireServer]:
    with WireServer(PHASES["mid_stream"]) as server:
        yield server


@pytest.fixture(scope="module")
def usage() -> io.StringIO:
    return io.StringIO()


@pytest.fixture(scope="module")
def relay(wire: WireServer, usage: io.StringIO) -> Iterator[ServedRelay]:
    provider = OpenAIProvider("test-model", base_url=wire.url, api_key=UPSTREAM_KEY)
    config = RelayConfig(keys=(ClientKey("alice", KEY),))
    with ServedRelay(create_app(provider, config, usage_log=UsageLog(usage))) as served:
        yield served
    provider.close()


def http_request(relay: ServedRelay, endpoint: str) -> bytes:
    auth = f"Authorization: Bearer {KEY}\r\n"
    if endpoint == "events":
        return f"GET /v1/events?prompt=hi HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()
    if endpoint == "ndjson":
        path, body = "/v1/stream", {"prompt": "hi"}
    else:
        path = "/v1/chat/completions"
        body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "stream": endpoint == "chat_stream"}
    payload = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    return head.encode() + payload


def wait_until(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.005)
    raise TimeoutError(f"{what} not met within {timeout} s")


def last_usage(usage: io.StringIO, count: int) -> dict[str, Any]:
    lines = wait_until(lambda: (rows := usage.getvalue().splitlines()) and len(rows) > count and rows, what="usage line")
    return dict(json.loads(lines[-1]))


def session_text(relay: ServedRelay) -> str:
    sessions = list(relay.app.state.relay.sessions)
    return sessions[0].stream.text if sessions else ""


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_leaving_closes_the_upstream_within_200_ms(
    relay: ServedRelay, wire: WireServer, usage: io.StringIO, endpoint: str, phase: str
) -> None:
    wire.set_replies(PHASES[phase])
    n_requests, n_lines = len(wire.requests), len(usage.getvalue().splitlines())
    ws = sock = None
    cleanup = contextlib.ExitStack()
    if endpoint == "ws":
        url = relay.url.replace("http", "ws") + "/v1/ws"
        ws = cleanup.enter_context(ws_connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}))
        ws.send(json.dumps({"type": "prompt", "prompt": "hi"}))
    else:
        sock = socket.create_connection(("127.0.0.1", relay.port))
        sock.sendall(http_request(relay, endpoint))
    wire.wait_for_requests(n_requests + 1)
    if phase == "mid_stream":
        wait_until(lambda: session_text(relay) == "Hello", what="the first tokens reaching the relay")
        if ws is not None:
            seen = ""
            while seen != "Hello":
                message = json.loads(ws.recv(timeout=5))
                seen += message.get("text", "") if message["type"] == "text" else ""
        elif endpoint != "chat_whole":
            assert sock is not None
            got = b""
            while b"lo" not in got:
                got += sock.recv(65536)
    stopped_ns = time.perf_counter_ns()
    if ws is not None:
        ws.socket.shutdown(socket.SHUT_RDWR)  # the tab is gone: no closing handshake
        cleanup.close()
    else:
        assert sock is not None
        sock.close()
    record = wire.wait_closed(n_requests, timeout=3.0)
    assert record.client_closed_ns is not None, "the relay never hung up on the upstream"
    assert record.finished_body_ns is None
    lag_ms = (record.client_closed_ns - stopped_ns) / 1e6
    assert lag_ms < LIMIT_NS / 1e6, f"the upstream saw the hang-up {lag_ms:.1f} ms after the client left"

    line = last_usage(usage, n_lines)
    assert line["finish_reason"] == "client_disconnected" and line["key_id"] == "alice"
    assert line["completion_tokens"] == (2 if phase == "mid_stream" else 0)
    assert line["completion_tokens_source"] == "chunks" and line["duration_s"] > 0
    assert UPSTREAM_KEY not in usage.getvalue()
    wait_until(lambda: relay.app.state.relay.limiter.streams == 0, what="the stream slot freed")


class Observed:
    """A real ScriptedProvider, with the moment its source is closed written down."""

    def __init__(self, inner: ScriptedProvider) -> None:
        self.inner, self.name, self.model = inner, inner.name, inner.model
        self.closed_ns: list[int] = []
        self.opened = 0

    def redact(self, text: str) -> str:
        return self.inner.redact(text)

    def open(self, request: Any, timeouts: Any, clock: Any) -> Any:
        raise NotImplementedError("the relay is async")

    async def aopen(self, request: Any, timeouts: Any, clock: Any) -> Any:
        source = await self.inner.aopen(request, timeouts, clock)
        self.opened += 1
        original = source.aclose

        async def aclose() -> None:
            self.closed_ns.append(time.perf_counter_ns())
            await original()

        source.aclose = aclose  # type: ignore[method-assign]
        return source


@pytest.mark.parametrize("phase", ["before_first_token", "mid_stream"])
def test_a_scripted_provider_is_closed_too(phase: str) -> None:
    observed = Observed(ScriptedProvider(ttft=5.0 if phase == "before_first_token" else 0.0, tokens_per_s=2.0))
    out = io.StringIO()
    app = create_app(observed, RelayConfig(keys=(ClientKey("alice", KEY),)), usage_log=UsageLog(out))  # type: ignore[arg-type]
    with ServedRelay(app) as served:
        sock = socket.create_connection(("127.0.0.1", served.port))
        sock.sendall(http_request(served, "events"))
        wait_until(lambda: observed.opened, what="the provider opened")
        if phase == "mid_stream":
            got = b""
            while b"event: text" not in got:
                got += sock.recv(65536)
        stopped_ns = time.perf_counter_ns()
        sock.close()
        closed = wait_until(lambda: observed.closed_ns, timeout=3.0, what="the provider's source closed")
        assert (closed[0] - stopped_ns) < LIMIT_NS
        line = json.loads(wait_until(lambda: out.getvalue().splitlines(), what="usage line")[-1])
    assert line["finish_reason"] == "client_disconnected"
    assert line["completion_tokens"] == (1 if phase == "mid_stream" else 0)


def test_a_stop_before_the_upstream_answers_is_not_retried() -> None:
    """Cancelling during the core's retry wait must not leave a second request behind."""
    calls: list[float] = []

    def script(request: Any) -> Reply:
        calls.append(time.monotonic())
        return Reply(status=503, body={"error": {"message": "busy"}})

    with WireServer(script) as wire:
        provider = OpenAIProvider("test-model", base_url=wire.url, api_key=UPSTREAM_KEY)
        with ServedRelay(create_app(provider, RelayConfig(keys=(ClientKey("alice", KEY),), usage_log=None))) as served:
            sock = socket.create_connection(("127.0.0.1", served.port))
            sock.sendall(http_request(served, "chat_stream"))
            wire.wait_for_requests(1)
            sock.close()
            wait_until(lambda: served.app.state.relay.limiter.streams == 0, what="the stream slot freed")
            asyncio.run(asyncio.sleep(1.0))  # the core's first retry would have come by now
        provider.close()
    assert len(calls) == 1
