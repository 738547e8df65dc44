"""Knobs a stream takes: time limits, the retry policy, the clock."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from .errors import ProviderError, StreamTimeout, TimeoutPhase


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Time limits in seconds; ``None`` switches one off."""

    connect: float | None = 10.0
    first_token: float | None = 60.0
    """From the request until the first output (reasoning counts)."""
    idle: float | None = 30.0
    """The longest gap between two chunks once output has started."""
    total: float | None = 600.0

    def read_limit(self) -> float | None:
        """The socket read timeout that backs up the stream's own deadlines."""
        limits = [x for x in (self.first_token, self.idle, self.total) if x is not None]
        return min(limits) if limits else None

    def deadline(self, start_ns: int, last_chunk_ns: int | None) -> tuple[int, TimeoutPhase, float] | None:
        """The next deadline (clock ns), which limit it is, and the limit."""
        found: list[tuple[int, TimeoutPhase, float]] = []
        if self.total is not None:
            found.append((start_ns + int(self.total * 1e9), "total", self.total))
        if last_chunk_ns is None:
            if self.first_token is not None:
                found.append((start_ns + int(self.first_token * 1e9), "first_token", self.first_token))
        elif self.idle is not None:
            found.append((last_chunk_ns + int(self.idle * 1e9), "idle", self.idle))
        return min(found) if found else None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries happen only before any output reached the caller, so nothing is sent twice."""

    max_retries: int = 2
    backoff_s: float = 0.5
    """The first wait; it doubles each time, with jitter, up to ``max_backoff_s``."""
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0
    """A ``Retry-After`` longer than this is not waited for: the error is returned."""
    jitter: float = 0.25

    def delay(self, error: ProviderError, retries_done: int, rng: random.Random | None = None) -> float | None:
        """Seconds to wait before trying again, or None to give up."""
        if retries_done >= self.max_retries or not error.retryable or isinstance(error, StreamTimeout):
            return None
        after = error.retry_after
        if after is not None:
            return float(after) if after <= self.max_retry_after_s else None
        base = min(self.max_backoff_s, self.backoff_s * 2.0**retries_done)
        return base * (1 - self.jitter * (rng or random).random())


NO_RETRY = RetryPolicy(max_retries=0)


class Clock(Protocol):
    """Where time comes from; inject a fake one in tests."""

    def now_ns(self) -> int: ...

    def sleep(self, seconds: float, wake: threading.Event | None = None) -> bool:
        """Wait ``seconds``, or less if ``wake`` is set; return whether it was."""

    async def asleep(self, seconds: float) -> None: ...


class SystemClock:
    """``perf_counter_ns``, and real sleeps."""

    now_ns = staticmethod(time.perf_counter_ns)

    def sleep(self, seconds: float, wake: threading.Event | None = None) -> bool:
        if wake is None:
            time.sleep(seconds)
            return False
        return wake.wait(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
