"""Usage accounting: one JSON line per request, refused, finished or abandoned alike.

A line carries the key's id (never the key), the model, prompt and completion
tokens and where each count came from, TTFT, duration, and how the request
ended, ``client_disconnected`` included: it is written when the stream ends,
however it ends. The prompt is left out unless ``log_prompts`` is set.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One request, as the usage log keeps it."""

    request_id: str
    key_id: str | None
    endpoint: str
    model: str | None
    status: int
    """The HTTP status sent (101 for a WebSocket prompt)."""
    finish_reason: str | None
    """stop, length, tool_calls, content_filter, error, cancelled (the client sent stop),
    client_disconnected, server_shutdown, client_stalled; None when refused before streaming."""
    prompt_tokens: int = 0
    prompt_tokens_source: str = "estimate"
    """``server`` (the provider said), or ``estimate`` (about four characters a token)."""
    completion_tokens: int = 0
    completion_tokens_source: str = "chunks"
    """``server``, ``tokenizer`` (counted by the embedded model) or ``chunks`` (a lower bound)."""
    ttft_s: float | None = None
    duration_s: float | None = None
    attempts: int = 1
    """Requests sent to the provider for this answer (more than 1: the relay retried before the first token)."""
    error: str | None = None
    """The error's code (``rate_limit_requests``, ``upstream_timeout``, …), never a provider's text."""
    prompt: str | None = None
    time: str = ""

    def to_json(self) -> str:
        row = asdict(self)
        if row["prompt"] is None:
            del row["prompt"]
        return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def utc_now(wall: Callable[[], float] = time.time) -> str:
    """ISO 8601 UTC with milliseconds, e.g. ``2026-09-01T12:00:00.123Z``."""
    t = wall()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class Sink(Protocol):
    """Where lines go: a text file, standard error, a ``StringIO`` in tests."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class UsageLog:
    """Writes usage lines to a text stream, one whole line at a time, from any thread."""

    def __init__(self, out: Sink, *, owned: bool = False) -> None:
        self._out = out
        self._owned = owned
        self._lock = threading.Lock()

    @classmethod
    def open(cls, where: str | None) -> UsageLog:
        """``-`` is standard error, None discards, anything else is a file appended to."""
        if where is None:
            return cls(_Discard())
        if where == "-":
            return cls(sys.stderr)
        path = Path(where)
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path.open("a", encoding="utf-8", buffering=1), owned=True)

    def write(self, record: UsageRecord) -> None:
        line = record.to_json() + "\n"
        with self._lock:
            self._out.write(line)
            self._out.flush()

    def close(self) -> None:
        if self._owned:
            self._out.close()


class _Discard:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
