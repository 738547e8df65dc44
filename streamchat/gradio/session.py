"""Per-session and per-provider bookkeeping for chat UIs: pure, no Gradio import.

- :class:`ChatSession`: one browser session's live streams, so that Stop can
  close them itself at once (a sync generator in Gradio can only be closed
  after its current ``next()`` returns), and the memory of its rate limit.
- :class:`Turns`: queue positions for a provider that answers one request at a
  time (the embedded model), so a waiting user sees a position, not a failure.
- :class:`Limits` and :func:`check_input`: the input length limit and the
  per-session rate limit, each refused with a message that says what to do.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from .._stream import AsyncStream, Stream
from ..errors import ConfigError
from ..options import Clock, SystemClock

LiveStream = Stream | AsyncStream


class InputRejected(ConfigError):
    """A message the UI refused before sending anything; the message says why."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What a chat UI accepts; ``None`` switches a limit off."""

    max_input_chars: int | None = 8000
    max_requests: int | None = None
    """Requests per session per ``window_s``."""
    window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_input_chars is not None and self.max_input_chars < 1:
            raise ConfigError(f"max_input_chars must be at least 1, not {self.max_input_chars}")
        if self.max_requests is not None and self.max_requests < 1:
            raise ConfigError(f"max_requests must be at least 1, not {self.max_requests}")
        if self.window_s <= 0:
            raise ConfigError(f"window_s must be positive, not {self.window_s}")


class ChatSession:
    """One user's session: the streams answering now, and when they asked."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self._live: list[LiveStream] = []
        self._stop_requested = False
        self._asked: deque[int] = deque()
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: object) -> ChatSession:
        # gr.State deep-copies its initial value for each session: give each a fresh one.
        return ChatSession(self.clock)

    @property
    def busy(self) -> bool:
        """Whether an answer is streaming."""
        return bool(self._live)

    def begin(self) -> None:
        """A new request is on its way: forget an earlier Stop."""
        self._stop_requested = False

    def attach(self, stream: LiveStream) -> bool:
        """Track a stream until :meth:`detach`; False if Stop came first (close it)."""
        with self._lock:
            self._live.append(stream)
            return not self._stop_requested

    def detach(self, stream: LiveStream) -> None:
        with self._lock:
            if stream in self._live:
                self._live.remove(stream)

    async def stop(self) -> int:
        """Close every live stream now (the upstream sees it); return how many there were."""
        with self._lock:
            self._stop_requested = True
            live = list(self._live)
        for stream in live:
            if isinstance(stream, AsyncStream):
                await stream.aclose()
            else:
                stream.close()
        return len(live)

    def allow(self, limits: Limits) -> float | None:
        """Count a request against the rate limit; None if allowed, else seconds to wait."""
        if limits.max_requests is None:
            return None
        now = self.clock.now_ns()
        window = int(limits.window_s * 1e9)
        with self._lock:
            while self._asked and now - self._asked[0] >= window:
                self._asked.popleft()
            if len(self._asked) >= limits.max_requests:
                return (self._asked[0] + window - now) * 1e-9
            self._asked.append(now)
        return None


def check_input(message: str, limits: Limits, session: ChatSession | None = None) -> None:
    """Refuse a message the UI must not send, with a message that says what to do.

    Checks run cheapest first and nothing is counted against the rate limit
    unless the message is otherwise fine.
    """
    if not message.strip():
        raise InputRejected("The message is empty: type a question first.")
    if limits.max_input_chars is not None and len(message) > limits.max_input_chars:
        raise InputRejected(
            f"The message has {len(message):,} characters; this app takes at most "
            f"{limits.max_input_chars:,}. Shorten it and send it again (your text is still in the box)."
        )
    if session is not None:
        if session.busy:
            raise InputRejected("An answer is still streaming: wait for it or press Stop, then send again.")
        wait = session.allow(limits)
        if wait is not None:
            raise InputRejected(
                f"Too many requests: this app takes {limits.max_requests} per {limits.window_s:g} s "
                f"per session. Try again in {max(1, round(wait))} s (your text is still in the box)."
            )


class Turns:
    """Tickets in arrival order for a provider that serves one request at a time."""

    def __init__(self) -> None:
        self._next = 0
        self._live: list[int] = []
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            ticket = self._next
            self._next += 1
            self._live.append(ticket)
            return ticket

    def ahead(self, ticket: int) -> int:
        """How many earlier tickets are still being served or waiting."""
        with self._lock:
            return sum(1 for t in self._live if t < ticket)

    def done(self, ticket: int) -> None:
        with self._lock:
            if ticket in self._live:
                self._live.remove(ticket)
