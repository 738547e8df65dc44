"""ASGI responses that relay a :class:`Session`, and stop it the moment the client leaves.

A task watches ``receive()`` for ``http.disconnect`` from the very start, so
a client that leaves before the first token is noticed as fast as one that
leaves mid-answer (Starlette's ``StreamingResponse`` only notices on its next
write under ASGI 2.4, and LiteLLM had to fix the same gap). Writes are bounded
by ``send_timeout_s``: a client that stops reading is dropped, not waited for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._coalesce import Coalescer
from .._events import Finish, ReasoningDelta, StreamEvent, TextDelta, ToolCall, ToolCallDelta
from .errors import PublicError, error_body
from .session import Session
from .wire import Frames, Outcome, completion_body

METRICS_RATE = 1.0
"""``metrics`` events per second, at most."""
_OUTPUT = frozenset({"text", "reasoning", "tool_call"})


def json_error(
    status: int, code: str, message: str, type: str, *, headers: Mapping[str, str] | None = None, **more: Any
) -> Response:
    """An OpenAI-shaped JSON error response."""
    body = json.dumps(error_body(code, message, type, **more), ensure_ascii=False).encode()
    return Response(body, status, headers=dict(headers or {}), media_type="application/json")


def failure_response(error: PublicError, headers: Mapping[str, str], **more: Any) -> Response:
    # The openai SDKs obey x-should-retry: no retries that cannot help (a 502 for the relay's bad upstream key).
    extra = {**headers, "x-should-retry": "true" if error.retryable else "false"}
    if error.retry_after_s is not None:
        extra["Retry-After"] = error.as_refusal().retry_after or "1"
    return json_error(error.status, error.code, error.message, error.type, headers=extra, **more)


async def _next(events: AsyncIterator[StreamEvent]) -> StreamEvent | None:
    try:
        return await events.__anext__()
    except StopAsyncIteration:
        return None


class _Relaying(Response):
    """What both responses share: the disconnect watcher and the session's end."""

    def __init__(self, session: Session, headers: Mapping[str, str]) -> None:
        self.session = session
        self.extra_headers = dict(headers)
        self.status_code = 200
        self.background = None
        self._complete = False

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self._complete:
                    await self.session.stop("client_disconnected")
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.create_task(self._watch(receive))
        try:
            await self._relay(send)
        except asyncio.CancelledError:
            # The server gave up waiting (shutdown): stop the upstream, still account.
            await self.session.stop("server_shutdown")
            raise
        finally:
            watcher.cancel()
            self.session.finish(self.status_code)

    async def _relay(self, send: Send) -> None:
        raise NotImplementedError

    def _raw_headers(self, media_type: str) -> list[tuple[bytes, bytes]]:
        headers = {"content-type": media_type, **{k.lower(): v for k, v in self.extra_headers.items()}}
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def _send_error(self, send: Send, error: PublicError, **more: Any) -> None:
        response = failure_response(error, self.extra_headers, **more)
        self.status_code = response.status_code
        self._complete = True
        await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body, "more_body": False})


