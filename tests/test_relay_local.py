"""The embedded model (SmolLM2-135M-Instruct) served by the relay, for real: a workshop's OpenAI-compatible endpoint.

A client leaving mid-answer stops generation: the model is wrapped to count the
tokens it actually samples, and that count must stop growing within 200 ms.
"""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import CountingLlama

from streamchat import TextDelta, stream
from streamchat.faults.proxy import running
from streamchat.providers.local import LocalProvider
from streamchat.providers.openai import OpenAIProvider
from streamchat.relay import RelayConfig, UsageLog, create_app
from streamchat.relay.testing import ServedRelay


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ServedRelay, list[CountingLlama], io.StringIO]]:
    made: list[CountingLlama] = []

    def factory(**kwargs: Any) -> CountingLlama:
        made.append(CountingLlama(**kwargs))
        return made[-1]

    provider = LocalProvider(model_factory=factory, seed=7)
    usage = io.StringIO()
    with ServedRelay(create_app(provider, RelayConfig(allow_anonymous=True), usage_log=UsageLog(usage))) as relay:
        yield relay, made, usage


def test_the_sdk_gets_a_real_answer_with_an_exact_token_count(served: Any) -> None:
    relay, made, usage = served
    before = made[0].sampled
    with openai.OpenAI(base_url=relay.base_url, api_key="none", max_retries=0) as client:
        model = client.models.list().data[0].id
        assert model == "SmolLM2-135M-Instruct.Q4_1"
        text, seen_usage = [], None
        for chunk in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=24, temperature=0,
            stream=True, stream_options={"include_usage": True},
        ):
            seen_usage = chunk.usage or seen_usage
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
    assert "".join(text).strip()
    sampled = made[0].sampled - before
    assert seen_usage is not None and seen_usage.completion_tokens in (sampled, sampled - 1)  # the end-of-turn token
    assert (seen_usage.model_extra or {}).get("streamchat_source") == "tokenizer"
    line = json.loads(usage.getvalue().splitlines()[-1])
    assert line["completion_tokens_source"] == "tokenizer" and line["completion_tokens"] == seen_usage.completion_tokens


def test_leaving_mid_answer_stops_generation(served: Any) -> None:
    relay, made, usage = served
    llama = made[0]
    body = json.dumps({"model": "SmolLM2-135M-Instruct.Q4_1", "stream": True, "max_tokens": 1000, "temperature": 0,
                       "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}]})
    sock = socket.create_connection(("127.0.0.1", relay.port))
    sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
    got = b""
    while got.count(b'"content"') < 6:
        got += sock.recv(65536)
    sock.close()
    left = time.monotonic()
    time.sleep(0.2)
    at_limit = llama.sampled
    time.sleep(0.5)
    assert llama.sampled == at_limit, f"the model sampled {llama.sampled - at_limit} more tokens after 200 ms"
    deadline = time.monotonic() + 5
    while "client_disconnected" not in usage.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    line = json.loads(usage.getvalue().splitlines()[-1])
    assert line["finish_reason"] == "client_disconnected" and 5 <= line["completion_tokens"] < 200

    # The one model is free again: the next answer starts at once, not after the abandoned one.
    with openai.OpenAI(base_url=relay.base_url, api_key="none", max_retries=0) as client:
        started = time.monotonic()
        stream = client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", stream=True, max_tokens=5,
                                                messages=[{"role": "user", "content": "Hi"}])
        with stream:
            next(iter(stream))
        assert time.monotonic() - started < 5.0
    assert time.monotonic() - left < 10


def test_fault_drills_in_front_of_the_embedded_model(served: Any) -> None:
    """The fault proxy between the core and a real server (the relay serving the embedded model)."""
    relay, made, usage = served
    llama, model = made[0], "SmolLM2-135M-Instruct.Q4_1"
    story, short = "Write a very long story about a lighthouse.", {"max_tokens": 24, "temperature": 0}

    def provider(url: str, fault: str | None = None) -> OpenAIProvider:
        headers = {"X-Streamchat-Fault": fault} if fault else None
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, default_headers=headers)
        return OpenAIProvider(model, base_url=url, client=client)

    with running(relay.base_url) as proxy:
        with provider(proxy.url) as p, stream(p, story, **short) as whole:
            pieces = [e.text for e in whole if isinstance(e, TextDelta)]  # one per chunk from the relay
        assert whole.finish_reason in ("stop", "length") and len(pieces) > 6

        # cut after 4 SSE events: exactly the text that had come, said plainly, not retried
        with provider(proxy.url, "disconnect") as p:
            cut = stream(p, story, **short).until_done()
        assert cut.error is not None and "connection broke mid-answer" in cut.error.message
        assert whole.text.startswith(cut.text) and 0 < len(cut.text) < len(whole.text)
        assert cut.timings.attempts == 1

        # Stop during a stall: the model stops sampling, through the proxy and the relay
        mark = len(usage.getvalue().splitlines())
        with provider(proxy.url, "stall") as p:
            s = stream(p, story, max_tokens=400, temperature=0)
            for _ in s:
                if s.text == cut.text:  # the same 4 chunks: the proxy is holding the rest now
                    break
            time.sleep(0.2)
            s.close()
        time.sleep(0.2)
        at_limit = llama.sampled
        time.sleep(0.5)
        assert llama.sampled == at_limit, f"the model sampled {llama.sampled - at_limit} more tokens after 200 ms"
        assert s.text == cut.text and s.finish_reason == "cancelled"
        assert json.loads(proxy.log_lines[-1])["did"].startswith("stalled")
        deadline = time.monotonic() + 5
        while len(usage.getvalue().splitlines()) == mark and time.monotonic() < deadline:
            time.sleep(0.01)
        assert json.loads(usage.getvalue().splitlines()[mark])["finish_reason"] == "client_disconnected"

        # and the next request gets the same whole answer
        with provider(proxy.url) as p:
            assert stream(p, story, **short).until_done().text == whole.text
