"""``streamchat serve`` as a real process: start-up, keys, bad flags, and a shutdown that lets answers finish."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from streamchat.providers.scripted import DEFAULT_TEXT

KEY = "cli-test-key-0123456789ab"


class Server:
    """A ``streamchat serve`` process; ``url`` comes from its start-up banner."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamchat.cli", "serve", "--port", "0", *args],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = ""

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def started(self, timeout: float = 30.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "".join(self.stderr)
                continue
            found = re.search(r"· (http://127\.0\.0\.1:\d+)$", line.strip())
            if found:
                self.url = found.group(1)
                return self
        raise TimeoutError("no banner: " + "".join(self.stderr))

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    made: list[Server] = []
    yield made
    for server in made:
        server.stop()


def start(servers: list[Server], *args: str, env: dict[str, str] | None = None) -> Server:
    servers.append(Server(*args, env=env))
    return servers[-1].started()


def test_serves_the_sdk_and_lets_a_running_answer_finish_on_sigterm(servers: list[Server], tmp_path: Path) -> None:
    log = tmp_path / "usage.jsonl"
    server = start(servers, "--scripted", "--usage-log", str(log), "--grace", "20")
    banner = "".join(server.stderr)
    assert "auth             none" in banner and "OpenAI base URL" in banner
    received: list[str] = []
    first = threading.Event()

    def read() -> None:
        with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as client:
            for chunk in client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hi"}], stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
                    first.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert first.wait(15), "".join(server.stderr)
    server.proc.send_signal(signal.SIGTERM)
    port = int(server.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 5
    while True:  # soon no longer listening: a load balancer moves on
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.02)
    assert reader.is_alive(), "the answer should still be streaming"
    reader.join(30)
    assert "".join(received) == DEFAULT_TEXT, "the running answer was cut"
    assert server.wait() == 0
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert (line["finish_reason"], line["key_id"], line["completion_tokens"]) == ("stop", "anonymous", 49)


def test_streams_still_running_after_the_grace_period_end_with_an_error(servers: list[Server], tmp_path: Path) -> None:
    log = tmp_path / "usage.jsonl"
    server = start(servers, "--scripted", "--usage-log", str(log), "--grace", "0.3")
    events: list[str] = []
    with httpx2.stream("GET", server.url + "/v1/events", params={"prompt": "hi"}, timeout=30) as response:
        for line in response.iter_lines():
            events.append(line)
            if line == "event: text" and len(events) < 10:
                server.proc.send_signal(signal.SIGTERM)
    assert server.wait() == 0
    text = "\n".join(events)
    assert "event: error" in text and '"code":"server_shutdown"' in text and "event: done" in text
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert line["finish_reason"] == "server_shutdown" and 0 < line["completion_tokens"] < 49


def test_keys_from_the_environment_are_required_and_never_printed(servers: list[Server]) -> None:
    server = start(servers, "--scripted", "--host", "127.0.0.1", env={"STREAMCHAT_RELAY_KEYS": f"alice:{KEY}"})
    assert "1 key(s): alice" in "".join(server.stderr)
    assert httpx2.get(server.url + "/v1/models").status_code == 401
    models = httpx2.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "scripted"
    server.proc.send_signal(signal.SIGINT)
    assert server.wait() == 0
    assert KEY not in "".join(server.stderr)


@pytest.mark.parametrize(
    ("args", "env", "status", "message"),
    [
        (["--scripted", "--host", "0.0.0.0"], {}, 2, "refusing to serve 0.0.0.0 without keys"),
        (["--scripted", "--rpm", "lots"], {}, 2, "--rpm: rpm must be a positive integer or 'off', not 'lots'"),
        (["--scripted", "--keys-file", "/nonexistent/keys"], {}, 2, "cannot read the keys file /nonexistent/keys"),
        (["--scripted"], {"STREAMCHAT_RELAY_KEYS": "alice:short"}, 2, "shorter than 16 characters"),
        (["--scripted", "--cors-origin", "example.org"], {}, 2, "CORS origin 'example.org' must look like"),
        (["--scripted", "--scripted", "--base-url", "http://x/v1"], {}, 2, "choose one of"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(args: list[str], env: dict[str, str], status: int, message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "streamchat.cli", "serve", "--port", "0", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})
    assert done.returncode == status, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("streamchat: error: ") and message in done.stderr
    assert "short" not in done.stderr.replace("shorter", "")


def test_a_busy_port_is_reported(servers: list[Server]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "streamchat.cli", "serve", "--scripted", "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr


