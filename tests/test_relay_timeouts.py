"""Time on each stream: first-token, idle and send limits, heartbeats, held headers, and a graceful drain."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from websockets.sync.client import connect as ws_connect

from streamchat import ScriptedProvider, Timeouts
from streamchat.providers.openai import OpenAIProvider
from streamchat.relay import ClientKey, Limits, RelayConfig, UsageLog, create_app
from streamchat.relay.testing import ServedRelay
from streamchat.testing.wire_server import Reply, WireServer, chunk, data, done, sleep

KEY = "timeout-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROLE = data(chunk("", role="assistant"))


@pytest.fixture
def relay_on() -> Iterator[Any]:
    """Start a relay on a given upstream and config; returns (served, usage lines)."""
    made: list[ServedRelay] = []

    def start(provider: Any, **config: Any) -> tuple[ServedRelay, io.StringIO]:
        usage = io.StringIO()
        app = create_app(provider, RelayConfig(keys=(ClientKey("alice", KEY),), **config), usage_log=UsageLog(usage))
        made.append(ServedRelay(app).start())
        return made[-1], usage

    yield start
    for served in made:
        served.stop()


def usage_line(usage: io.StringIO) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while not usage.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    return dict(json.loads(usage.getvalue().splitlines()[-1]))


def test_an_upstream_that_never_starts_gets_a_504_not_a_hang(relay_on: Any) -> None:
    with WireServer(Reply(steps=(ROLE, sleep(10), done()))) as wire:
        provider = OpenAIProvider("test-model", base_url=wire.url, api_key="sk-up-timeouts-0123456789")
        served, usage = relay_on(provider, timeouts=Timeouts(first_token=0.5, idle=5, total=30), heartbeat_s=5)
        body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        started = time.monotonic()
        response = httpx2.post(served.url + "/v1/chat/completions", headers=AUTH, json=body, timeout=10)
        assert time.monotonic() - started < 3
        assert response.status_code == 504, response.text
        error = response.json()["error"]
        assert error["code"] == "upstream_timeout" and "first_token limit is 0.5 s" in error["message"]
        assert wire.wait_closed(0, timeout=2).finished_body_ns is None
        assert usage_line(usage)["error"] == "upstream_timeout"
        provider.close()


def test_an_upstream_that_stalls_mid_answer_ends_with_an_error_event(relay_on: Any) -> None:
    stall = Reply(steps=(ROLE, data(chunk("Hel")), sleep(10), data(chunk(finish_reason="stop")), done()))
    with WireServer(stall) as wire:
        provider = OpenAIProvider("test-model", base_url=wire.url, api_key="sk-up-timeouts-0123456789")
        served, usage = relay_on(provider, timeouts=Timeouts(first_token=5, idle=0.5, total=30))
        response = httpx2.get(served.url + "/v1/events", params={"prompt": "hi"}, headers=AUTH, timeout=10)
        events = [e for e in response.text.split("\n\n") if e.strip()]
        kinds = [e.split("event: ")[1].split("\n")[0] for e in events if "event: " in e]
        assert kinds[:1] == ["text"] and kinds[-2:] == ["error", "done"]
        error = json.loads(events[-2].split("data: ", 1)[1])
        assert error == {"code": "upstream_timeout", "message": error["message"], "retryable": False, "streamed": True}
        assert "stopped sending mid-answer" in error["message"]
        line = usage_line(usage)
        assert (line["finish_reason"], line["error"], line["completion_tokens"]) == ("error", "upstream_timeout", 1)
        provider.close()


def test_heartbeats_keep_an_idle_stream_alive_and_held_headers_give_way(relay_on: Any) -> None:
    slow = ScriptedProvider("Late answer.", ttft=1.2, tokens_per_s=100)
    served, _ = relay_on(slow, heartbeat_s=0.25)
    events = httpx2.get(served.url + "/v1/events", params={"prompt": "hi"}, headers=AUTH, timeout=10).text
    assert events.count(": ping") >= 3 and events.index(": ping") < events.index("event: text")
    body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    started = time.monotonic()
    with httpx2.stream("POST", served.url + "/v1/chat/completions", headers=AUTH, json=body, timeout=10) as response:
        headers_after = time.monotonic() - started
        assert response.status_code == 200
        text = response.read().decode()
    # The OpenAI stream holds its headers for one heartbeat, then sends them and pings.
    assert 0.2 < headers_after < 1.1, headers_after
    assert ": ping" in text and text.rstrip().endswith("data: [DONE]")


def test_a_client_that_stops_reading_is_dropped(relay_on: Any) -> None:
    # About 6 MB of answer, far more than the socket buffers hold.
    flood = ScriptedProvider("wordy " * 1_000_000, ttft=0, tokens_per_s=0, chunk_tokens=20_000)
    served, usage = relay_on(flood, send_timeout_s=0.5, limits=Limits(max_tokens=1_000_000))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", served.port))
    sock.sendall(f"GET /v1/events?prompt=hi HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode())
    sock.recv(1024)  # the headers, then nothing more is read
    try:
        line = usage_line(usage)
    finally:
        sock.close()
    assert line["finish_reason"] == "client_stalled" and 0 < line["completion_tokens"] < 1_000_000
    assert served.app.state.relay.limiter.streams == 0


def test_a_drain_lets_websocket_answers_finish(relay_on: Any) -> None:
    served, usage = relay_on(ScriptedProvider(ttft=0.05, tokens_per_s=40), grace_s=10)
    url = served.url.replace("http", "ws") + "/v1/ws"
    with ws_connect(url, additional_headers=AUTH) as ws:
        ws.send(json.dumps({"type": "prompt", "prompt": "hi"}))
        while json.loads(ws.recv(timeout=10))["type"] != "text":
            pass
        served.shutdown()
        messages = []
        while True:
            message = json.loads(ws.recv(timeout=10))
            messages.append(message)
            if message["type"] == "done":
                break
    assert messages[-1]["finish_reason"] == "stop"
    served.wait_stopped()
    assert usage_line(usage)["finish_reason"] == "stop"
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(served.url + "/health")
