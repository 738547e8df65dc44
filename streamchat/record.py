"""Save a stream as JSON Lines and replay it at its original or a scaled speed.

One line per event: ``{"type": ..., "t": seconds since the request, ...}``,
the same shape ``streamchat chat --events`` prints.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

from ._events import Error, ReasoningDelta, StreamEvent, TextDelta, ToolCallDelta, Usage
from ._stream import AsyncStream, Stream
from .errors import ConfigError, ProtocolError, StreamDropped, UpstreamError, redact
from .messages import ChatRequest
from .options import Clock, Timeouts


def event_to_json(event: StreamEvent, start_ns: int) -> dict[str, Any]:
    """One event as a JSON-able dict; ``t`` is seconds since ``start_ns``."""
    out: dict[str, Any] = {"type": event.kind, "t": round((event.t_ns - start_ns) * 1e-9, 6)}
    if isinstance(event, (TextDelta, ReasoningDelta)):
        out["text"] = event.text
    elif isinstance(event, ToolCallDelta):
        out.update(index=event.index, id=event.id, name=event.name, arguments=event.arguments)
    elif isinstance(event, Usage):
        out.update(
            prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens, source=event.source
        )
    elif isinstance(event, Error):
        out.update(
            message=event.message,
            error=type(event.error).__name__,
            streamed=event.streamed,
            retryable=event.retryable,
        )
    else:
        out["reason"] = event.reason
    return out


def _line(event: StreamEvent, start_ns: int) -> str:
    return json.dumps(event_to_json(event, start_ns), ensure_ascii=False) + "\n"


def record(stream: Stream, path: str | os.PathLike[str]) -> Iterator[StreamEvent]:
    """Pass the stream's events through, writing each to ``path`` as it arrives."""
    with open(path, "w", encoding="utf-8") as out, stream:
        for event in stream:
            out.write(_line(event, stream.request_start_ns))
            yield event


async def arecord(stream: AsyncStream, path: str | os.PathLike[str]) -> AsyncIterator[StreamEvent]:
    """The async twin of :func:`record`."""
    with open(path, "w", encoding="utf-8") as out:
        async with stream:
            async for event in stream:
                out.write(_line(event, stream.request_start_ns))
                yield event


def load(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a recording; a clear error names the first bad line."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"no recording at {file}")
    rows = []
    with file.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                float(row["t"])
                str(row["type"])
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"{file}:{number}: not a streamchat event line") from None
            rows.append(row)
    return rows


def _to_chunk(row: Mapping[str, Any]) -> Mapping[str, Any] | Exception | None:
    kind = row["type"]
    if kind == "text":
        return _delta({"content": row["text"]})
    if kind == "reasoning":
        return _delta({"reasoning_content": row["text"]})
    if kind == "tool_call":
        fn = {"name": row.get("name"), "arguments": row.get("arguments", "")}
        return _delta({"tool_calls": [{"index": row.get("index", 0), "id": row.get("id"), "function": fn}]})
    if kind == "usage":
        usage = {"prompt_tokens": row.get("prompt_tokens"), "completion_tokens": row.get("completion_tokens")}
        if row.get("source") == "tokenizer":
            usage["streamchat_source"] = "tokenizer"
        return {"choices": [], "usage": usage}
    if kind == "error":
        return UpstreamError(str(row.get("message", "recorded error")))
    if kind == "finish":
        reason = row.get("reason")
        if reason in ("cancelled", "error"):
            return StreamDropped(f"the recording ends here ({reason})")
        return {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}
    if kind == "metrics":
        return None
    raise ProtocolError(f"unknown event type {kind!r} in recording")


def _delta(delta: dict[str, Any]) -> Mapping[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


class ReplayProvider:
    """Replays a recording as a provider, ``speed`` times faster (2.0) or slower (0.5)."""

    name = "replay"

    def __init__(self, path: str | os.PathLike[str], *, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ConfigError(f"speed must be positive, not {speed}")
        self.path = Path(path)
        self.rows = load(self.path)
        self.speed = speed
        self.model = self.path.stem

    def __repr__(self) -> str:
        return f"ReplayProvider({self.path.name!r}, speed={self.speed})"

    def redact(self, text: str) -> str:
        return redact(text)

    def _steps(self) -> list[tuple[float, Mapping[str, Any] | Exception]]:
        steps = []
        for row in self.rows:
            item = _to_chunk(row)
            if item is not None:
                steps.append((float(row["t"]) / self.speed, item))
        return steps

    def open(self, request: ChatRequest, timeouts: Timeouts, clock: Clock) -> _ReplaySource:
        return _ReplaySource(self._steps(), clock)

    async def aopen(self, request: ChatRequest, timeouts: Timeouts, clock: Clock) -> _AsyncReplaySource:
        return _AsyncReplaySource(self._steps(), clock)


class _ReplaySource:
    def __init__(self, steps: list[tuple[float, Mapping[str, Any] | Exception]], clock: Clock) -> None:
        self.headers_ns: int | None = None
        self._steps = iter(steps)
        self._clock = clock
        self._t0 = clock.now_ns()
        self._abort = threading.Event()

    def __iter__(self) -> _ReplaySource:
        return self

    def __next__(self) -> Mapping[str, Any]:
        due, item = next(self._steps)
        left = due - (self._clock.now_ns() - self._t0) * 1e-9
        if (left > 0 and self._clock.sleep(left, self._abort)) or self._abort.is_set():
            raise StreamDropped("closed")
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self._abort.set()


class _AsyncReplaySource:
    def __init__(self, steps: list[tuple[float, Mapping[str, Any] | Exception]], clock: Clock) -> None:
        self.headers_ns: int | None = None
        self._steps = iter(steps)
        self._clock = clock
        self._t0 = clock.now_ns()

    def __aiter__(self) -> _AsyncReplaySource:
        return self

    async def __anext__(self) -> Mapping[str, Any]:
        try:
            due, item = next(self._steps)
        except StopIteration:
            raise StopAsyncIteration from None
        left = due - (self._clock.now_ns() - self._t0) * 1e-9
        if left > 0:
            await self._clock.asleep(left)
        if isinstance(item, Exception):
            raise item
        return item

    async def aclose(self) -> None:
        await asyncio.sleep(0)

