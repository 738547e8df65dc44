"""A bounded load test on loopback: many concurrent streams on every HTTP endpoint, none lost, none mixed up.

Speed is measured by ``benchmarks/relay_load.py``, not here: this checks that
under load every stream is complete and correct, accounted once, and freed.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from streamchat import Message, ScriptedProvider
from streamchat._sse import SSEDecoder
from streamchat.messages import ChatRequest
from streamchat.relay import ClientKey, Limits, RelayConfig, UsageLog, create_app
from streamchat.relay.testing import ServedRelay

KEY = "load-test-key-0123456789"
STREAMS = 120


def echo(request: ChatRequest) -> str:
    """Each answer names its prompt, so a mixed-up stream would show."""
    return f"Answer to {request.messages[-1].content}: " + "word " * 30


@pytest.fixture(scope="module")
def relay() -> Iterator[tuple[ServedRelay, io.StringIO]]:
    usage = io.StringIO()
    limits = Limits(requests_per_minute=None, tokens_per_minute=None, streams_per_key=None, streams_total=STREAMS)
    app = create_app(ScriptedProvider(echo, ttft=0.05, tokens_per_s=80.0, jitter=0.3, seed=None),
                     RelayConfig(keys=(ClientKey("load", KEY),), limits=limits), usage_log=UsageLog(usage))
    with ServedRelay(app) as served:
        yield served, usage


async def one(client: httpx2.AsyncClient, kind: str, n: int) -> str:
    prompt = f"prompt-{n}"
    headers = {"Authorization": f"Bearer {KEY}"}
    if kind == "events":
        request = client.build_request("GET", "/v1/events", params={"prompt": prompt}, headers=headers)
    elif kind == "ndjson":
        request = client.build_request("POST", "/v1/stream", json={"prompt": prompt}, headers=headers)
    else:
        body = {"model": "scripted", "messages": [{"role": "user", "content": prompt}], "stream": True}
        request = client.build_request("POST", "/v1/chat/completions", json=body, headers=headers)
    response = await client.send(request, stream=True)
    try:
        assert response.status_code == 200, await response.aread()
        text, finish = [], None
        if kind == "ndjson":
            async for line in response.aiter_lines():
                row = json.loads(line)
                text.append(row.get("text", "") if row["type"] == "text" else "")
                finish = row.get("finish_reason", finish)
        else:
            decoder = SSEDecoder()
            async for data in response.aiter_bytes():
                for event in decoder.feed(data):
                    if event.data == "[DONE]":
                        continue
                    payload = json.loads(event.data)
                    if kind == "events":
                        text.append(payload.get("text", "") if event.event == "text" else "")
                        finish = payload.get("finish_reason", finish)
                    elif payload["choices"]:
                        text.append(payload["choices"][0]["delta"].get("content") or "")
                        finish = payload["choices"][0]["finish_reason"] or finish
        assert finish == "stop", (kind, n, finish)
        return "".join(text)
    finally:
        await response.aclose()


async def test_concurrent_streams_all_arrive_whole(relay: tuple[ServedRelay, io.StringIO]) -> None:
    served, usage = relay
    kinds = ["events", "ndjson", "openai"]
    limits = httpx2.Limits(max_connections=STREAMS, max_keepalive_connections=STREAMS)
    async with httpx2.AsyncClient(base_url=served.url, limits=limits, timeout=60) as client:
        jobs = [one(client, kinds[n % 3], n) for n in range(STREAMS)]
        results: list[Any] = await asyncio.gather(*jobs, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    for n, text in enumerate(results):
        assert text == echo(ChatRequest(messages=(Message("user", f"prompt-{n}"),)))
    lines = [json.loads(line) for line in usage.getvalue().splitlines()]
    assert len(lines) == STREAMS and {line["finish_reason"] for line in lines} == {"stop"}
    assert len({line["request_id"] for line in lines}) == STREAMS
    state = served.app.state.relay
    assert state.limiter.streams == 0 and not state.sessions
