"""``streamchat bench`` as people run it: clear errors for bad input, files written, Ctrl-C keeps what was measured."""

from __future__ import annotations

import argparse
import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streamchat.cli.bench import register
from streamchat.testing.wire_server import Reply, Request, WireServer, text_reply

KEY = "sk-clibench-" + "z" * 32


def bench(*argv: str) -> int:
    """The command in this process (only ``bench`` registered, so other commands cannot interfere)."""
    parser = argparse.ArgumentParser(prog="streamchat")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *argv])
    status: int = args.run(args)
    return status


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--base-url", "http://127.0.0.1:9/v1", "--model", "m"], 1,
         "the first request failed, so nothing was measured: could not connect to 127.0.0.1:9"),
        (["--scripted", "--requests", "0"], 2, "the number of requests must be at least 1, not 0"),
        (["--scripted", "--rate", "-1"], 2, "rate must be a positive number of requests per second, not -1"),
        (["--scripted", "--rate", "0"], 2, "rate must be a positive number of requests per second, not 0"),
        (["--scripted", "--concurrency", "0,4"], 2, "concurrency must be a whole number of at least 1, not 0"),
        (["--scripted", "--prompts", "/nonexistent/prompts.txt"], 2, "no prompt file at /nonexistent/prompts.txt"),
        (["--scripted", "--duration", "-5"], 2, "the duration must be a positive number of seconds, not -5.0"),
        (["--scripted", "--goodput", "fast:10"], 2, "bad goodput target 'fast:10'"),
        (["--scripted", "--max-concurrency", "4"], 2, "--max-concurrency goes with --rate"),
        (["--scripted", "--synthetic", "4"], 2, "a synthetic prompt needs at least 16 tokens"),
        (["--scripted", "--extra-body", "{oops"], 2, "--extra-body is not JSON"),
        (["--base-url", "http://127.0.0.1:9/v1"], 2, "--model is required with --base-url"),
        (["--model-path", "/nonexistent.gguf"], 1, "no model file at /nonexistent.gguf"),
        (["--calibrate", "--base-url", "http://127.0.0.1:9/v1"], 2, "--calibrate measures its own scripted source"),
    ],
)
def test_bad_input_gets_one_clear_line(argv: list[str], status: int, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench(*argv, "--no-progress") == status
    out, err = capsys.readouterr()
    assert f"streamchat: error: {message}" in err
    assert "Traceback" not in out + err and out == ""


def test_an_output_path_that_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench("--scripted", "--json", str(tmp_path)) == 2
    assert f"{tmp_path} is a directory: give a file name" in capsys.readouterr().err


def test_calibration_reports_how_far_off_the_measurement_is(capsys: pytest.CaptureFixture[str]) -> None:
    status = bench("--calibrate", "--ttft", "0.2", "--tokens-per-s", "100", "--calibrate-tokens", "10",
                   "--concurrency", "1,32", "--requests", "32", "--duration", "1", "--no-progress")
    out = capsys.readouterr().out
    assert "calibration against the scripted provider, in-process: TTFT 200.0 ms" in out
    assert_calibrated(out, status)


def test_calibration_over_http_with_the_server_in_another_process(capsys: pytest.CaptureFixture[str]) -> None:
    status = bench("--calibrate", "--http", "--ttft", "0.2", "--tokens-per-s", "50", "--calibrate-tokens", "10",
                   "--concurrency", "1,16", "--requests", "16", "--duration", "1", "--no-progress")
    out = capsys.readouterr().out
    assert "calibration against a scripted HTTP server in another process" in out
    assert "http:scripted" in out
    assert_calibrated(out, status)


def assert_calibrated(out: str, status: int) -> None:
    """The calibration table is there, its TTFT p50 errors are small and never early, and the status says the verdict."""
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("c=1 ", "c=16 ", "c=32 "))]
    errors = [float(row[2]) for row in rows if "/" in row]  # the calibration rows: load, n, TTFT p50 / p99 / max
    assert len(errors) == 2 and all(-1.0 <= e <= 10.0 for e in errors), out
    verdict = "yes" if status == 0 else "NO"
    assert f"verdict: within 5 ms or 5% (TTFT and TPOT mean, p50, p90, p99): {verdict}" in out, out


def _script(req: Request) -> Reply:
    words = [" one", " two", " three", " four", " five"]
    if req.json().get("stream"):
        return text_reply(words, ttft=0.02, gap=0.002)
    body = {"id": "b", "object": "chat.completion", "created": 1, "model": "test-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}
    return Reply(body=body, headers_delay=0.03)


def test_a_sweep_as_a_real_process(tmp_path: Path) -> None:
    with WireServer(_script) as server:
        done = subprocess.run(
            [sys.executable, "-m", "streamchat.cli", "bench", "--base-url", server.url, "--model", "test-model",
             "--api-key", KEY, "--concurrency", "1,4", "--requests", "8", "--goodput", "ttft:500", "tpot:50",
             "--compare-blocking", "2", "--out", str(tmp_path)],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("streamchat bench · http:test-model · 16 builtin prompts")
    assert any(line.split()[0] == "c=4" and line.split()[1:3] == ["8", "8"] for line in lines if line.strip())
    assert "goodput targets: TTFT ≤ 500 ms, TPOT ≤ 50 ms" in done.stdout and "streamed vs blocking (2 prompts" in done.stdout
    assert "c=4 [2/2]" in done.stderr and "written:" in done.stderr
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert [len(level["requests"]) for level in doc["levels"]] == [8, 8]
    with (tmp_path / "bench.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 16
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["gaps.png", "latency_vs_load.png", "timeline.png"]
    everything = done.stdout + done.stderr + (tmp_path / "bench.json").read_text() + (tmp_path / "bench.csv").read_text()
    assert KEY not in everything and KEY[12:24] not in everything


def test_ctrl_c_writes_what_was_measured(tmp_path: Path) -> None:
    reply = text_reply([" w"] * 30, ttft=0.02, gap=0.01)  # about 0.3 s an answer
    with WireServer(reply) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamchat.cli", "bench", "--base-url", server.url, "--model", "test-model",
             "--concurrency", "2", "--requests", "1000", "--out", str(tmp_path), "--no-progress"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )
        server.wait_for_requests(1 + 6, timeout=60)  # the warm-up, then at least four measured answers
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        records = [server.wait_closed(i, timeout=10) for i in range(len(server.requests))]
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted:" in err and "requests measured and saved" in err
    assert "* interrupted" in out
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["interrupted"] is True
    (level,) = doc["levels"]
    assert level["interrupted"] is True
    finished = [r for r in level["requests"] if r["finish_reason"] == "stop"]
    cancelled = [r for r in level["requests"] if r["finish_reason"] == "cancelled"]
    assert len(finished) >= 4 and 1 <= len(cancelled) <= 2
    assert all(len(r["chunks"]["t_s"]) == 30 for r in finished)
    with (tmp_path / "bench.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == len(level["requests"])
    assert (tmp_path / "plots" / "timeline.png").stat().st_size > 1000
    assert all(r.closed_event.is_set() for r in records)  # nothing left streaming on the server
