"""The benchmark against the scripted provider, whose timing is known: accuracy, loads, warm-up, errors, stop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from streamchat import Fault, ScriptedProvider
from streamchat.bench import (
    BenchConfig,
    BenchError,
    BenchRun,
    Calibration,
    Concurrency,
    Progress,
    Rate,
    Targets,
    arun_bench,
    calibrate,
    run_bench,
)
from streamchat.bench.load import arrivals
from streamchat.messages import ChatRequest

TOKENS = " tok" * 16


def calibrated(concurrency: int) -> Calibration:
    """A calibration run the machine did not disturb, if one of three is.

    The shared cores sometimes stop this whole process for 100 ms or more; the
    benchmark's own probe sees it as event-loop lag, and then that run measured the
    neighbours, not the client. A slow client would show in every attempt.
    """
    load = Concurrency(concurrency, ramp_s=0.3)  # spread out, so one stall cannot delay every first token
    for _ in range(3):
        cal = calibrate((load,), ttft_s=0.2, tokens_per_s=100, tokens=16, requests=2 * concurrency, duration_s=1.2)
        lag = cal.result.levels[0].summary.loop_lag
        if lag is None or lag.max < 0.05:
            break
    return cal


@pytest.mark.parametrize("concurrency", [1, 64])
def test_measured_values_agree_with_known_timing(concurrency: int) -> None:
    # TTFT 200 ms, then a token every 10 ms: mean, p50 and p90 within 5 ms or 5%. The p99 of a
    # hundred answers is one stall of these shared cores away from its bound, so it gets a
    # wider one here; docs/bench.md has calibration runs with the p99 judged too.
    cal = calibrated(concurrency)
    assert cal.failures(("mean", "p50", "p90")) == (), cal.report()
    (level,) = cal.result.levels
    assert level.summary.ttft is not None and level.summary.ttft.p99 - 0.2 < 0.05, cal.report()
    s = level.summary
    assert s.completed == s.sent >= min(2 * concurrency, 3)
    assert s.ttft is not None and abs(s.ttft.p50 - 0.2) <= 0.005
    assert s.tpot is not None and abs(s.tpot.p50 - 0.01) <= 0.0005
    assert s.itl is not None and abs(s.itl.p50 - 0.01) <= 0.0005
    assert s.token_sources == {"server": s.completed} and s.merging.tokens_per_chunk == 1.0
    assert all(len(r.chunks) == 16 and r.timings.output_tokens == 16 for r in level.requests)
    assert "verdict: within 5 ms or 5%" in cal.report()


def test_concurrency_keeps_n_requests_in_flight() -> None:
    provider = ScriptedProvider(TOKENS, ttft=0.05, tokens_per_s=400)
    result = run_bench(provider, BenchConfig(loads=(Concurrency(4),), requests=12, warmup=0))
    (level,) = result.levels
    assert [r.index for r in level.requests] == list(range(12))
    sent = sorted(r.sent_s for r in level.requests)
    assert max(sent[:4]) < 0.05 and min(sent[4:]) > 0.05  # four at once, then each as a user's answer ends
    for r in level.requests:
        assert r.queue_s == 0.0 and 0.0 <= r.lag_s < 0.05 and r.ok


def test_poisson_arrivals_are_sent_when_due() -> None:
    import random

    provider = ScriptedProvider(" tok" * 4, ttft=0.01, tokens_per_s=1000)
    result = run_bench(provider, BenchConfig(loads=(Rate(40.0),), requests=20, warmup=0, seed=3))
    (level,) = result.levels
    gen = arrivals(40.0, random.Random(3))
    expected = [next(gen) for _ in range(20)]
    assert [r.due_s for r in level.requests] == pytest.approx(expected, abs=1e-6)
    assert all(0.0 <= r.sent_s - r.due_s < 0.1 for r in level.requests)


def test_a_concurrency_cap_turns_into_queueing() -> None:
    provider = ScriptedProvider(" tok" * 4, ttft=0.1, tokens_per_s=1000)
    result = run_bench(provider, BenchConfig(loads=(Rate(float("inf"), max_concurrency=2),), requests=6, warmup=0))
    (level,) = result.levels
    waits = sorted(r.queue_s for r in level.requests)
    assert all(r.due_s == 0.0 for r in level.requests)
    assert waits[:2] == pytest.approx([0.0, 0.0], abs=0.02) and waits[-1] > 0.15  # the last pair waited two turns
    assert level.summary.queue is not None and level.summary.queue.max == waits[-1]


def test_duration_bounds_a_level_and_requests_in_flight_finish() -> None:
    provider = ScriptedProvider(" tok" * 4, ttft=0.1, tokens_per_s=100)
    result = run_bench(provider, BenchConfig(loads=(Concurrency(2),), requests=None, duration_s=0.5, warmup=0))
    (level,) = result.levels
    assert 4 <= len(level.requests) <= 8
    assert all(r.due_s < 0.5 and r.ok for r in level.requests)
    assert level.summary.duration_s > 0.5  # the last answers ran past the end and were kept


def test_warmup_is_sent_but_not_measured() -> None:
    seen: list[ChatRequest] = []
    lock = threading.Lock()

    def text(request: ChatRequest) -> str:
        with lock:
            seen.append(request)
        return TOKENS

    provider = ScriptedProvider(text, ttft=0.01, tokens_per_s=1000)
    loads = (Concurrency(1), Concurrency(2), Concurrency(4))
    result = run_bench(provider, BenchConfig(loads=loads, requests=4, warmup=3))
    assert [len(level.requests) for level in result.levels] == [4, 4, 4]
    # At most one per concurrent user; the run's first goes alone, then the level's warm-up at once.
    assert [level.warmup for level in result.levels] == [1, 2, 3]
    assert len(seen) == 1 + 2 + 3 + 3 * 4


def test_a_failing_first_request_stops_the_run_with_its_reason() -> None:
    provider = ScriptedProvider(faults=[Fault("refuse", message="model 'x' does not exist")])
    with pytest.raises(BenchError, match="the first request failed, so nothing was measured: model 'x' does not exist"):
        run_bench(provider, BenchConfig(requests=3))


def test_errors_are_counted_by_kind_and_partial_output_is_kept() -> None:
    faults = [Fault("server_error", times=1), Fault("drop", after_tokens=3, times=3)]
    provider = ScriptedProvider(TOKENS, ttft=0.01, tokens_per_s=1000, faults=faults)
    result = run_bench(provider, BenchConfig(requests=5, warmup=0))
    (level,) = result.levels
    s = level.summary
    assert (s.sent, s.completed) == (5, 2)
    assert s.errors == {"StreamDropped": 2, "ServerError": 1}
    dropped = [r for r in level.requests if r.error_kind == "StreamDropped"]
    assert all(r.finish_reason == "error" and len(r.chunks) == 3 and "dropped" in (r.error or "") for r in dropped)
    assert "3 not completed: StreamDropped ×2, ServerError ×1" in result.table()


def test_goodput_against_targets() -> None:
    provider = ScriptedProvider(TOKENS, ttft=0.05, tokens_per_s=500)
    strict = run_bench(provider, BenchConfig(requests=3, warmup=0, targets=Targets(ttft_s=0.02)))
    loose = run_bench(provider, BenchConfig(requests=3, warmup=0, targets=Targets(ttft_s=0.5, tpot_s=0.01)))
    assert strict.levels[0].summary.goodput is not None and strict.levels[0].summary.goodput.good == 0
    good = loose.levels[0].summary.goodput
    assert good is not None and good.good == 3 and good.share == 1.0 and good.per_s > 0


def test_merged_chunks_are_seen_in_the_server_counts() -> None:
    provider = ScriptedProvider(TOKENS, ttft=0.01, tokens_per_s=1000, chunk_tokens=4)
    result = run_bench(provider, BenchConfig(requests=2, warmup=0))
    (level,) = result.levels
    assert all(r.chunk_tokens == "split_by_characters" and [c.tokens for c in r.chunks] == [4, 4, 4, 4] for r in level.requests)
    assert level.summary.merging.merged and level.summary.merging.tokens_per_chunk == 4.0
    assert "4.0 tokens per chunk" in result.table()


def test_stop_keeps_what_was_measured() -> None:
    provider = ScriptedProvider(TOKENS, ttft=0.02, tokens_per_s=80)
    updates: list[Progress] = []
    measured = threading.Event()

    def on_progress(p: Progress) -> None:
        updates.append(p)
        if p.phase == "measure" and p.done >= 3:
            measured.set()

    run = BenchRun(provider, BenchConfig(loads=(Concurrency(2), Concurrency(4)), requests=1000), on_progress=on_progress)
    box: list[object] = []
    worker = threading.Thread(target=lambda: box.append(run.run()))
    worker.start()
    assert measured.wait(30)
    run.stop()
    worker.join(10)
    assert not worker.is_alive()
    result = run.result()
    assert result.interrupted and box and box[0] == result
    (level,) = result.levels
    assert level.interrupted and len(level.requests) >= 3
    cancelled = [r for r in level.requests if not r.ok]
    assert cancelled and all(r.finish_reason == "cancelled" and r.error_kind == "cancelled" for r in cancelled)
    assert level.summary.completed == len(level.requests) - len(cancelled) >= 3
    assert updates[-1].phase == "level_done" and "interrupted" in result.table()


async def test_async_twin_and_the_blocking_comparison() -> None:
    provider = ScriptedProvider(TOKENS, ttft=0.03, tokens_per_s=400)
    result = await arun_bench(provider, BenchConfig(requests=2, warmup=0, compare_blocking=2))
    comparison = result.blocking
    assert comparison is not None and len(comparison.pairs) == 2
    ttft, blocking = comparison.streamed_ttft, comparison.blocking_total
    assert ttft is not None and blocking is not None
    assert ttft.p50 == pytest.approx(0.03, abs=0.01)
    assert blocking.p50 == pytest.approx(0.03 + 15 / 400, abs=0.01)  # the whole answer, when its last token is due
    assert comparison.pairs[0].blocking_tokens == 16
    assert "first words after" in comparison.sentence()


def test_a_stop_before_the_start_measures_nothing() -> None:
    run = BenchRun(ScriptedProvider(), BenchConfig(requests=2))
    run.stop()
    result = asyncio.run(run.arun())
    assert result.interrupted and result.levels == ()


def test_progress_reaches_the_end_of_every_level() -> None:
    updates: list[Progress] = []
    provider = ScriptedProvider(" tok" * 3, ttft=0.0, tokens_per_s=0)
    started = time.perf_counter()
    run_bench(provider, BenchConfig(loads=(Concurrency(1), Concurrency(2)), requests=3, warmup=1), on_progress=updates.append)
    assert time.perf_counter() - started < 10
    done = [u for u in updates if u.phase == "level_done"]
    assert [(u.level, u.done, u.total, u.levels) for u in done] == [("c=1", 3, 3, 2), ("c=2", 3, 3, 2)]
    assert next(u.phase for u in updates if u.level_index == 0) == "warmup"


def test_the_progress_bar_repaints_sparingly_and_always_shows_the_end() -> None:
    import io

    from streamchat.bench.report import ProgressPrinter

    out = io.StringIO()
    printer = ProgressPrinter(out, rate=5, bar=True)
    provider = ScriptedProvider(" tok" * 3, ttft=0.0, tokens_per_s=0)
    run_bench(provider, BenchConfig(loads=(Concurrency(4),), requests=200, warmup=0), on_progress=printer)
    frames = out.getvalue().split("\r\x1b[2K")[1:]
    assert 1 <= len(frames) < 50  # 200 updates, repainted at most 5 times a second, plus the end
    assert frames[-1].startswith("c=4 [1/1] ████████████████████ 200/200") and frames[-1].endswith(" s done\n")
    plain = io.StringIO()
    run_bench(provider, BenchConfig(requests=3, warmup=0), on_progress=ProgressPrinter(plain))
    assert plain.getvalue().count("\n") == 1 and "3/3" in plain.getvalue()  # off a terminal: one line per level