class StreamResponse(_Relaying):
    """A streamed answer in one of the wire dialects (:mod:`streamchat.relay.wire`)."""

    def __init__(self, session: Session, frames: Frames, headers: Mapping[str, str]) -> None:
        super().__init__(session, {"Cache-Control": "no-store", "X-Accel-Buffering": "no", **headers})
        self.frames = frames
        self._send: Send | None = None
        self._task: asyncio.Task[Any] | None = None
        self._last_write = 0.0
        self._sending_since: float | None = None
        self._closed = False
        self._stalled = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._task = asyncio.current_task()
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            # Our own watchdog cancelled a write to a client that reads nothing: not a shutdown.
            if self._stalled and self._task is not None and self._task.uncancel() == 0:
                return
            raise

    async def _write(self, data: bytes, *, more: bool = True) -> None:
        # No per-write timer (it would cost one per token): the watchdog below times writes.
        if self._closed or (not data and more):
            return
        if not more:
            self._closed = self._complete = True
        send = self._send
        assert send is not None
        time = asyncio.get_running_loop().time
        self._sending_since = time()
        await send({"type": "http.response.body", "body": data, "more_body": more})
        self._sending_since = None
        self._last_write = time()

    async def _watchdog(self) -> None:
        """Heartbeats when idle; and a client that has not taken a write for ``send_timeout_s`` is dropped."""
        config = self.session.relay.config
        loop = asyncio.get_running_loop()
        while not self._closed:
            since = self._sending_since
            due = since + config.send_timeout_s if since is not None else self._last_write + config.heartbeat_s
            if loop.time() < due:
                await asyncio.sleep(due - loop.time())
                continue
            if since is None:
                try:
                    async with asyncio.timeout(config.send_timeout_s):
                        await self._write(self.frames.heartbeat())
                    continue
                except TimeoutError:
                    pass
            self._closed = self._stalled = True
            await self.session.stop("client_stalled")
            if self._task is not None:
                self._task.cancel()
            return

    async def _start(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._raw_headers(self.frames.media_type)})
        self._last_write = asyncio.get_running_loop().time()

    async def _relay(self, send: Send) -> None:
        self._send = send
        session, frames = self.session, self.frames
        events = session.stream.__aiter__()
        pending: asyncio.Task[StreamEvent | None] | None = None
        first: StreamEvent | None = None
        if frames.hold_headers:
            # Wait (a while) for the first event so a failure before any output gets a real status.
            pending = asyncio.ensure_future(_next(events))
            await asyncio.wait({pending}, timeout=session.relay.config.heartbeat_s)
            if pending.done():
                first, pending = pending.result(), None
                failure = session.first_failure(first) if first is not None else None
                if failure is not None:
                    await _drain(events)
                    await self._send_error(send, failure)
                    return
        await self._start(send)
        watchdog = asyncio.create_task(self._watchdog())
        try:
            await self._write(frames.head())
            if pending is not None:
                first = await pending
            gate = Coalescer(METRICS_RATE) if frames.wants_metrics else None
            now_ns = session.relay.clock.now_ns
            event = first if frames.hold_headers else await _next(events)
            while event is not None:
                if event.kind in _OUTPUT:
                    session.streamed = True
                    await self._write(frames.output(event))  # type: ignore[arg-type]
                    if gate is not None and gate.offer(now_ns()):
                        await self._write(frames.metrics(session.stream.timings))
                if self._closed:
                    break
                event = await _next(events)
            await _drain(events)
            outcome = session.finish(200)
            # The watchdog must not write after the last write.
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
            if session.stopped not in ("client_disconnected", "client_stalled"):
                await self._write(frames.tail(outcome), more=False)
        finally:
            watchdog.cancel()


class CompletionResponse(_Relaying):
    """A non-streamed answer: collected whole, but still cancelled when the client leaves."""

    def __init__(self, session: Session, completion_id: str, created: int, headers: Mapping[str, str]) -> None:
        super().__init__(session, headers)
        self.completion_id = completion_id
        self.created = created

    async def _relay(self, send: Send) -> None:
        session = self.session
        async for event in session.stream:
            if isinstance(event, TextDelta | ReasoningDelta | ToolCallDelta):
                session.streamed = True
            elif isinstance(event, Finish):
                break
        if session.stopped == "client_disconnected":
            return
        stream = session.stream
        error = session.public_error()
        if error is not None:
            partial = {"partial_content": stream.text} if stream.text else {}
            await self._send_error(send, error, **partial)
            return
        outcome: Outcome = session.finish(200)
        body = completion_body(
            self.completion_id, session.call.model, self.created, outcome, stream.text, stream.reasoning,
            [_tool_call(c) for c in stream.tool_calls],
        )
        data = json.dumps(body, ensure_ascii=False).encode()
        self._complete = True
        await send({"type": "http.response.start", "status": 200, "headers": self._raw_headers("application/json")})
        await send({"type": "http.response.body", "body": data, "more_body": False})


def _tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


async def _drain(events: AsyncIterator[StreamEvent]) -> None:
    """Read what is left (the Finish): the stream is over or stopped, so this never waits on the network."""
    while await _next(events) is not None:
        pass

