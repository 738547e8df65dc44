"""``Stream`` and ``AsyncStream``: the I/O shells around :class:`Core`.

Both are iterators of events and context managers; ``close()``/``aclose()`` is
idempotent and stops the work upstream (the HTTP connection is closed, local
generation halts). Partial output is kept: after the stream ends, ``text``,
``reasoning``, ``tool_calls``, ``usage``, ``finish_reason`` and ``timings``
hold the whole message.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any

from ._core import Core
from ._events import Error, FinishReason, StreamEvent, ToolCall, Usage
from .errors import ProviderError, StreamDropped
from .messages import ChatRequest, Prompt, to_messages
from .options import Clock, RetryPolicy, SystemClock, Timeouts
from .providers.base import AsyncChunkSource, ChunkSource, Provider
from .timing import Timings


class _Result:
    """Read-only views of what a stream has received; shared by both twins."""

    _core: Core

    @property
    def text(self) -> str:
        """The answer's text so far (all of it once the stream has ended)."""
        return self._core.state.text

    @property
    def reasoning(self) -> str:
        return self._core.state.reasoning

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self._core.state.tool_calls

    @property
    def usage(self) -> Usage | None:
        return self._core.state.usage

    @property
    def error(self) -> Error | None:
        return self._core.state.error

    @property
    def finish_reason(self) -> FinishReason | None:
        """None while streaming; then stop, length, tool_calls, content_filter, cancelled or error."""
        return self._core.state.finish_reason

    @property
    def timings(self) -> Timings:
        """The metrics so far (computed on each access: read it once per update)."""
        return self._core.state.timings()

    @property
    def request_start_ns(self) -> int:
        """When the request was sent, on the stream's clock (0 before it starts)."""
        return self._core.state.request_start_ns

    @property
    def request(self) -> ChatRequest:
        return self._core.request

    @property
    def provider(self) -> Provider:
        return self._core.provider

    def __repr__(self) -> str:
        state = self.finish_reason or ("streaming" if self._core.started else "not started")
        return f"<{type(self).__name__} {self._core.provider.name}:{self._core.request.model} {state}, {len(self.text)} chars>"


def _as_provider_error(exc: Exception) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    return StreamDropped(f"unexpected {type(exc).__name__} while streaming: {exc}", retryable=False)


