"""The failure matrix, terminal column: ``streamchat chat`` on a real pseudo-terminal.

One interactive session for the whole module, as a person would keep it open:
each drill asks once (faulted), then asks again (must be complete). Ctrl-C is a
real ``\\x03`` typed into the terminal, turned into SIGINT by the line discipline.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from streamchat.faults.matrix import DRILLS, LIMIT_S, Drill, expect
from streamchat.testing.fault_rig import RIG_KEY, RIG_MODEL, FaultRig

_ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")
PROMPT = "> "


class Terminal:
    """``streamchat chat`` in interactive mode, on a pseudo-terminal we type into."""

    def __init__(self, url: str) -> None:
        argv = [
            sys.executable, "-m", "streamchat.cli", "chat", "--base-url", url, "--model", RIG_MODEL,
            "--first-token-timeout", str(LIMIT_S), "--idle-timeout", str(LIMIT_S),
        ]
        env = {**os.environ, "OPENAI_API_KEY": RIG_KEY, "COLUMNS": "200"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: its controlling terminal is the pty
            os.execve(sys.executable, argv, env)
        self.seen = b""
        self.arrivals: list[tuple[int, int]] = []  # (perf_counter_ns, len(seen) after the read)

    def read_until(self, needle: str, timeout: float = 20.0, start: int = 0) -> int:
        """Read until ``needle`` appears after byte ``start``; returns where it ends."""
        want = needle.encode()
        deadline = time.monotonic() + timeout
        while (at := self.seen.find(want, start)) < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not shown within {timeout} s; terminal shows:\n{self.text(start)}")
            if select.select([self.fd], [], [], left)[0]:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # EIO: the child has gone
                    data = b""
                if not data:
                    raise AssertionError(f"the chat ended while waiting for {needle!r}:\n{self.text(start)}")
                self.seen += data
                self.arrivals.append((time.perf_counter_ns(), len(self.seen)))
        return at + len(want)

    def shown_at(self, end: int) -> int:
        """When byte ``end`` had arrived (perf_counter_ns)."""
        return next(t for t, n in self.arrivals if n >= end)

    def text(self, start: int = 0, end: int | None = None) -> str:
        raw = _ANSI.sub(b"", self.seen[start:end])
        return raw.decode("utf-8", "replace").replace("\r\n", "\n")

    def type(self, keys: str) -> int:
        """Type ``keys``; returns perf_counter_ns just after."""
        os.write(self.fd, keys.encode())
        return time.perf_counter_ns()

    def close(self) -> None:
        os.write(self.fd, b"\x04")  # Ctrl-D quits the chat
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                break
            with_output = select.select([self.fd], [], [], 0.1)[0]
            if with_output:
                try:
                    self.seen += os.read(self.fd, 65536)
                except OSError:
                    pass
        else:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


class Answer:
    """One exchange as it appeared on screen: the answer line, then stderr's lines."""

    def __init__(self, screen: str) -> None:
        lines = screen.split("\n")
        self.text = lines[1].removesuffix("^C")  # lines[0] is the prompt's echo; the tty echoes Ctrl-C
        self.rest = "\n".join(lines[2:])
        self.screen = screen


def ask(term: Terminal, prompt: str = "hi", stop_when: str | None = None) -> tuple[Answer, int, int]:
    """Type a prompt; returns the answer, when the prompt was sent, and the Ctrl-C time (0 if none)."""
    start = len(term.seen)
    sent_ns = term.type(prompt + "\n")
    stop_ns = 0
    if stop_when is not None:
        echo = term.read_until(prompt + "\r\n", start=start)
        term.read_until(stop_when, start=echo)
        time.sleep(0.3)  # well inside the stall
        stop_ns = term.type("\x03")
    end = term.read_until("\n" + PROMPT, start=start + len(prompt))
    return Answer(term.text(start, end - len(PROMPT))), sent_ns, stop_ns


@pytest.fixture(scope="module")
def rig() -> Iterator[FaultRig]:
    with FaultRig() as rig:
        yield rig


@pytest.fixture(scope="module")
def term(rig: FaultRig) -> Iterator[Terminal]:
    term = Terminal(rig.url)
    term.read_until(PROMPT)
    yield term
    term.close()
    assert RIG_KEY not in term.text()


@pytest.mark.parametrize("drill", DRILLS, ids=[d.name for d in DRILLS])
def test_terminal(rig: FaultRig, term: Terminal, drill: Drill) -> None:
    want = expect(drill, "terminal")
    partial = rig.text_after(4)
    with rig.drill(drill):
        stop_when = partial if drill.name == "stop_in_stall" else None
        answer, sent_ns, stop_ns = ask(term, stop_when=stop_when)
    shown = {"complete": rig.full_text, "kept": partial, "none": ""}[want.partial]
    assert answer.text == shown, answer.screen
    # the terminal has no backoff setting: the default 0.5 s, doubling, fits one retry in the 1 s limit
    attempts = 2 if want.retried else 1
    if drill.name == "rate_limited":
        attempts = 3  # Retry-After 0.2 s fits twice
    if drill.name == "unreachable":  # nothing listens, so nothing counts: the summary line says it
        assert f"· {attempts} attempts · error" in answer.rest, answer.screen
    else:
        assert rig.attempts == attempts, answer.screen
    if drill.name == "stop_in_stall":
        closed = rig.wait_upstream_closed().client_closed_ns
        assert closed is not None and 0 <= (closed - stop_ns) / 1e6 < 200
        assert "[stopped]" in answer.rest and "cancelled" in answer.rest
    elif want.told:
        assert "streamchat: error: " in answer.rest and want.told in answer.rest, answer.screen
    else:
        assert "error" not in answer.rest and answer.rest.rstrip().endswith("· stop"), answer.screen
    if drill.name in ("stall", "slow_first_token"):
        # due: the last chunk shown (idle), or the prompt sent (first token)
        error_ns = term.shown_at(term.seen.rfind(b"streamchat: error"))
        due_ns = sent_ns if drill.name == "slow_first_token" else term.shown_at(term.seen.rfind(partial.encode()) + len(partial))
        # the lower bound has room: "due" is when this process read the partial text, a little late
        assert LIMIT_S - 0.2 <= (error_ns - due_ns) / 1e9 <= LIMIT_S + 0.5
    assert RIG_KEY not in answer.screen

    rig.arm("")
    again, _, _ = ask(term)
    assert again.text == rig.full_text and rig.attempts == 1, again.screen
    sent = rig.upstream.requests[-1].json()["messages"]
    if want.partial == "kept":  # the partial answer stays in the conversation, once
        assert sent[-3:] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": partial},
                             {"role": "user", "content": "hi"}]
    elif want.partial == "none" and len(sent) > 1:  # the unanswered question is not sent again
        assert sent[-2] == {"role": "assistant", "content": rig.full_text}, sent
