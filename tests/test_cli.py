"""``streamchat chat`` as a person runs it: a real process, real servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamchat.testing.wire_server import Reply, WireServer, chunk, data, error_reply, sleep, text_reply

KEY = "sk-cli-" + "k" * 32


def chat(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamchat.cli", "chat", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def test_scripted_answer_and_summary_line() -> None:
    done = chat("--scripted", "hi")
    assert done.returncode == 0
    assert done.stdout.startswith("Streaming sends each token")
    (summary,) = done.stderr.strip().splitlines()
    assert summary.startswith("TTFT 0.2") and summary.endswith("· stop") and "tok/s" in summary


def test_events_are_json_lines_ending_with_metrics() -> None:
    done = chat("--scripted", "--events", "hi")
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert {r["type"] for r in rows} == {"text", "usage", "finish", "metrics"}
    metrics = rows[-1]
    assert metrics["type"] == "metrics" and metrics["finish_reason"] == "stop"
    assert {"ttft_s", "e2e_s", "output_tokens", "tokens_per_s", "finish_reason"} <= metrics.keys()
    assert all(0 <= r["t"] < 5 for r in rows[:-1])


def test_openai_compatible_server() -> None:
    with WireServer(text_reply(["Hel", "lo"])) as srv:
        done = chat("--base-url", srv.url, "--model", "test-model", "--api-key", KEY, "hi")
        assert done.returncode == 0 and done.stdout == "Hello\n"
        assert srv.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_wrong_key_one_line_error_and_no_key_anywhere() -> None:
    with WireServer(error_reply(401, f"Incorrect API key provided: {KEY}")) as srv:
        done = chat("--base-url", srv.url, "--model", "test-model", "--api-key", KEY, "hi")
    assert done.returncode == 1
    assert "refused the API key (HTTP 401)" in done.stderr
    assert "Traceback" not in done.stderr
    assert KEY not in done.stdout + done.stderr and KEY[5:] not in done.stderr


def test_unreachable_host() -> None:
    done = chat("--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--retries", "0", "hi")
    assert done.returncode == 1
    assert "could not connect to 127.0.0.1:9" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scripted", "   "], "the prompt is empty"),
        (["--base-url", "http://x/v1", "hi"], "--model is required"),
        (["--base-url", "ftp://x", "--model", "m", "hi"], "base_url must start with http"),
        (["--replay", "/nonexistent.jsonl", "hi"], "no recording at"),
        (["--model-path", "/nonexistent.gguf", "hi"], "no model file at"),
    ],
)
def test_bad_input_one_clear_line(args: list[str], message: str) -> None:
    done = chat(*args)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_stops_upstream_keeps_partial_text() -> None:
    steps = (data(chunk(role="assistant", content="")), data(chunk("partial answer")), sleep(30))
    with WireServer(Reply(steps=steps)) as srv:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamchat.cli", "chat", "--base-url", srv.url, "--model", "test-model", "hi"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        assert proc.stdout.read(len("partial answer")) == "partial answer"
        sent = time.perf_counter_ns()
        proc.send_signal(signal.SIGINT)
        record = srv.wait_closed(timeout=5)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert record.client_closed_ns is not None and record.client_closed_ns - sent < 1e9
    assert out == "\n" and "cancelled" in err and "Traceback" not in err


def test_record_then_replay(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    first = chat("--scripted", "--record", str(path), "hi")
    again = chat("--replay", str(path), "--speed", "10", "hi")
    assert first.returncode == again.returncode == 0
    assert again.stdout == first.stdout


def test_embedded_model_by_default() -> None:
    done = chat("What is 2 + 2? Answer with a number.", "--max-tokens", "12", "--temperature", "0")
    assert done.returncode == 0, done.stderr
    assert "4" in done.stdout
    assert "TTFT" in done.stderr


def test_prompt_from_stdin() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamchat.cli", "chat", "--scripted", "--events"],
        input="hello from a pipe", capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0 and json.loads(done.stdout.splitlines()[-1])["finish_reason"] == "stop"


def test_interactive_chat_keeps_history() -> None:
    import pty

    with WireServer(text_reply(["Hel", "lo"])) as srv:
        pid, fd = pty.fork()
        if pid == 0:  # the child: a real terminal, so the chat is interactive
            os.execv(sys.executable, [sys.executable, "-m", "streamchat.cli", "chat", "--base-url", srv.url, "--model", "test-model"])
        output = b""

        def read_until(marker: bytes, count: int, limit: float = 20) -> None:
            nonlocal output
            end = time.monotonic() + limit
            while output.count(marker) < count and time.monotonic() < end:
                try:
                    output += os.read(fd, 4096)
                except OSError:
                    break

        read_until(b"> ", 1)
        os.write(fd, b"first question\n")
        read_until(b"> ", 2)
        os.write(fd, b"second question\n")
        read_until(b"> ", 3)
        os.write(fd, b"\x04")  # Ctrl-D quits
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert output.count(b"Hello") == 2 and output.count(b"tok/s") == 2
    assert os.waitstatus_to_exitcode(status) == 0
    second = srv.requests[1].json()["messages"]
    assert [(m["role"], m["content"]) for m in second] == [
        ("user", "first question"), ("assistant", "Hello"), ("user", "second question")
    ]
