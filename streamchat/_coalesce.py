"""Coalescing: repaint a UI at most N times a second, and always paint the end.

A fast stream (thousands of tokens a second) must neither flood a browser nor
fall behind it. :class:`Coalescer` is the pure rule; :func:`frames` and
:func:`aframes` apply it to a stream and hand out *frames*: the events that
arrived since the last frame. The async twin also paints a pending update when
its time comes even if no new event arrives (so a stall never hides text);
the sync twin can only paint when an event arrives, and at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Generator

from ._events import StreamEvent
from ._stream import AsyncStream, Stream
from .options import Clock, SystemClock

DEFAULT_RATE = 20.0
"""Frames per second: smooth to the eye, cheap for a browser."""


class Coalescer:
    """Decides when to paint; knows nothing of streams or screens."""

    __slots__ = ("frames", "interval_ns", "last_ns", "pending")

    def __init__(self, rate: float = DEFAULT_RATE) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0 (0 paints every update), not {rate}")
        self.interval_ns = int(1e9 / rate) if rate else 0
        self.last_ns: int | None = None
        self.pending = False
        self.frames = 0

    def offer(self, now_ns: int) -> bool:
        """An update arrived: True means paint it now, False that it waits."""
        if self.last_ns is None or now_ns - self.last_ns >= self.interval_ns:
            self._painted(now_ns)
            return True
        self.pending = True
        return False

    def wait_s(self, now_ns: int) -> float | None:
        """Seconds until a waiting update may be painted; None if nothing waits."""
        if not self.pending or self.last_ns is None:
            return None
        return max(0.0, (self.last_ns + self.interval_ns - now_ns) * 1e-9)

    def flush(self, now_ns: int) -> bool:
        """Paint what waits (at the end, or when its time has come)."""
        if not self.pending:
            return False
        self._painted(now_ns)
        return True

    def _painted(self, now_ns: int) -> None:
        self.last_ns = now_ns
        self.pending = False
        self.frames += 1


def frames(stream: Stream, rate: float = DEFAULT_RATE, clock: Clock | None = None) -> Generator[list[StreamEvent], None, None]:
    """The stream's events in frames; the last frame holds the Finish. Closes the stream at the end."""
    clock = clock or SystemClock()
    gate = Coalescer(rate)
    batch: list[StreamEvent] = []
    with stream:
        for event in stream:
            batch.append(event)
            if event.kind == "finish" or gate.offer(clock.now_ns()):
                yield batch
                batch = []
    if batch:
        yield batch


async def aframes(
    stream: AsyncStream, rate: float = DEFAULT_RATE, clock: Clock | None = None
) -> AsyncGenerator[list[StreamEvent], None]:
    """The async twin of :func:`frames`, which also paints a waiting update on time.

    Closing this iterator (``aclosing``, or cancelling its task) closes the
    stream, and so the upstream connection.
    """
    clock = clock or SystemClock()
    gate = Coalescer(rate)
    queue: asyncio.Queue[StreamEvent | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in stream:
                queue.put_nowait(event)
        finally:
            queue.put_nowait(None)

    # Reading happens in its own task: a timed wait must never cancel a read.
    reader = asyncio.create_task(pump())
    getter: asyncio.Future[StreamEvent | None] | None = None
    batch: list[StreamEvent] = []
    try:
        while True:
            # One getter kept across timeouts: wait_for() on 3.11 can swallow a
            # cancellation that lands as the get completes (CPython gh-86296).
            wait = gate.wait_s(clock.now_ns())
            if getter is None and not queue.empty():
                event = queue.get_nowait()  # no await: frames keep pace with the events
            elif getter is None and wait is None:
                event = await queue.get()  # nothing waits to be painted: no timer needed
            else:
                getter = getter or asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter}, timeout=wait)
                if not done:
                    if gate.flush(clock.now_ns()):
                        yield batch
                        batch = []
                    continue
                event, getter = getter.result(), None
            if event is None:
                break
            batch.append(event)
            if event.kind == "finish" or gate.offer(clock.now_ns()):
                gate.pending = False
                yield batch
                batch = []
        if batch:
            yield batch
        await reader
    finally:
        if getter is not None:
            getter.cancel()
        if not reader.done():
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                pass
        await stream.aclose()
