"""Issue #7's failure matrix, benchmark column: every drill through ``run_bench`` and ``streamchat bench``.

One rig (a real server behind the fault proxy) and one ``LeanHTTPProvider``
serve the whole file. Each cell runs one level of one request (concurrency 1,
no warm-up, retries off as the benchmark always runs), then checks what the
benchmark reports where its user reads it: the result, the table, the JSON
and CSV files and the progress line. Then the next run through the same
provider must give the whole answer. The SDK client (``--client sdk``) is
checked against the lean one, and Ctrl-C is a real SIGINT to a
``streamchat bench`` process.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamchat.bench import BenchConfig, BenchResult, BenchRun, Concurrency, LeanHTTPProvider, run_bench
from streamchat.bench.report import ProgressPrinter, to_json
from streamchat.bench.runner import STOPPED
from streamchat.cli.bench import register
from streamchat.faults.matrix import DRILLS, LIMIT_S, Drill, expect
from streamchat.options import Timeouts
from streamchat.testing.fault_rig import RIG_KEY, RIG_MODEL, FaultRig

ROOT = Path(__file__).resolve().parent.parent
BY_NAME = {d.name: d for d in DRILLS}
TIMED = ("stall", "slow_first_token")

KIND = {
    "rate_limit": "RateLimitError", "rate_limited": "RateLimitError", "server_error": "ServerError",
    "server_down": "ServerError", "disconnect": "StreamDropped", "stall": "StreamTimeout",
    "slow_first_token": "StreamTimeout", "malformed": "ProtocolError", "error_event": "UpstreamError",
    "wrong_key": "AuthenticationError", "unknown_model": "ModelNotFoundError", "unreachable": "ConnectError",
    "stop_in_stall": "cancelled",
}
"""The error kind the benchmark counts each failed drill under (the table's ``not completed: KIND ×1``)."""


def config(drill: Drill | None = None) -> BenchConfig:
    """One level, one request, no warm-up; the drills' limits for the timed drills."""
    timeouts = Timeouts(first_token=LIMIT_S, idle=LIMIT_S) if drill is not None and drill.name in TIMED else Timeouts()
    return BenchConfig(loads=(Concurrency(1),), requests=1, warmup=0, timeouts=timeouts)


@pytest.fixture(scope="module")
def rig() -> Iterator[FaultRig]:
    with FaultRig() as started:
        yield started


@pytest.fixture(scope="module")
def lean(rig: FaultRig) -> LeanHTTPProvider:
    """The surface instance: the default (lean) client, reused run after run."""
    return LeanHTTPProvider(RIG_MODEL, base_url=rig.url, api_key=RIG_KEY)


def wait_for_stall(rig: FaultRig, mark: int, timeout: float = 30.0) -> None:
    """Until the proxy holds the stream after its 4 chunks, then a moment for the client to read them.

    A benchmark shows nothing per chunk, so the proxy's own log is the signal;
    the result's text then proves the 4 chunks had arrived.
    """
    deadline = time.monotonic() + timeout
    while not any("stalled" in line for line in rig.proxy.log_lines[mark:]):
        assert time.monotonic() < deadline, "the proxy never stalled the stream"
        time.sleep(0.01)
    time.sleep(0.3)  # the stall lasts 30 s and no time limit is near


def stop_during_stall(rig: FaultRig, provider: LeanHTTPProvider, progress: ProgressPrinter) -> tuple[BenchResult, int]:
    """Run, and stop the run the way a UI's stop button does (``BenchRun.stop()`` from another thread)."""
    mark = len(rig.proxy.log_lines)
    run = BenchRun(provider, config(), on_progress=progress)
    out: list[BenchResult] = []
    worker = threading.Thread(target=lambda: out.append(run.run()), daemon=True)
    worker.start()
    wait_for_stall(rig, mark)
    stop_ns = time.perf_counter_ns()
    run.stop()
    worker.join(10)
    assert out, "the run did not return after stop()"
    return out[0], stop_ns


def shown(result: BenchResult, tmp_path: Path) -> tuple[str, dict[str, Any], str, list[dict[str, str]]]:
    """What the user reads: the table, the JSON file (parsed and raw), the CSV rows."""
    json_text = result.write_json(tmp_path / "bench.json").read_text()
    csv_text = result.write_csv(tmp_path / "bench.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert json.loads(json_text) == to_json(result)
    return result.table(), json.loads(json_text), json_text + csv_text, rows


def expected_text(rig: FaultRig, partial: str) -> str:
    return {"complete": rig.full_text, "kept": rig.text_after(4), "none": ""}[partial]


@pytest.mark.parametrize("drill", DRILLS, ids=[d.name for d in DRILLS])
def test_drill(drill: Drill, rig: FaultRig, lean: LeanHTTPProvider, tmp_path: Path,
               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    want = expect(drill, "bench")
    bar = io.StringIO()
    progress = ProgressPrinter(bar, bar=True)
    started = time.perf_counter()
    if drill.name == "stop_in_stall":
        rig.arm(drill.spec)
        result, stop_ns = stop_during_stall(rig, lean, progress)
        closed = rig.wait_upstream_closed()
        assert closed.client_closed_ns is not None and 0 <= closed.client_closed_ns - stop_ns < 200e6
    else:
        with rig.drill(drill):
            result = run_bench(lean, config(drill), on_progress=progress)
    wall = time.perf_counter() - started
    attempts = rig.attempts

    (level,) = result.levels
    (r,) = level.requests
    table, doc, raw, rows = shown(result, tmp_path)
    (req,) = doc["levels"][0]["requests"]
    text = expected_text(rig, want.partial)

    # the partial text, kept exactly (a duplicate from a retry would show), and its tokens
    assert r.text == req["text"] == text
    chunks = rig.tokens[: len(text.split())]
    assert req["chunks"]["chars"] == [len(t) for t in chunks] and rows[0]["output_chunks"] == str(len(chunks))
    assert r.timings.output_tokens == req["output_tokens"] == sum(req["chunks"]["tokens"]) == len(chunks)
    assert req["token_source"] == ("server" if want.partial == "complete" else "chunks")

    # never retried: the benchmark sends each request once
    assert not want.retried and r.timings.attempts == req["attempts"] == 1
    assert attempts == (0 if drill.name == "unreachable" else 1)  # nothing listens: the proxy sees nothing

    # what the user is told: the request counted under its kind, the message in the notes, JSON and CSV
    if want.told:
        kind = KIND[drill.name]
        assert not r.ok and r.error_kind == req["error_kind"] == rows[0]["error_kind"] == kind
        assert r.error is not None and want.told in r.error and req["error"] == r.error == rows[0]["error"]
        assert doc["levels"][0]["summary"]["errors"] == {kind: 1} and doc["levels"][0]["summary"]["completed"] == 0
        assert f"c=1: 1 not completed: {kind} ×1 (first: {r.error})" in table
        assert "1/1 · 1 error" in bar.getvalue()
        assert r.finish_reason == ("cancelled" if drill.name == "stop_in_stall" else "error")
    else:
        assert r.ok and r.finish_reason == "stop" and r.error is None and r.error_kind is None
        assert "not completed" not in table and "error" not in bar.getvalue()
        summary = doc["levels"][0]["summary"]
        if drill.name == "headers_delay":  # the benchmark's numbers show the fault
            assert summary["headers"]["p50"] >= 0.3 and summary["ttft"]["p50"] >= 0.3
        elif drill.name == "ttft_delay":
            assert summary["ttft"]["p50"] >= 0.3 > summary["headers"]["p50"]
        elif drill.name == "throttle":
            assert summary["decode_tokens_per_s"]["p50"] <= 44

    # each time limit fires within its limit + 0.5 s of when it became due, as the benchmark measured it
    if drill.name in TIMED:
        t = r.timings
        assert t.duration_s is not None and req["duration_s"] == t.duration_s
        due = t.chunk_offsets_s[-1] if drill.name == "stall" else 0.0
        assert LIMIT_S - 0.01 <= t.duration_s - due < LIMIT_S + 0.5, (t.duration_s, due)
        phase = "next chunk (timeouts.idle)" if drill.name == "stall" else "first token (timeouts.first_token)"
        assert phase in (r.error or "")
    assert wall < 10  # a 30 s stall never holds the run

    if drill.name == "stop_in_stall":  # marked stopped; what was measured is kept
        assert result.interrupted and level.interrupted and doc["interrupted"] and doc["levels"][0]["interrupted"]
        assert r.error == STOPPED and "c=1*" in table and "* interrupted" in table
        assert r.timings.chunk_offsets_s and r.timings.duration_s is not None

    for blob in (table, raw, bar.getvalue(), repr(result), caplog.text):
        assert RIG_KEY not in blob and RIG_KEY[7:] not in blob

    # after any fault the next request works, through the same provider
    rig.arm("")
    again = run_bench(lean, config(drill))
    (next_one,) = again.levels[0].requests
    assert next_one.ok and next_one.text == rig.full_text and rig.attempts == 1


# -- the command line: the SDK client agrees; Ctrl-C during a stall ------------------------------


def bench_cli(*argv: str) -> int:
    """``streamchat bench`` in this process (only ``bench`` registered)."""
    parser = argparse.ArgumentParser(prog="streamchat")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *argv])
    status: int = args.run(args)
    return status


def one_request(rig: FaultRig, *more: str) -> list[str]:
    return ["--base-url", rig.url, "--model", RIG_MODEL, "--api-key", RIG_KEY,
            "--concurrency", "1", "--requests", "1", "--warmup", "0", *more]


@pytest.mark.parametrize("name", ["disconnect", "rate_limited"])
def test_the_sdk_client_agrees_with_the_lean_one(name: str, rig: FaultRig, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    drill = BY_NAME[name]
    want = expect(drill, "bench")
    seen = {}
    for client in ("lean", "sdk"):
        rig.arm(drill.spec)
        path = tmp_path / f"{client}.json"
        status = bench_cli(*one_request(rig, "--client", client, "--json", str(path)))
        out, err = capsys.readouterr()
        (req,) = json.loads(path.read_text())["levels"][0]["requests"]
        assert want.told in req["error"] and f"(first: {req['error']})" in out and "1 error" in err
        assert "no request completed at c=1" in err
        assert RIG_KEY not in out + err + path.read_text()
        seen[client] = (status, rig.attempts, req["finish_reason"], req["error_kind"], req["text"],
                        req["output_tokens"], req["chunks"]["chars"], req["attempts"], req["error"])
    assert seen["lean"] == seen["sdk"]
    assert seen["sdk"][:5] == (1, 1, "error", KIND[name], expected_text(rig, want.partial))

    rig.arm("")
    path = tmp_path / "next.json"
    assert bench_cli(*one_request(rig, "--client", "sdk", "--json", str(path))) == 0
    (req,) = json.loads(path.read_text())["levels"][0]["requests"]
    assert req["finish_reason"] == "stop" and req["text"] == rig.full_text and rig.attempts == 1
    capsys.readouterr()


def test_ctrl_c_during_a_stall(rig: FaultRig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real SIGINT to ``streamchat bench``: upstream closed within 200 ms, the partial measurement written."""
    drill = BY_NAME["stop_in_stall"]
    rig.arm(drill.spec)
    mark = len(rig.proxy.log_lines)
    json_path, csv_path = tmp_path / "bench.json", tmp_path / "bench.csv"
    argv = ["streamchat", "bench", *one_request(rig, "--json", str(json_path), "--csv", str(csv_path))]
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamchat.cli", *argv[1:]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, cwd=ROOT,
    )
    try:
        wait_for_stall(rig, mark)
        stop_ns = time.perf_counter_ns()
        proc.send_signal(signal.SIGINT)
        closed = rig.wait_upstream_closed(timeout=5)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert closed.client_closed_ns is not None and 0 <= closed.client_closed_ns - stop_ns < 200e6
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted: 1 request measured and saved" in err
    assert "c=1*" in out and f"1 not completed: cancelled ×1 (first: {STOPPED})" in out and "* interrupted" in out
    doc = json.loads(json_path.read_text())
    (req,) = doc["levels"][0]["requests"]
    assert doc["interrupted"] and doc["levels"][0]["interrupted"]
    assert req["finish_reason"] == "cancelled" and req["error_kind"] == "cancelled" and req["error"] == STOPPED
    assert req["text"] == rig.text_after(4) and req["output_tokens"] == 3 and len(req["chunks"]["t_s"]) == 3
    with csv_path.open(newline="") as f:
        (row,) = csv.DictReader(f)
    assert row["finish_reason"] == "cancelled" and row["output_tokens"] == "3"
    assert RIG_KEY not in out + err + json_path.read_text() + csv_path.read_text()
    assert rig.attempts == 1

    rig.arm("")
    assert bench_cli(*one_request(rig, "--json", str(tmp_path / "next.json"))) == 0
    (req,) = json.loads((tmp_path / "next.json").read_text())["levels"][0]["requests"]
    assert req["text"] == rig.full_text and rig.attempts == 1
    capsys.readouterr()
