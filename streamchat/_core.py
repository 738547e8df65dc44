"""The decisions every stream makes, shared by the sync and async shells (no I/O).

It stamps chunks, turns them into events, keeps the :class:`StreamState`,
decides whether a failure is retried (only while nothing has been received),
and closes every stream with exactly one :class:`Finish`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ._chunks import ChunkDecoder
from ._events import Error, Finish, FinishReason, StreamEvent
from ._state import StreamState
from .errors import ProviderError, StreamDropped, StreamTimeout, TimeoutPhase
from .messages import ChatRequest
from .options import Clock, RetryPolicy, Timeouts
from .providers.base import Provider

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",
    "end_turn": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


class Core:
    """State and rules of one stream; the shells do the waiting."""

    def __init__(
        self,
        provider: Provider,
        request: ChatRequest,
        timeouts: Timeouts,
        retry: RetryPolicy,
        clock: Clock,
    ) -> None:
        self.provider = provider
        self.request = request
        self.timeouts = timeouts
        self.retry = retry
        self.clock = clock
        self.state = StreamState(0)
        self.started = False
        self.finished = False
        self.cancel_requested = False
        self.timed_out: tuple[TimeoutPhase, float] | None = None
        self.last_chunk_ns: int | None = None
        self._decoder = ChunkDecoder()
        self._retries = 0
        self._pending: list[StreamEvent] = []
        self._finish_lock = threading.Lock()

    # -- the life of a stream -------------------------------------------------
    def start(self) -> None:
        """Mark the request start."""
        self.started = True
        self.state.request_start_ns = self.clock.now_ns()

    def on_headers(self, headers_ns: int | None) -> None:
        if headers_ns is not None:
            self.state.headers_ns = headers_ns

    def on_chunk(self, chunk: Mapping[str, Any]) -> bool:
        """Decode one chunk; True if it produced events to hand out."""
        t = self.clock.now_ns()
        self.last_chunk_ns = t
        events = self._decoder.feed(chunk, t)
        if not events:
            return False
        apply = self.state.apply
        for event in events:
            apply(event)
        self._pending = events
        return True

    def on_end(self) -> None:
        """The source is exhausted: finish, or fail if it never said it was done."""
        if self.cancel_requested or self.timed_out:
            raise self.interruption()
        t = self.clock.now_ns()
        events = self._decoder.flush(t)
        for event in events:
            self.state.apply(event)
        reason = self._decoder.finish_reason
        if reason is None:
            self._pending = events
            raise StreamDropped("the stream ended without a finish reason or [DONE]: the answer may be cut short")
        self._pending = events
        self._finish(_FINISH.get(reason, "stop"), t)

    def interruption(self) -> ProviderError:
        """The error that explains why the source stopped, when we stopped it."""
        if self.timed_out:
            return StreamTimeout(*self.timed_out)
        return StreamDropped("cancelled")

    def retry_delay(self, error: ProviderError) -> float | None:
        """Seconds before trying again, or None. Never once anything was received."""
        if self.state.has_output or self.cancel_requested or self.finished:
            return None
        delay = self.retry.delay(error, self._retries)
        found = self.deadline()
        if delay is not None and found is not None and self.clock.now_ns() + int(delay * 1e9) >= found[0]:
            # the next try could only start after the time limit: report the real cause now
            return None
        if delay is not None:
            self._retries += 1
            self.state.attempts += 1
            self.state.headers_ns = None
            self._decoder = ChunkDecoder()
        return delay

    def fail(self, error: ProviderError) -> None:
        """End the stream with an error event; the partial text stays."""
        t = self.clock.now_ns()
        streamed = self.state.has_output
        message = self.provider.redact(error.message)
        event = Error(error, message, t, streamed, error.retryable and not streamed)
        self.state.apply(event)
        self._pending.append(event)
        self._finish("error", t)

    def cancel(self) -> None:
        """Record that the caller stopped the stream (nothing more is handed out)."""
        self._pending = []
        if not self.started:
            self.start()
        self._finish("cancelled", self.clock.now_ns(), emit=False)

    def _finish(self, reason: FinishReason, t: int, emit: bool = True) -> None:
        with self._finish_lock:
            if self.finished:
                return
            self.finished = True
            event = Finish(reason, t)
            self.state.apply(event)
        if emit:
            self._pending.append(event)

    # -- handing events out ---------------------------------------------------
    def pop(self) -> StreamEvent | None:
        """The next event to hand out, if any is waiting."""
        if self._pending:
            return self._pending.pop(0)
        return None

    def deadline(self) -> tuple[int, TimeoutPhase, float] | None:
        """When the current wait must end, and which limit that is."""
        last = self.last_chunk_ns if self.state.has_output else None
        return self.timeouts.deadline(self.state.request_start_ns, last)
