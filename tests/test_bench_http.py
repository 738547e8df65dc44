"""The benchmark over real HTTP: a loopback OpenAI-compatible server, files written and read back."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from streamchat.bench import BenchConfig, Concurrency, LeanHTTPProvider, PooledOpenAIProvider, Rate, run_bench
from streamchat.bench.report import CSV_COLUMNS, FORMAT
from streamchat.testing.wire_server import (
    Reply,
    Request,
    WireServer,
    chunk,
    data,
    done,
    error_reply,
    sleep,
    text_reply,
    usage_chunk,
)

KEY = "sk-bench-" + "q" * 32
WORDS = [" one", " two", " three", " four", " five", " six", " seven", " eight"]


def strict_json(text: str) -> Any:
    def no_constants(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=no_constants)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_a_sweep_writes_valid_json_csv_and_png(tmp_path: Path) -> None:
    reply = text_reply(WORDS, ttft=0.03, gap=0.004)
    with WireServer(reply) as server:
        provider = LeanHTTPProvider("test-model", base_url=server.url, api_key=KEY)
        config = BenchConfig(loads=(Concurrency(1), Concurrency(4), Rate(50.0)), requests=6, warmup=1)
        result = run_bench(provider, config)
    json_path = result.write_json(tmp_path / "out" / "bench.json")
    csv_path = result.write_csv(tmp_path / "out" / "bench.csv")
    plots = result.plot(tmp_path / "out" / "plots")

    doc = strict_json(json_path.read_text())
    assert doc["format"] == FORMAT and doc["provider"] == "http" and doc["model"] == "test-model"
    assert [level["load"]["label"] for level in doc["levels"]] == ["c=1", "c=4", "50/s"]
    for level in doc["levels"]:
        summary = level["summary"]
        assert summary["sent"] == summary["completed"] == 6 and summary["token_sources"] == {"server": 6}
        assert 0.03 <= summary["ttft"]["p50"] < 0.5
        assert summary["headers"]["p50"] < summary["ttft"]["p50"]
        for req in level["requests"]:
            chunks = req["chunks"]
            assert len(chunks["t_s"]) == len(chunks["tokens"]) == len(chunks["chars"]) == req["output_chunks"] == 8
            assert sum(chunks["tokens"]) == req["output_tokens"] == 8 and chunks["t_s"] == sorted(chunks["t_s"])
            assert chunks["chars"] == [len(w) for w in WORDS]
            assert req["ttft_s"] == chunks["t_s"][0] and req["finish_reason"] == "stop"
    assert len(doc["prompts"]) == 16

    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 18 and tuple(rows[0]) == CSV_COLUMNS
    assert {row["level"] for row in rows} == {"c=1", "c=4", "50/s"}
    assert all(float(row["ttft_s"]) >= 0.03 and row["output_tokens"] == "8" for row in rows)

    assert sorted(p.name for p in plots) == ["gaps.png", "latency_vs_load.png", "timeline.png"]
    for path in plots:
        width, height = png_size(path)
        assert width >= 600 and height >= 250
    from matplotlib.image import imread

    assert imread(plots[0]).std() > 0  # decodes, and is not blank
    text = json_path.read_text() + csv_path.read_text() + result.table()
    assert KEY not in text and KEY[9:20] not in text


def test_without_usage_tokens_come_from_chunks_or_a_tokenizer() -> None:
    reply = text_reply([" alpha beta", " gamma", " delta epsilon zeta"], usage=False)
    with WireServer(reply) as server:
        provider = LeanHTTPProvider("test-model", base_url=server.url)
        plain = run_bench(provider, BenchConfig(requests=2, warmup=0))
        counted = run_bench(provider, BenchConfig(requests=2, warmup=0), tokenizer=lambda text: len(text.split()))
    r = plain.levels[0].requests[0]
    assert r.timings.token_source == "chunks" and r.chunk_tokens == "one_per_chunk" and r.timings.output_tokens == 3
    assert not plain.levels[0].summary.merging.counted
    c = counted.levels[0].requests[0]
    assert c.timings.token_source == "tokenizer" and c.chunk_tokens == "split_by_tokenizer"
    assert c.timings.output_tokens == 6 and [k.tokens for k in c.chunks] == [2, 1, 3]
    t = c.timings
    assert t.tpot_s == pytest.approx((t.e2e_s - t.ttft_s) / 5)  # type: ignore[operator]  # TPOT per counted token
    assert "local tokenizer ×2" in counted.table()


def test_a_server_that_merges_tokens_is_flagged() -> None:
    steps = [data(chunk("", role="assistant")), sleep(0.02)]
    for k in range(6):
        steps += [data(chunk(" a b c")), sleep(0.01)] if k < 5 else [data(chunk(" a b c"))]
    steps += [data(chunk(finish_reason="stop")), data(usage_chunk(10, 18)), done()]
    with WireServer(Reply(steps=tuple(steps))) as server:
        result = run_bench(LeanHTTPProvider("test-model", base_url=server.url), BenchConfig(requests=2, warmup=0))
    merging = result.levels[0].summary.merging
    assert merging.merged and merging.tokens_per_chunk == 3.0 and merging.histogram == ((3, 12),)
    assert "3.0 tokens per chunk" in result.table()


def test_a_buffering_hop_shows_as_bursts() -> None:
    steps = [data(chunk("", role="assistant"))]
    for _ in range(6):  # four chunks at once, every 40 ms: what a buffering proxy delivers
        steps += [sleep(0.04), *[data(chunk(" x")) for _ in range(4)]]
    steps += [data(chunk(finish_reason="stop")), data(usage_chunk(10, 24)), done()]
    with WireServer(Reply(steps=tuple(steps))) as server:
        result = run_bench(LeanHTTPProvider("test-model", base_url=server.url), BenchConfig(requests=2, warmup=0))
    s = result.levels[0].summary
    assert s.merging.bursty and not s.merging.merged
    assert s.itl is not None and s.tpot is not None and s.itl.p50 < 0.25 * s.tpot.p50
    assert "something buffers the stream" in result.table()


def test_server_errors_are_counted_with_redacted_messages() -> None:
    def script(req: Request) -> Reply:
        if req.index % 3 == 1:
            return error_reply(503, f"overloaded, try later (key {KEY})", type_="server_error")
        return text_reply(WORDS[:3])

    with WireServer(script) as server:
        provider = PooledOpenAIProvider("test-model", base_url=server.url, api_key=KEY, connections=2)
        result = run_bench(provider, BenchConfig(loads=(Concurrency(1),), requests=6, warmup=0))
    s = result.levels[0].summary
    assert s.errors == {"ServerError": 2} and s.completed == 4
    table = result.table()
    assert "ServerError ×2" in table and "HTTP 503" in table
    assert KEY not in table and all(KEY not in (r.error or "") for r in result.levels[0].requests)


def test_time_to_headers_is_measured_apart_from_ttft() -> None:
    reply = Reply(steps=text_reply(WORDS[:2], ttft=0.05).steps, headers_delay=0.1)
    with WireServer(reply) as server:
        result = run_bench(PooledOpenAIProvider("test-model", base_url=server.url, connections=1), BenchConfig(requests=2, warmup=0))
    s = result.levels[0].summary
    assert s.headers is not None and s.ttft is not None
    assert 0.1 <= s.headers.p50 < s.ttft.p50 and s.ttft.p50 >= 0.15


def test_streamed_against_blocking_on_the_same_prompts() -> None:
    words = WORDS * 3

    def script(req: Request) -> Reply:
        if req.json().get("stream"):
            return text_reply(words, ttft=0.05, gap=0.005)
        body = {
            "id": "chatcmpl-b", "object": "chat.completion", "created": 1_700_000_000, "model": "test-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": len(words), "total_tokens": 10 + len(words)},
        }
        return Reply(body=body, headers_delay=0.05 + 0.005 * (len(words) - 1))

    with WireServer(script) as server:
        provider = LeanHTTPProvider("test-model", base_url=server.url, api_key=KEY)
        result = run_bench(provider, BenchConfig(requests=1, warmup=0, compare_blocking=3))
        streamed_flags = [r.json()["stream"] for r in server.requests]
        auth = {r.headers["authorization"] for r in server.requests}
    assert streamed_flags.count(False) == 3 and auth == {f"Bearer {KEY}"}
    b = result.blocking
    assert b is not None and all(p.error is None and p.blocking_tokens == 24 for p in b.pairs)
    assert b.streamed_ttft is not None and b.blocking_total is not None and b.ttft_saving is not None
    assert b.streamed_ttft.p50 < 0.1 <= b.blocking_total.p50
    assert b.ttft_saving.p50 > 0.05
    doc = strict_json(json.dumps(__import__("streamchat.bench.report", fromlist=["to_json"]).to_json(result)))
    assert len(doc["blocking"]["pairs"]) == 3 and "first words after" in doc["blocking"]["sentence"]


def test_an_unreachable_server_stops_the_run_at_the_first_request() -> None:
    from streamchat.bench import BenchError

    bad = "http://127.0.0.1:9/v1"
    with pytest.raises(BenchError, match="nothing was measured: could not connect to 127.0.0.1:9"):
        run_bench(LeanHTTPProvider("m", base_url=bad), BenchConfig(requests=3))


@pytest.mark.parametrize("client", ["lean", "sdk"])
def test_one_provider_serves_run_after_run(client: str) -> None:
    # Each run has its own event loop: pooled connections must not outlive it.
    with WireServer(text_reply(WORDS[:3], ttft=0.01)) as server:
        provider = (LeanHTTPProvider("test-model", base_url=server.url) if client == "lean"
                    else PooledOpenAIProvider("test-model", base_url=server.url, connections=2))
        runs = [run_bench(provider, BenchConfig(loads=(Concurrency(2),), requests=4, warmup=1)) for _ in range(3)]
    for result in runs:
        assert result.levels[0].summary.completed == 4 and not result.levels[0].summary.errors
    assert result.provider == ("http" if client == "lean" else "openai")
