"""The official ``openai`` SDK, sync and async, against a real relay on loopback, unchanged.

Also streamchat's own OpenAIProvider (what ``streamchat bench`` uses) against
the relay, and a relay in front of a real upstream server (the wire server).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import streamchat
from streamchat import ScriptedProvider
from streamchat.providers.openai import OpenAIProvider
from streamchat.providers.scripted import DEFAULT_TEXT, tokenize
from streamchat.relay import ClientKey, RelayConfig, UsageLog, create_app
from streamchat.relay.testing import ServedRelay
from streamchat.testing.wire_server import WireServer, text_reply

KEY = "relay-client-key-7Hq2Lx9Pz"
MESSAGES = [{"role": "user", "content": "Why stream?"}]


@pytest.fixture(scope="module")
def usage() -> io.StringIO:
    return io.StringIO()


@pytest.fixture(scope="module")
def relay(usage: io.StringIO) -> Iterator[ServedRelay]:
    provider = ScriptedProvider(ttft=0.02, tokens_per_s=2000, reasoning="Think first.")
    config = RelayConfig(keys=(ClientKey("alice", KEY),), limits=streamchat.relay.Limits(requests_per_minute=1000))
    with ServedRelay(create_app(provider, config, usage_log=UsageLog(usage))) as served:
        yield served


@pytest.fixture
def client(relay: ServedRelay) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=relay.base_url, api_key=KEY, max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(relay: ServedRelay) -> Any:
    c = openai.AsyncOpenAI(base_url=relay.base_url, api_key=KEY, max_retries=0)
    yield c
    await c.close()


def usage_lines(usage: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in usage.getvalue().splitlines()]


def test_sync_sdk_streams_text_reasoning_and_usage(client: openai.OpenAI, usage: io.StringIO) -> None:
    text, reasoning, finish, seen_usage, ids = [], [], None, None, set()
    with client.chat.completions.create(
        model="scripted", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ) as stream:
        for chunk in stream:
            ids.add(chunk.id)
            if chunk.usage is not None:
                seen_usage = chunk.usage
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            text.append(delta.content or "")
            reasoning.append(getattr(delta, "reasoning_content", None) or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(text) == DEFAULT_TEXT and "".join(reasoning) == "Think first."
    assert finish == "stop" and len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-")
    expected = len(tokenize(DEFAULT_TEXT)) + len(tokenize("Think first."))
    assert seen_usage is not None and seen_usage.completion_tokens == expected
    line = usage_lines(usage)[-1]
    assert line["key_id"] == "alice" and line["finish_reason"] == "stop" and line["status"] == 200
    assert "prompt" not in line and "Why stream?" not in usage.getvalue(), "prompts are not logged unless asked"
    assert line["completion_tokens"] == seen_usage.completion_tokens and line["ttft_s"] > 0


def test_sync_sdk_without_include_usage_gets_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="scripted", messages=MESSAGES, stream=True, max_tokens=3))
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Stream"  # two reasoning tokens, one of text


def test_sync_sdk_non_streamed(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="scripted", messages=MESSAGES, max_tokens=1000)
    choice = completion.choices[0]
    assert choice.message.content == DEFAULT_TEXT and choice.finish_reason == "stop"
    assert getattr(choice.message, "reasoning_content", None) == "Think first."
    assert completion.usage is not None and completion.usage.total_tokens == completion.usage.completion_tokens


def test_models_list(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["scripted"]


def test_sdk_errors_keep_their_types(client: openai.OpenAI, relay: ServedRelay) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert "not served here; available: scripted" in nf.value.message
    with pytest.raises(openai.BadRequestError) as br:
        client.chat.completions.create(model="scripted", messages=MESSAGES, max_tokens=5000)
    assert br.value.code == "max_tokens_too_large"
    bad = openai.OpenAI(base_url=relay.base_url, api_key="wrong-key-wrong-key-1", max_retries=0)
    with bad, pytest.raises(openai.AuthenticationError) as auth:
        bad.models.list()
    assert auth.value.code == "invalid_api_key"


async def test_async_sdk_streams(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="scripted", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text = []
    async with stream:
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
    assert "".join(text) == DEFAULT_TEXT


async def test_async_sdk_non_streamed_and_models(aclient: openai.AsyncOpenAI) -> None:
    completion = await aclient.chat.completions.create(model="scripted", messages=MESSAGES, max_tokens=4)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "Streaming"  # two tokens of reasoning, two of text
    assert [m.id async for m in aclient.models.list()] == ["scripted"]


async def test_the_async_sdk_closing_early_frees_the_stream_slot(aclient: openai.AsyncOpenAI, relay: ServedRelay) -> None:
    limiter = relay.app.state.relay.limiter
    stream = await aclient.chat.completions.create(model="scripted", messages=MESSAGES, stream=True)
    async for _ in stream:
        break
    await stream.close()
    import asyncio

    for _ in range(100):
        if limiter.streams == 0:
            break
        await asyncio.sleep(0.02)
    assert limiter.streams == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_streamchats_own_openai_provider_measures_through_the_relay(relay: ServedRelay, mode: str) -> None:
    """What ``streamchat bench`` does when pointed at ``streamchat serve``."""
    with OpenAIProvider("scripted", base_url=relay.base_url, api_key=KEY) as provider:
        if mode == "sync":
            with streamchat.stream(provider, "hi") as s:
                s.until_done()
        else:
            async with streamchat.astream(provider, "hi") as s:
                await s.until_done()
            await provider.aclose()
    assert s.finish_reason == "stop" and s.text == DEFAULT_TEXT and s.reasoning == "Think first."
    timings = s.timings
    assert timings.token_source == "server" and timings.output_tokens == s.usage.completion_tokens  # type: ignore[union-attr]
    assert timings.ttft_s is not None and timings.ttft_s >= 0.02 and timings.output_chunks > 40


def test_a_relay_in_front_of_an_upstream_openai_server() -> None:
    """The relay's provider is an OpenAI-compatible URL; its key goes upstream, never to the client."""
    upstream_key = "sk-upstream-" + "Zr8Kq1Wm4Tn7Yb2"
    with WireServer(text_reply(["Hello", ",", " relay"])) as wire:
        provider = OpenAIProvider("test-model", base_url=wire.url, api_key=upstream_key)
        config = RelayConfig(keys=(ClientKey("alice", KEY),))
        out = io.StringIO()
        with (
            ServedRelay(create_app(provider, config, usage_log=UsageLog(out))) as served,
            openai.OpenAI(base_url=served.base_url, api_key=KEY, max_retries=0) as sdk,
            sdk.chat.completions.with_streaming_response.create(
                model="test-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            ) as raw,
        ):
            body = raw.read().decode()
            headers = dict(raw.headers)
        provider.close()
    assert wire.requests[0].headers["authorization"] == f"Bearer {upstream_key}"
    assert wire.requests[0].json()["messages"] == MESSAGES
    assert '"content":"Hello"' in body and body.rstrip().endswith("data: [DONE]")
    assert upstream_key not in body + json.dumps(headers) + out.getvalue()


def test_prompts_are_logged_only_when_asked() -> None:
    out = io.StringIO()
    config = RelayConfig(keys=(ClientKey("alice", KEY),), log_prompts=True)
    with ServedRelay(create_app(ScriptedProvider(ttft=0, tokens_per_s=0), config, usage_log=UsageLog(out))) as served:
        import httpx2

        response = httpx2.post(served.url + "/v1/stream", json={"prompt": "Why stream?", "system": "Be brief."},
                               headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    assert json.loads(out.getvalue())["prompt"] == "system: Be brief.\nuser: Why stream?"
