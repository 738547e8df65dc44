"""Coalescing: the rule with a fake clock, then both twins on real streams."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

import pytest

from streamchat import Fault, ScriptedProvider, astream, stream
from streamchat._coalesce import Coalescer, aframes, frames

MS = 1_000_000


def test_rule_paints_first_update_then_at_most_rate() -> None:
    gate = Coalescer(rate=20)  # every 50 ms
    assert gate.offer(0)
    assert not gate.offer(10 * MS) and gate.pending
    assert gate.wait_s(10 * MS) == pytest.approx(0.04)
    assert not gate.offer(49 * MS)
    assert gate.offer(50 * MS) and not gate.pending
    assert not gate.flush(60 * MS)  # nothing waits
    assert not gate.offer(70 * MS)
    assert gate.flush(71 * MS) and gate.frames == 3


def test_rate_zero_paints_everything() -> None:
    gate = Coalescer(rate=0)
    assert all(gate.offer(i) for i in range(5))
    with pytest.raises(ValueError, match="rate must be"):
        Coalescer(rate=-1)


def fast(n: int = 2000, tps: float = 2000.0) -> ScriptedProvider:
    return ScriptedProvider(" ".join(["tok"] * n), ttft=0.0, tokens_per_s=tps)


def test_sync_frames_bounded_and_final_state_exact() -> None:
    s = stream(fast(), "hi")
    batches = list(frames(s, rate=20))
    seconds = s.timings.duration_s
    assert batches[-1][-1].kind == "finish"
    assert sum(len(b) for b in batches) == len([e for b in batches for e in b])
    assert len(batches) <= seconds * 20 + 3
    assert "".join(e.text for b in batches for e in b if e.kind == "text") == s.text


async def test_async_frames_bounded_flushes_on_time_and_ends_with_finish() -> None:
    # two bursts with a stall between: the text before the stall must be painted during the stall
    provider = ScriptedProvider(" ".join(["tok"] * 400), ttft=0.0, tokens_per_s=2000, faults=[Fault("stall", after_tokens=210, stall_s=0.6)])
    s = astream(provider, "hi")
    painted: list[tuple[float, int]] = []
    started = time.perf_counter()
    async with aclosing(aframes(s, rate=20)) as it:
        async for batch in it:
            painted.append((time.perf_counter() - started, len(s.text)))
            last = batch
    assert last[-1].kind == "finish" and s.finish_reason == "stop"
    before_stall_ends = [n for t, n in painted if t < 0.6]
    assert before_stall_ends[-1] == len(" ".join(["tok"] * 210))
    assert len(painted) <= (painted[-1][0] + 0.1) * 20 + 3


async def test_closing_the_frames_closes_the_stream() -> None:
    s = astream(ScriptedProvider("a b c d e f", ttft=0.0, tokens_per_s=5), "hi")
    async with aclosing(aframes(s)) as it:
        async for _ in it:
            break
    assert s.finish_reason == "cancelled"


async def test_cancelling_the_consumer_cancels_the_stream() -> None:
    s = astream(ScriptedProvider("a b c d e f", ttft=0.0, tokens_per_s=5), "hi")

    async def consume() -> None:
        async with aclosing(aframes(s)) as it:
            async for _ in it:
                pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert s.finish_reason == "cancelled" and s.text
