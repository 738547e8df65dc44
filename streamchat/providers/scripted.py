"""A scripted stand-in for a model: known text, known timing, faults on demand.

It produces the same chunk dicts an OpenAI-compatible server sends, on a
schedule computed in advance (:func:`schedule`), so demos, tests, workshops and
the benchmark's calibration know exactly what to expect.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import (
    AuthenticationError,
    ProviderError,
    RateLimitError,
    ServerError,
    StreamDropped,
    redact,
)
from ..messages import ChatRequest
from ..options import Clock, Timeouts

FaultKind = Literal["refuse", "rate_limit", "server_error", "auth", "drop", "stall", "error_event"]

DEFAULT_TEXT = (
    "Streaming sends each token as soon as it exists, so the first words appear "
    "after the time to first token instead of after the whole answer. The total "
    "time barely changes; what changes is how long you stare at an empty screen."
)


@dataclass(frozen=True, slots=True)
class Fault:
    """Something to go wrong.

    ``refuse``, ``rate_limit``, ``server_error`` and ``auth`` happen before the
    first token; ``drop``, ``stall`` and ``error_event`` after ``after_tokens``.
    ``times`` limits how many requests it hits (the first ones); None is every one.
    """

    kind: FaultKind
    after_tokens: int = 0
    times: int | None = None
    retry_after: float | None = None
    stall_s: float = 3600.0
    message: str = ""


_TOKEN = re.compile(r"\s*[^\s]{1,6}|\s+")


def tokenize(text: str) -> list[str]:
    """Split text into token-sized pieces: words, long words cut every six characters."""
    return _TOKEN.findall(text)


def schedule(n: int, ttft: float, tokens_per_s: float, jitter: float = 0.0, seed: int | None = 0) -> list[float]:
    """When each of ``n`` tokens is due, in seconds after the request."""
    rng = random.Random(seed)
    gap = 1.0 / tokens_per_s if tokens_per_s > 0 else 0.0
    out, t = [], ttft
    for i in range(n):
        if i:
            t += max(0.0, gap * (1 + jitter * (2 * rng.random() - 1)))
        out.append(t)
    return out


class ScriptedProvider:
    """Replays a text as timed tokens; see the module docstring."""

    name = "scripted"

    def __init__(
        self,
        text: str | Callable[[ChatRequest], str] = DEFAULT_TEXT,
        *,
        ttft: float = 0.2,
        tokens_per_s: float = 50.0,
        jitter: float = 0.0,
        seed: int | None = 0,
        chunk_tokens: int = 1,
        reasoning: str = "",
        faults: Sequence[Fault] = (),
        model: str = "scripted",
    ) -> None:
        if tokens_per_s < 0 or ttft < 0 or chunk_tokens < 1:
            raise ValueError("ttft and tokens_per_s must be >= 0 and chunk_tokens >= 1")
        self.text = text
        self.ttft = ttft
        self.tokens_per_s = tokens_per_s
        self.jitter = jitter
        self.seed = seed
        self.chunk_tokens = chunk_tokens
        self.reasoning = reasoning
        self.faults = tuple(faults)
        self.model = model
        self._requests = itertools.count()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ScriptedProvider(ttft={self.ttft}, tokens_per_s={self.tokens_per_s}, faults={len(self.faults)})"

    def redact(self, text: str) -> str:
        return redact(text)

    def plan(self, request: ChatRequest) -> _Plan:
        """Everything this request will do, decided up front."""
        with self._lock:
            number = next(self._requests)
        faults = [f for f in self.faults if f.times is None or number < f.times]
        text = self.text(request) if callable(self.text) else self.text
        pieces = [(True, t) for t in tokenize(self.reasoning)] + [(False, t) for t in tokenize(text)]
        length = False
        limit = request.max_tokens
        if limit is not None and len(pieces) > limit:
            pieces, length = pieces[:limit], True
        seed = None if self.seed is None else self.seed + number
        times = schedule(len(pieces), self.ttft, self.tokens_per_s, self.jitter, seed)
        return _Plan(request.model or self.model, pieces, times, faults, length, self.chunk_tokens)

    def open(self, request: ChatRequest, timeouts: Timeouts, clock: Clock) -> ScriptedSource:
        plan = self.plan(request)
        plan.raise_early()
        return ScriptedSource(plan, clock)

    async def aopen(self, request: ChatRequest, timeouts: Timeouts, clock: Clock) -> AsyncScriptedSource:
        plan = self.plan(request)
        plan.raise_early()
        return AsyncScriptedSource(plan, clock)


@dataclass
class _Plan:
    model: str
    pieces: list[tuple[bool, str]]
    times: list[float]
    faults: list[Fault]
    length: bool
    chunk_tokens: int

    def raise_early(self) -> None:
        for fault in self.faults:
            if fault.kind == "rate_limit":
                raise RateLimitError(
                    fault.message or "rate limit reached (scripted 429)", status=429, retry_after=fault.retry_after
                )
            if fault.kind == "server_error":
                raise ServerError(fault.message or "the server failed (scripted 500)", status=500)
            if fault.kind == "auth":
                raise AuthenticationError(fault.message or "invalid API key (scripted 401)", status=401)
            if fault.kind == "refuse":
                raise ProviderError(fault.message or "the request was refused (scripted)", status=400)

    def steps(self) -> Iterator[tuple[float, Mapping[str, Any] | Fault]]:
        """``(due_s, chunk or fault)`` in order; the shells wait and deliver."""
        cid = "chatcmpl-scripted"
        yield 0.0, _chunk(cid, self.model, {"role": "assistant", "content": ""})
        mid = [f for f in self.faults if f.kind in ("drop", "stall", "error_event")]
        step = self.chunk_tokens
        for i in range(0, len(self.pieces), step):
            for fault in mid:
                if i <= fault.after_tokens < i + step:
                    yield (self.times[i] if i < len(self.times) else 0.0), fault
            group = self.pieces[i : i + step]
            delta: dict[str, str] = {}
            for is_reasoning, text in group:
                key = "reasoning_content" if is_reasoning else "content"
                delta[key] = delta.get(key, "") + text
            yield self.times[i + len(group) - 1], _chunk(cid, self.model, delta)
        for fault in mid:
            if fault.after_tokens >= len(self.pieces):
                yield (self.times[-1] if self.times else 0.0), fault
        end = self.times[-1] if self.times else 0.0
        yield end, _chunk(cid, self.model, {}, "length" if self.length else "stop")
        yield end, {
            "id": cid,
            "object": "chat.completion.chunk",
            "model": self.model,
            "choices": [],
            "usage": {"prompt_tokens": 0, "completion_tokens": len(self.pieces), "total_tokens": len(self.pieces)},
        }


def _chunk(cid: str, model: str, delta: Mapping[str, str], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": dict(delta), "finish_reason": finish}],
    }


def _fault_error(fault: Fault) -> Exception:
    if fault.kind == "drop":
        return StreamDropped(fault.message or "the connection dropped mid-answer (scripted)")
    return _ErrorPayload(fault.message or "the model failed mid-answer (scripted)")


class _ErrorPayload(Exception):
    """Marks an ``error`` payload to deliver as a chunk, the way servers send it."""


class ScriptedSource:
    """Sync delivery of a plan, in real time; ``close()`` interrupts any wait."""

    def __init__(self, plan: _Plan, clock: Clock) -> None:
        self._steps = plan.steps()
        self._clock = clock
        self._t0 = clock.now_ns()
        self._abort = threading.Event()
        self.headers_ns: int | None = self._t0

    def __iter__(self) -> ScriptedSource:
        return self

    def __next__(self) -> Mapping[str, Any]:
        due, item = next(self._steps)
        if isinstance(item, Fault) and item.kind == "stall":
            due += item.stall_s
        left = due - (self._clock.now_ns() - self._t0) * 1e-9
        if left > 0 and self._clock.sleep(left, self._abort):
            raise StreamDropped("closed")
        if self._abort.is_set():
            raise StreamDropped("closed")
        if isinstance(item, Fault):
            if item.kind == "stall":
                return next(self)
            error = _fault_error(item)
            if isinstance(error, _ErrorPayload):
                return {"error": {"message": str(error), "type": "server_error"}}
            raise error
        return item

    def close(self) -> None:
        self._abort.set()


class AsyncScriptedSource:
    """Async delivery of a plan; cancelling the reading task interrupts any wait."""

    def __init__(self, plan: _Plan, clock: Clock) -> None:
        self._steps = plan.steps()
        self._clock = clock
        self._t0 = clock.now_ns()
        self._closed = False
        self.headers_ns: int | None = self._t0

    def __aiter__(self) -> AsyncScriptedSource:
        return self

    async def __anext__(self) -> Mapping[str, Any]:
        if self._closed:
            raise StopAsyncIteration
        try:
            due, item = next(self._steps)
        except StopIteration:
            raise StopAsyncIteration from None
        if isinstance(item, Fault) and item.kind == "stall":
            due += item.stall_s
        left = due - (self._clock.now_ns() - self._t0) * 1e-9
        if left > 0:
            await self._clock.asleep(left)
        if isinstance(item, Fault):
            if item.kind == "stall":
                return await self.__anext__()
            error = _fault_error(item)
            if isinstance(error, _ErrorPayload):
                return {"error": {"message": str(error), "type": "server_error"}}
            raise error
        return item

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.sleep(0)
