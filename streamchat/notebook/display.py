"""``show()`` / ``ashow()``: an answer that grows in place in a cell's output.

The output is one display (``display_id``) updated at most ``rate`` times a
second, then once more with the exact final state and the latency line. Only
standard ``display_data`` / ``update_display_data`` messages are sent, which
JupyterLab, Notebook 7 and VS Code all understand.

``show()`` takes a sync :class:`Stream`. It reads the stream in a worker
thread and paints from the calling thread, so a stall never hides text that has
already arrived, and Jupyter's interrupt (the ■ button) lands where it should:
the stream is closed (the upstream connection too), the partial answer stays on
screen, and the ``KeyboardInterrupt`` goes on to the caller.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Mapping
from contextlib import aclosing
from typing import Any, Protocol

from .._coalesce import DEFAULT_RATE, Coalescer, aframes
from .._events import StreamEvent
from .._state import StreamState
from .._stream import AsyncStream, Stream
from ..errors import ConfigError
from ..options import Clock, SystemClock
from .render import Snapshot, to_bundle

_JOIN_S = 2.0
"""How long ``show()`` waits for the reading thread once the stream is closed."""


class Surface(Protocol):
    """Where paints go: a cell's display, a test's list, a benchmark's counter."""

    def update(self, bundle: Mapping[str, str], *, final: bool) -> None:
        """Show ``bundle`` (MIME type to content) in place of what was shown before."""


class DisplaySurface:
    """One IPython display, updated in place.

    In a kernel, the first update displays and the rest send
    ``update_display_data``. Without a kernel (a script, terminal IPython),
    where nothing can be redrawn, only the final text is printed.
    """

    def __init__(self) -> None:
        self._handle: Any = None
        self.updates = 0

    def update(self, bundle: Mapping[str, str], *, final: bool) -> None:
        from IPython import get_ipython
        from IPython.display import display

        shell = get_ipython()
        if shell is None or getattr(shell, "kernel", None) is None:
            if final:
                print(bundle.get("text/plain", ""))
            return
        if self._handle is None:
            self._handle = display(dict(bundle), raw=True, display_id=True)  # type: ignore[no-untyped-call]
        else:
            self._handle.update(dict(bundle), raw=True)
        self.updates += 1


class _Painter:
    """Paints snapshots, skipping one identical to the last."""

    def __init__(self, surface: Surface) -> None:
        self.surface = surface
        self.last: dict[str, str] | None = None

    def paint(self, snap: Snapshot, *, final: bool = False) -> None:
        bundle = to_bundle(snap)
        if bundle != self.last or final:
            self.surface.update(bundle, final=final)
            self.last = bundle


def _pump(stream: Stream, out: queue.SimpleQueue[StreamEvent | BaseException | None]) -> None:
    try:
        for event in stream:
            out.put(event)
    except BaseException as exc:  # handed to the painting thread, which raises it there
        out.put(exc)
    finally:
        out.put(None)


def show(
    stream: Stream,
    *,
    rate: float = DEFAULT_RATE,
    surface: Surface | None = None,
    clock: Clock | None = None,
) -> Stream:
    """Render ``stream`` into the cell's output as it arrives; return it once it has ended.

    At most ``rate`` paints a second (20 by default), then the exact final
    state: the answer, reasoning apart, any error, and the latency line.
    """
    if isinstance(stream, AsyncStream):
        raise ConfigError("show() takes a Stream from stream(); for an AsyncStream from astream() use: await ashow(s)")
    if not isinstance(stream, Stream):
        raise ConfigError(f"show() takes a Stream from stream(), not {type(stream).__name__}")
    clock = clock or SystemClock()
    painter = _Painter(surface or DisplaySurface())
    gate = Coalescer(rate)
    # The painter's own copy of what arrived: the stream's is written by the reading thread.
    seen = StreamState(0)
    events: queue.SimpleQueue[StreamEvent | BaseException | None] = queue.SimpleQueue()
    reader = threading.Thread(target=_pump, args=(stream, events), name="streamchat-show", daemon=True)
    painter.paint(Snapshot())
    reader.start()
    try:
        while True:
            wait = gate.wait_s(clock.now_ns())
            try:
                item = events.get(timeout=wait)
            except queue.Empty:
                if gate.flush(clock.now_ns()):
                    painter.paint(Snapshot.of_state(seen))
                continue
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            if not seen.request_start_ns:
                seen.request_start_ns = stream.request_start_ns  # set before the first event was read
            seen.apply(item)
            if item.kind != "finish" and gate.offer(clock.now_ns()):
                painter.paint(Snapshot.of_state(seen))
    finally:
        stream.close()
        reader.join(_JOIN_S)
        # Once the reader is done the stream is the whole truth (a close may have dropped queued events).
        painter.paint(Snapshot.of_state(seen) if reader.is_alive() else Snapshot.of(stream), final=True)
    return stream


async def ashow(
    stream: AsyncStream,
    *,
    rate: float = DEFAULT_RATE,
    surface: Surface | None = None,
    clock: Clock | None = None,
) -> AsyncStream:
    """The async twin of :func:`show`: ``await ashow(astream(...))``.

    Cancelling the awaiting task closes the stream; the partial answer stays on screen.
    """
    if isinstance(stream, Stream):
        raise ConfigError("ashow() takes an AsyncStream from astream(); for a Stream from stream() use: show(s)")
    if not isinstance(stream, AsyncStream):
        raise ConfigError(f"ashow() takes an AsyncStream from astream(), not {type(stream).__name__}")
    painter = _Painter(surface or DisplaySurface())
    painter.paint(Snapshot())
    task = asyncio.current_task()
    try:
        async with aclosing(aframes(stream, rate, clock)) as frames:
            async for batch in frames:
                if task is not None and task.cancelling():
                    # Cancelled, but the CancelledError did not arrive: on Python 3.11,
                    # asyncio.wait_for (inside aframes) drops one that lands as an event does (CPython gh-86296).
                    raise asyncio.CancelledError
                if batch[-1].kind != "finish":
                    painter.paint(Snapshot.of(stream))
    finally:
        await stream.aclose()
        painter.paint(Snapshot.of(stream), final=True)
    return stream
