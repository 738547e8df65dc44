"""The benchmark with the real embedded model: exact token counts, queueing inside TTFT, blocking versus streamed."""

from __future__ import annotations

import pytest

from streamchat.bench import BenchConfig, Concurrency, run_bench, synthetic_prompts
from streamchat.providers.local import LocalProvider


@pytest.fixture(scope="module")
def local() -> LocalProvider:
    return LocalProvider(seed=3)


def test_the_embedded_model_under_load(local: LocalProvider) -> None:
    prompts = synthetic_prompts(2, 24, count_tokens=local.count_tokens)
    assert all(p.tokens == 24 and p.tokens_exact for p in prompts)
    config = BenchConfig(loads=(Concurrency(2),), requests=2, warmup=1, max_tokens=4, temperature=0,
                         prompts=prompts, compare_blocking=1)
    result = run_bench(local, config)
    (level,) = result.levels
    assert level.summary.completed == 2 and level.summary.token_sources == {"tokenizer": 2}
    for r in level.requests:
        assert r.finish_reason == "length" and r.timings.output_tokens == 4  # counted as sampled: exact
        assert sum(c.tokens for c in r.chunks) == 4
    # One generation at a time: of two requests sent together, the second waits for the first to end.
    first, second = sorted(level.requests, key=lambda r: r.timings.ttft_s or 0)
    assert abs(first.sent_s - second.sent_s) < 0.05
    assert first.timings.e2e_s is not None and second.timings.ttft_s is not None
    assert second.timings.ttft_s >= first.timings.e2e_s
    comparison = result.blocking
    assert comparison is not None
    (pair,) = comparison.pairs
    assert pair.error is None and pair.blocking_tokens == 4 and pair.blocking_s is not None and pair.blocking_s > 0
    assert pair.streamed is not None and pair.streamed.output_tokens == 4
