"""The WebSocket endpoint with a real client (``websockets``): prompt in, deltas out, stop at any time."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from streamchat.providers.openai import OpenAIProvider
from streamchat.relay import ClientKey, RelayConfig, UsageLog, create_app
from streamchat.relay.testing import ServedRelay
from streamchat.testing.wire_server import Reply, WireServer, chunk, data, done, sleep, text_reply

KEY = "ws-test-key-0123456789abc"
SLOW = Reply(steps=(data(chunk("", role="assistant")), data(chunk("Hel")), data(chunk("lo")), sleep(10.0),
                    data(chunk(" never")), data(chunk(finish_reason="stop")), done()))
SILENT = Reply(steps=(data(chunk("", role="assistant")), sleep(10.0), data(chunk(finish_reason="stop")), done()))


@pytest.fixture(scope="module")
def wire() -> Iterator[WireServer]:
    with WireServer() as server:
        yield server


@pytest.fixture(scope="module")
def usage() -> io.StringIO:
    return io.StringIO()


@pytest.fixture(scope="module")
def relay(wire: WireServer, usage: io.StringIO) -> Iterator[ServedRelay]:
    provider = OpenAIProvider("test-model", base_url=wire.url, api_key="sk-upstream-ws-0123456789")
    with ServedRelay(create_app(provider, RelayConfig(keys=(ClientKey("alice", KEY),)), usage_log=UsageLog(usage))) as served:
        yield served
    provider.close()


@pytest.fixture
def ws(relay: ServedRelay) -> Iterator[ClientConnection]:
    with ws_connect(relay.url.replace("http", "ws") + "/v1/ws", additional_headers={"Authorization": f"Bearer {KEY}"}) as conn:
        yield conn


def receive_until(ws: ClientConnection, kind: str) -> list[dict[str, Any]]:
    out = []
    while True:
        message = json.loads(ws.recv(timeout=10))
        out.append(message)
        if message["type"] == kind:
            return out


def test_a_prompt_streams_deltas_then_done(ws: ClientConnection, wire: WireServer, usage: io.StringIO) -> None:
    wire.set_replies(text_reply(["Hello", ",", " world", "!"]))
    ws.send(json.dumps({"type": "prompt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}))
    messages = receive_until(ws, "done")
    assert messages[0]["type"] == "start" and messages[0]["model"] == "test-model"
    assert "".join(m["text"] for m in messages if m["type"] == "text") == "Hello, world!"
    done_message = messages[-1]
    assert done_message["finish_reason"] == "stop" and done_message["usage"]["completion_tokens"] == 4
    assert done_message["metrics"]["ttft_s"] > 0 and done_message["request_id"] == messages[0]["request_id"]
    assert wire.requests[-1].json()["max_tokens"] == 20
    line = json.loads(usage.getvalue().splitlines()[-1])
    assert (line["endpoint"], line["status"], line["finish_reason"]) == ("ws", 101, "stop")


@pytest.mark.parametrize("when", ["before_first_token", "mid_stream"])
def test_stop_closes_the_upstream_and_the_socket_stays_usable(
    ws: ClientConnection, wire: WireServer, usage: io.StringIO, when: str
) -> None:
    wire.set_replies(SILENT if when == "before_first_token" else SLOW)
    n = len(wire.requests)
    ws.send(json.dumps({"type": "prompt", "prompt": "hi"}))
    wire.wait_for_requests(n + 1)
    if when == "mid_stream":
        text = ""
        while text != "Hello":
            message = json.loads(ws.recv(timeout=10))
            text += message.get("text", "") if message["type"] == "text" else ""
    else:
        assert json.loads(ws.recv(timeout=10))["type"] == "start"
    stopped_ns = time.perf_counter_ns()
    ws.send(json.dumps({"type": "stop"}))
    record = wire.wait_closed(n, timeout=3.0)
    assert record.client_closed_ns is not None and record.client_closed_ns - stopped_ns < 200_000_000
    end = receive_until(ws, "done")[-1]
    assert end["finish_reason"] == "cancelled"
    assert end["usage"]["completion_tokens"] == (2 if when == "mid_stream" else 0)
    line = json.loads(usage.getvalue().splitlines()[-1])
    assert line["finish_reason"] == "cancelled" and line["completion_tokens"] == end["usage"]["completion_tokens"]

    wire.set_replies(text_reply(["Again"]))
    ws.send(json.dumps({"type": "prompt", "prompt": "once more"}))
    assert [m["text"] for m in receive_until(ws, "done") if m["type"] == "text"] == ["Again"]


def test_one_answer_at_a_time_and_clear_errors(ws: ClientConnection, wire: WireServer) -> None:
    wire.set_replies(SILENT)
    ws.send(json.dumps({"type": "prompt", "prompt": "hi"}))
    assert json.loads(ws.recv(timeout=10))["type"] == "start"
    ws.send(json.dumps({"type": "prompt", "prompt": "and this?"}))
    busy = json.loads(ws.recv(timeout=10))
    assert (busy["type"], busy["status"], busy["code"]) == ("error", 409, "busy")
    ws.send(json.dumps({"type": "stop"}))
    assert receive_until(ws, "done")[-1]["finish_reason"] == "cancelled"
    for bad, code in [("not json", "invalid_json"), (json.dumps({"type": "dance"}), "invalid_message"),
                      (json.dumps({"type": "prompt", "prompt": ""}), "empty_prompt"),
                      (json.dumps({"type": "prompt", "prompt": "x", "max_tokens": 10**6}), "max_tokens_too_large")]:
        ws.send(bad)
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and error["code"] == code and error["status"] == 400 and error["message"]
    ws.send(b"binary")
    assert json.loads(ws.recv(timeout=10))["code"] == "invalid_message"


def test_a_browser_authenticates_with_a_token_in_the_url(relay: ServedRelay, wire: WireServer) -> None:
    import httpx2

    token = httpx2.post(relay.url + "/v1/tokens", headers={"Authorization": f"Bearer {KEY}"}).json()["token"]
    wire.set_replies(text_reply(["ok"]))
    with ws_connect(relay.url.replace("http", "ws") + f"/v1/ws?token={token}") as conn:
        conn.send(json.dumps({"type": "prompt", "prompt": "hi"}))
        assert [m["text"] for m in receive_until(conn, "done") if m["type"] == "text"] == ["ok"]