class Stream(_Result):
    """A streamed answer, read by iterating; see the module docstring."""

    def __init__(self, provider: Provider, request: ChatRequest, *, timeouts: Timeouts, retry: RetryPolicy, clock: Clock) -> None:
        self._core = Core(provider, request, timeouts, retry, clock)
        self._source: ChunkSource | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._wake = threading.Event()
        self._watchdog: threading.Thread | None = None

    def __iter__(self) -> Iterator[StreamEvent]:
        return self

    def __next__(self) -> StreamEvent:
        core = self._core
        event = core.pop()
        if event is not None:
            return event
        if core.finished or self._closed:
            raise StopIteration
        if not core.started:
            core.start()
            self._start_watchdog()
        try:
            while True:
                try:
                    source = self._source
                    if source is None:
                        if core.timed_out:
                            raise core.interruption()
                        source = self._open()
                    try:
                        chunk = next(source)
                    except StopIteration:
                        core.on_end()
                        break
                    if core.on_chunk(chunk):
                        break
                except Exception as exc:
                    if not self._failed(exc):
                        break
        except BaseException:
            self.close()
            raise
        if core.finished:
            self._release()
        event = core.pop()
        if event is None:
            raise StopIteration
        return event

    def _open(self) -> ChunkSource:
        core = self._core
        source = core.provider.open(core.request, core.timeouts, core.clock)
        with self._lock:
            self._source = source
            stopped = self._closed or core.timed_out is not None
        if stopped:
            # close() or a time limit came while the request was opening.
            self._drop_source()
            raise core.interruption()
        core.on_headers(source.headers_ns)
        return source

    def _failed(self, exc: Exception) -> bool:
        """Handle a failure; True means try again."""
        core = self._core
        self._drop_source()
        if self._closed:
            return False
        error = core.interruption() if core.timed_out else _as_provider_error(exc)
        delay = core.retry_delay(error)
        if delay is not None:
            self._wake.clear()
            woken = core.clock.sleep(delay, self._wake)
            return not woken
        core.fail(error)
        return False

    def _drop_source(self) -> None:
        with self._lock:
            source, self._source = self._source, None
        if source is not None:
            source.close()

    def _release(self) -> None:
        self._drop_source()
        self._wake.set()

    def _start_watchdog(self) -> None:
        if self._core.deadline() is None:
            return
        self._watchdog = threading.Thread(target=self._watch, name="streamchat-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        core = self._core
        while not core.finished and not self._closed:
            found = core.deadline()
            if found is None:
                return
            deadline_ns, phase, limit = found
            left = (deadline_ns - core.clock.now_ns()) * 1e-9
            if left <= 0:
                core.timed_out = (phase, limit)
                self._drop_source()
                return
            # Re-check often: the deadline moves earlier once output starts.
            if self._wake.wait(min(left, 0.1)) and (core.finished or self._closed):
                return

    def close(self) -> None:
        """Stop now; the server sees the connection close. Safe from any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        core = self._core
        if not core.finished:
            core.cancel_requested = True
            core.cancel()
        self._release()

    def until_done(self) -> Stream:
        """Read to the end; return self, now holding the whole message."""
        for _ in self:
            pass
        return self

    def iter_text(self) -> Iterator[str]:
        """Only the text deltas."""
        for event in self:
            if event.kind == "text":
                yield event.text

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStream(_Result):
    """The async twin of :class:`Stream`: same names, ``aclose()`` instead of ``close()``."""

    def __init__(self, provider: Provider, request: ChatRequest, *, timeouts: Timeouts, retry: RetryPolicy, clock: Clock) -> None:
        self._core = Core(provider, request, timeouts, retry, clock)
        self._source: AsyncChunkSource | None = None
        self._closed = False
        self._reader: asyncio.Task[Any] | None = None
        self._stopping_reader = False

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self

    async def __anext__(self) -> StreamEvent:
        core = self._core
        event = core.pop()
        if event is not None:
            return event
        if core.finished or self._closed:
            raise StopAsyncIteration
        if not core.started:
            core.start()
        self._reader = task = asyncio.current_task()
        try:
            while True:
                try:
                    try:
                        chunk = await self._next_chunk()
                    except StopAsyncIteration:
                        core.on_end()
                        break
                    if core.on_chunk(chunk):
                        break
                except Exception as exc:
                    if not await self._failed(exc):
                        break
        except asyncio.CancelledError:
            # aclose() from another task woke us (wherever we were waiting): end quietly.
            if self._stopping_reader and task is not None and task.uncancel() == 0:
                await self._drop_source()
                raise StopAsyncIteration from None
            await self.aclose()
            raise
        except BaseException:
            await self.aclose()
            raise
        finally:
            self._reader = None
        if core.finished:
            await self._drop_source()
        event = core.pop()
        if event is None:
            raise StopAsyncIteration
        return event

    async def _next_chunk(self) -> Any:
        core = self._core
        found = core.deadline()
        if found is None:
            return await self._read()
        deadline_ns, phase, limit = found
        loop = asyncio.get_running_loop()
        when = loop.time() + (deadline_ns - core.clock.now_ns()) * 1e-9
        try:
            async with asyncio.timeout_at(when):
                return await self._read()
        except TimeoutError:
            if core.timed_out is None and loop.time() >= when:
                core.timed_out = (phase, limit)
            raise

    async def _read(self) -> Any:
        source = self._source
        if source is None:
            core = self._core
            source = self._source = await core.provider.aopen(core.request, core.timeouts, core.clock)
            core.on_headers(source.headers_ns)
        return await source.__anext__()

    async def _failed(self, exc: Exception) -> bool:
        core = self._core
        await self._drop_source()
        error = core.interruption() if core.timed_out else _as_provider_error(exc)
        delay = core.retry_delay(error)
        if delay is not None:
            await core.clock.asleep(delay)
            return True
        core.fail(error)
        return False

    async def _drop_source(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            await source.aclose()

    async def aclose(self) -> None:
        """Stop now; the server sees the connection close. Safe from any task."""
        if self._closed:
            return
        self._closed = True
        core = self._core
        if not core.finished:
            core.cancel_requested = True
            core.cancel()
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task() and not reader.done():
            # The reading task owns the source: wake it, and it closes the source itself.
            self._stopping_reader = True
            reader.cancel()
        else:
            await self._drop_source()

    async def until_done(self) -> AsyncStream:
        async for _ in self:
            pass
        return self

    async def iter_text(self) -> AsyncIterator[str]:
        async for event in self:
            if event.kind == "text":
                yield event.text

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _request(
    provider: Provider,
    prompt: Prompt,
    system: str | None,
    model: str | None,
    params: dict[str, Any],
) -> ChatRequest:
    extra = params.pop("extra", None) or {}
    stop = params.pop("stop", ())
    return ChatRequest(
        messages=to_messages(prompt, system=system),
        model=model or provider.model,
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        extra=extra,
        **params,
    )


def stream(
    provider: Provider,
    prompt: Prompt,
    *,
    system: str | None = None,
    model: str | None = None,
    timeouts: Timeouts | None = None,
    retry: RetryPolicy | None = None,
    clock: Clock | None = None,
    **params: Any,
) -> Stream:
    """Stream one answer. The request is sent when iteration starts.

    ``params``: ``temperature``, ``top_p``, ``max_tokens``, ``seed``, ``stop``, ``extra``.
    """
    request = _request(provider, prompt, system, model, params)
    return Stream(provider, request, timeouts=timeouts or Timeouts(), retry=retry or RetryPolicy(), clock=clock or SystemClock())


def astream(
    provider: Provider,
    prompt: Prompt,
    *,
    system: str | None = None,
    model: str | None = None,
    timeouts: Timeouts | None = None,
    retry: RetryPolicy | None = None,
    clock: Clock | None = None,
    **params: Any,
) -> AsyncStream:
    """The async twin of :func:`stream`."""
    request = _request(provider, prompt, system, model, params)
    return AsyncStream(provider, request, timeouts=timeouts or Timeouts(), retry=retry or RetryPolicy(), clock=clock or SystemClock())
