"""The benchmark's arithmetic and inputs, checked by hand: percentiles, token splits, goodput, merging, prompts, loads."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from streamchat.bench import (
    BenchConfig,
    ChunkRecord,
    Concurrency,
    Rate,
    RequestResult,
    Targets,
    builtin_prompts,
    load_prompts,
    parse_loads,
    synthetic_prompts,
)
from streamchat.bench.load import arrivals
from streamchat.bench.stats import (
    chunk_merging,
    goodput,
    paint_lags,
    percentile,
    split_tokens,
    summarize,
    summarize_level,
)
from streamchat.errors import ConfigError
from streamchat.timing import Timings


def timings(offsets: list[float], tokens: int | None = None, source: str = "server", ttft: float | None = None) -> Timings:
    first = offsets[0] if offsets else None
    return Timings(
        request_start_ns=0, headers_s=0.001, ttft_s=first if ttft is None else ttft, ttfo_s=first,
        e2e_s=offsets[-1] if offsets else None, duration_s=(offsets[-1] + 0.001) if offsets else None,
        output_tokens=len(offsets) if tokens is None else tokens, token_source=source,  # type: ignore[arg-type]
        chunk_offsets_s=tuple(offsets),
    )


def request(offsets: list[float], per_chunk: list[int] | None = None, *, source: str = "server",
            reason: str = "stop", index: int = 0, kind: str | None = None) -> RequestResult:
    per_chunk = per_chunk or [1] * len(offsets)
    t = timings(offsets, sum(per_chunk), source)
    chunks = tuple(ChunkRecord(o, n, 3 * n) for o, n in zip(offsets, per_chunk, strict=True))
    return RequestResult(index, 0, 0.0, 0.0, 0.0, t, chunks, "split_by_characters", reason, kind)  # type: ignore[arg-type]


# -- percentiles and summaries --------------------------------------------------------
def test_percentile_is_numpys_linear_interpolation() -> None:
    rng = random.Random(3)
    for n in (1, 2, 7, 100, 1001):
        xs = sorted(rng.expovariate(3.0) for _ in range(n))
        for q in (0, 1, 50, 90, 99, 100):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12, abs=1e-15)
    assert math.isnan(percentile([], 50))


def test_summary_of_known_values_and_of_nothing() -> None:
    s = summarize([4, None, 1, 3, 2])
    assert s is not None
    assert (s.n, s.mean, s.p50, s.min, s.max) == (4, 2.5, 2.5, 1.0, 4.0)
    assert s.p90 == pytest.approx(3.7) and s.p99 == pytest.approx(3.97)
    assert summarize([]) is None and summarize([None]) is None


# -- tokens per chunk ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        (4, [5, 1, 9, 2], (1, 1, 1, 1)),          # one token per chunk stays exactly one, whatever the text
        (12, [3, 3, 3, 3], (3, 3, 3, 3)),         # merged evenly
        (7, [1, 1, 10], (1, 1, 5)),               # the rest goes by weight
        (2, [1, 1, 1], (1, 1, 0)),                # fewer tokens than chunks: no invented tokens
        (6, [0, 0, 0], (2, 2, 2)),                # no weights at all: even
        (0, [1, 2], (0, 0)),
        (5, [], ()),
    ],
)
def test_split_tokens(total: int, weights: list[int], expected: tuple[int, ...]) -> None:
    got = split_tokens(total, weights)
    assert got == expected
    assert sum(got) == (total if weights else 0)


# -- goodput ----------------------------------------------------------------------------------
def test_targets_parse_vllm_style_milliseconds() -> None:
    t = Targets.parse(["ttft:500", "tpot:50,e2e:3000"])
    assert (t.ttft_s, t.tpot_s, t.e2e_s) == (0.5, 0.05, 3.0)
    assert t.label() == "TTFT ≤ 500 ms, TPOT ≤ 50 ms, E2E ≤ 3000 ms"


@pytest.mark.parametrize("spec", ["ttft", "ttft:", "ttft:-5", "speed:10", "ttft:abc", "ttft:0"])
def test_bad_target_is_named(spec: str) -> None:
    with pytest.raises(ConfigError, match=f"bad goodput target '{spec}'"):
        Targets.parse([spec])


def test_goodput_counts_completed_requests_within_every_target() -> None:
    fast = request([0.1, 0.12, 0.14])       # TTFT 100 ms, TPOT 20 ms
    slow_start = request([0.6, 0.62, 0.64])  # TTFT 600 ms
    slow_decode = request([0.1, 0.3, 0.5])   # TPOT 200 ms
    failed = request([0.1, 0.12], reason="error", kind="StreamDropped")
    one_token = request([0.2])               # no TPOT: that target is met
    g = goodput([fast, slow_start, slow_decode, failed, one_token], Targets(ttft_s=0.5, tpot_s=0.05), duration_s=2.0)
    assert (g.good, g.share, g.per_s) == (2, 0.4, 1.0)


# -- chunk merging -----------------------------------------------------------------------------
def test_merged_chunks_are_flagged_from_the_token_counts() -> None:
    steady = [request([0.1 + 0.03 * k for k in range(20)], [3] * 20) for _ in range(3)]
    m = chunk_merging(steady)
    assert m.counted and m.tokens_per_chunk == 3.0 and m.merged and not m.bursty
    assert m.histogram == ((3, 60),) and m.multi_token_share == 1.0
    assert "tokens per chunk" in m.notes()[0]


def test_bursts_show_a_buffering_proxy() -> None:
    offsets = [0.1 + 0.05 * (k // 4) + 0.0001 * (k % 4) for k in range(24)]  # groups of 4, 50 ms apart
    m = chunk_merging([request(offsets)])
    assert m.bursty and not m.merged and m.burst_share == pytest.approx(18 / 23)
    assert any("buffers" in note for note in m.notes())


def test_an_answer_that_comes_all_at_once_is_not_streaming() -> None:
    m = chunk_merging([request([0.5, 0.5001, 0.5002, 0.5003])])
    assert m.unstreamed


def test_chunk_counts_cannot_show_merging() -> None:
    m = chunk_merging([request([0.1, 0.2, 0.3], source="chunks")])
    assert not m.counted and m.tokens_per_chunk is None and not m.merged
    assert any("come from chunks" in note for note in m.notes())


# -- what the screen shows ------------------------------------------------------------------------
def test_paint_lag_follows_the_coalescer() -> None:
    # 20 frames/s: a paint at most every 50 ms; what waits is painted when its turn comes, or at the end.
    lags = paint_lags([0.0, 0.01, 0.02, 0.06, 0.2], end_s=0.21, rate=20)
    assert lags == pytest.approx([0.0, 0.04, 0.03, 0.04, 0.0])
    assert paint_lags([0.0, 0.01], end_s=0.02, rate=20) == pytest.approx([0.0, 0.01])  # the end paints at once
    assert paint_lags([0.0, 0.001], end_s=None, rate=0) == [0.0, 0.0]


def test_level_summary_throughput_and_errors() -> None:
    ok = [request([0.1, 0.2], index=i) for i in range(3)]
    bad = [request([0.1], reason="error", index=3, kind="ConnectError"), request([], reason="cancelled", index=4, kind="cancelled")]
    s = summarize_level([*ok, *bad], duration_s=2.0, targets=Targets(e2e_s=1.0), loop_lags=[0.001, 0.002], loop_cpu_s=0.5)
    assert (s.sent, s.completed) == (5, 3)
    assert s.errors == {"ConnectError": 1, "cancelled": 1}
    assert s.request_throughput == 1.5 and s.output_throughput == 3.0
    assert s.ttft is not None and s.ttft.p50 == pytest.approx(0.1)
    assert s.itl is not None and s.itl.n == 3
    assert s.loop_cpu == 0.25 and s.goodput is not None and s.goodput.good == 3
    assert s.token_sources == {"server": 3}


# -- loads ------------------------------------------------------------------------------------------
def test_parse_loads() -> None:
    assert parse_loads("1, 4,16") == (Concurrency(1), Concurrency(4), Concurrency(16))
    assert parse_loads("0.5,inf", rate=True, max_concurrency=8) == (Rate(0.5, 8), Rate(math.inf, 8))
    assert [load.label for load in parse_loads("2,inf", rate=True)] == ["2/s", "inf/s"]


@pytest.mark.parametrize(
    ("text", "rate", "message"),
    [
        ("-1", True, "rate must be a positive number of requests per second, not -1"),
        ("0", True, "rate must be a positive number"),
        ("0", False, "concurrency must be a whole number of at least 1, not 0"),
        ("1.5", False, "concurrency must be a whole number of at least 1, not 1.5"),
        ("four", False, "bad load 'four'"),
        (" , ", False, "no load given"),
    ],
)
def test_bad_loads_say_what_is_wrong(text: str, rate: bool, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_loads(text, rate=rate)


def test_poisson_arrivals_have_the_asked_rate() -> None:
    gen = arrivals(20.0, random.Random(1))
    times = [next(gen) for _ in range(4001)]
    assert times[0] == 0.0 and times == sorted(times)
    assert 4000 / times[-1] == pytest.approx(20.0, rel=0.05)
    infinite = arrivals(math.inf, random.Random(1))
    assert [next(infinite) for _ in range(3)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"requests": 0}, "the number of requests must be at least 1, not 0"),
        ({"requests": None}, "give a number of requests or a duration"),
        ({"duration_s": -1.0}, "the duration must be a positive number of seconds, not -1.0"),
        ({"warmup": -1}, "warmup must be 0 or more"),
        ({"loads": ()}, "at least one load level"),
        ({"prompts": ()}, "the prompt set is empty"),
        ({"max_tokens": 0}, "max_tokens must be at least 1"),
        ({"loads": (Rate(math.inf),), "requests": None, "duration_s": 5.0}, "an infinite rate sends everything at once"),
    ],
)
def test_bad_config_says_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BenchConfig(**kwargs)  # type: ignore[arg-type]


def test_config_takes_one_load_and_lists() -> None:
    assert BenchConfig(loads=Concurrency(2)).loads == (Concurrency(2),)  # type: ignore[arg-type]
    assert BenchConfig(loads=[Rate(1.0)]).loads == (Rate(1.0),)  # type: ignore[arg-type]


# -- prompts ------------------------------------------------------------------------------------------
def test_builtin_prompts() -> None:
    prompts = builtin_prompts()
    assert len(prompts) == 16 and len({p.text for p in prompts}) == 16
    assert all(p.source == "builtin" and p.messages[-1].role == "user" for p in prompts)


def test_prompt_files(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("first\n\n  second  \n")
    assert [p.text for p in load_prompts(tmp_path / "p.txt")] == ["first", "second"]
    lines = ['"plain"', '{"prompt": "with system", "system": "be brief"}',
             '{"messages": [{"role": "user", "content": "as messages"}]}', ""]
    (tmp_path / "p.jsonl").write_text("\n".join(lines))
    got = load_prompts(tmp_path / "p.jsonl")
    assert [p.text for p in got] == ["plain", "with system", "as messages"]
    assert got[1].messages[0].role == "system"
    (tmp_path / "p.json").write_text(json.dumps(["a", {"prompt": "b"}]))
    assert [p.text for p in load_prompts(tmp_path / "p.json")] == ["a", "b"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "no prompt file at .*missing.txt"),
        ("empty.txt", "\n\n", "holds no prompts"),
        ("bad.jsonl", '"ok"\n{not json\n', r"bad.jsonl:2: not a JSON value"),
        ("shape.jsonl", '{"text": "x"}\n', r"shape.jsonl:1: expected a string"),
        ("blank.jsonl", '"   "\n', r"blank.jsonl:1: the prompt is empty"),
        ("obj.json", '{"a": 1}', "expected a JSON list"),
    ],
)
def test_bad_prompt_files_name_the_problem(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_prompts(tmp_path / name)


def test_synthetic_prompts_estimate_or_exact_length() -> None:
    rough = synthetic_prompts(8, 200, seed=1)
    assert len({p.text for p in rough}) == 8 and all(p.source == "synthetic" and not p.tokens_exact for p in rough)
    assert all(abs(len(p.text) / 4 - 200) <= 10 for p in rough)
    words = synthetic_prompts(3, 50, seed=1, count_tokens=lambda text: len(text.split()))
    assert all(p.tokens_exact and p.tokens == 50 and len(p.text.split()) == 50 for p in words)
    assert synthetic_prompts(2, 64, seed=5) == synthetic_prompts(2, 64, seed=5)
    with pytest.raises(ConfigError, match="at least 16 tokens"):
        synthetic_prompts(1, 4)


def test_importing_the_benchmark_pulls_in_no_optional_dependency() -> None:
    import subprocess
    import sys

    code = "import sys, streamchat.bench, streamchat.cli.bench; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True).stdout.split())
    assert not loaded & {"matplotlib", "openai", "httpx2", "numpy", "pandas", "llama_cpp", "gradio"}
