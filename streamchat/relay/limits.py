"""Limits, as pure rules over an injected clock: no I/O, no global state.

- Requests per minute and tokens per minute, per key: token buckets holding up
  to one minute's allowance, refilled continuously, so a quiet key may burst.
  Tokens are charged as they are known: the prompt's estimate on admission,
  the completion (even a partial one, cut by a disconnect) when the stream
  ends. A key in debt waits until it is paid off: ``Retry-After`` says when.
- Concurrent streams, per key and overall: counted slots, freed when a stream ends.
- Request body size, message count and ``max_tokens``: caps checked before
  anything is sent upstream.

Each process holds its own buckets; docs/relay.md says what that means behind
a load balancer, and which shared store makes them global.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..options import Clock

_MINUTE_NS = 60_000_000_000


@dataclass(frozen=True, slots=True)
class Limits:
    """What one relay allows. ``None`` turns a limit off."""

    requests_per_minute: int | None = 60
    """Per key."""
    tokens_per_minute: int | None = 200_000
    """Per key: prompt and completion tokens together."""
    streams_per_key: int | None = 4
    streams_total: int | None = 64
    max_body_bytes: int = 256 * 1024
    max_messages: int = 100
    max_tokens: int = 1024
    """The cap on ``max_tokens``; also the value used when a request sets none."""

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "streams_per_key", "streams_total"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"limits.{name} must be a positive integer or None (off), not {value!r}")
        for name in ("max_body_bytes", "max_messages", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"limits.{name} must be a positive integer, not {value!r}")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request turned away: HTTP status, machine-readable code, a message for people."""

    status: int
    code: str
    message: str
    retry_after_s: float | None = None
    type: str = "rate_limit_error"
    param: str | None = None

    @property
    def retry_after(self) -> str | None:
        """The ``Retry-After`` header value: whole seconds, rounded up, at least 1."""
        if self.retry_after_s is None:
            return None
        return str(max(1, math.ceil(round(self.retry_after_s, 6))))


@dataclass(slots=True)
class Bucket:
    """A token bucket: up to ``capacity``, refilled at ``capacity`` per minute; may go into debt."""

    capacity: float
    level: float
    t_ns: int

    def refill(self, now_ns: int) -> None:
        if now_ns > self.t_ns:
            self.level = min(self.capacity, self.level + (now_ns - self.t_ns) * self.capacity / _MINUTE_NS)
            self.t_ns = now_ns

    def wait_s(self, need: float) -> float:
        """Seconds until ``need`` is available (0 if it is now)."""
        missing = need - self.level
        return 0.0 if missing <= 0 else missing * 60.0 / self.capacity


@dataclass(slots=True)
class Grant:
    """An admitted request: it holds a stream slot until :meth:`Limiter.release`."""

    key_id: str
    prompt_tokens: int
    released: bool = False


@dataclass(slots=True)
class _KeyState:
    requests: Bucket | None
    tokens: Bucket | None
    streams: int = 0


class Limiter:
    """Admits or refuses requests; one per relay process, keyed by key id."""

    def __init__(self, limits: Limits, clock: Clock) -> None:
        self.limits = limits
        self.clock = clock
        self.streams = 0
        self._keys: dict[str, _KeyState] = {}

    def _state(self, key_id: str, now_ns: int) -> _KeyState:
        state = self._keys.get(key_id)
        if state is None:
            rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
            state = self._keys[key_id] = _KeyState(
                Bucket(rpm, rpm, now_ns) if rpm else None, Bucket(tpm, tpm, now_ns) if tpm else None
            )
        if state.requests is not None:
            state.requests.refill(now_ns)
        if state.tokens is not None:
            state.tokens.refill(now_ns)
        return state

    def admit(self, key_id: str, prompt_tokens: int) -> Grant | Refusal:
        """Check every limit, then charge them all, or none."""
        limits = self.limits
        state = self._state(key_id, self.clock.now_ns())
        if limits.streams_per_key is not None and state.streams >= limits.streams_per_key:
            return Refusal(
                429,
                "too_many_streams",
                f"key {key_id!r} already has {state.streams} open streams, its limit; "
                "wait for one to end (or close one you no longer read)",
            )
        if limits.streams_total is not None and self.streams >= limits.streams_total:
            return Refusal(
                503,
                "server_busy",
                f"the relay is serving its limit of {limits.streams_total} streams; try again shortly",
                type="server_error",
            )
        requests = state.requests
        if requests is not None and requests.level < 1:
            wait = requests.wait_s(1)
            return Refusal(
                429,
                "rate_limit_requests",
                f"key {key_id!r} has used its {limits.requests_per_minute} requests per minute; "
                f"retry in {max(1, math.ceil(round(wait, 6)))} s",
                wait,
            )
        tokens = state.tokens
        if tokens is not None:
            if prompt_tokens > tokens.capacity:
                return Refusal(
                    400,
                    "prompt_too_large",
                    f"this prompt (about {prompt_tokens} tokens) alone exceeds key {key_id!r}'s "
                    f"{limits.tokens_per_minute} tokens per minute; shorten it",
                    type="invalid_request_error",
                )
            if tokens.level < prompt_tokens or tokens.level <= 0:
                wait = tokens.wait_s(max(prompt_tokens, 1))
                return Refusal(
                    429,
                    "rate_limit_tokens",
                    f"key {key_id!r} has used its {limits.tokens_per_minute} tokens per minute; "
                    f"retry in {max(1, math.ceil(round(wait, 6)))} s",
                    wait,
                )
            tokens.level -= prompt_tokens
        if requests is not None:
            requests.level -= 1
        state.streams += 1
        self.streams += 1
        return Grant(key_id, prompt_tokens)

    def settle(self, grant: Grant, completion_tokens: int, prompt_tokens: int | None = None) -> None:
        """Charge the tokens only known at the end; ``prompt_tokens`` corrects the estimate."""
        state = self._state(grant.key_id, self.clock.now_ns())
        if state.tokens is not None:
            correction = 0 if prompt_tokens is None else prompt_tokens - grant.prompt_tokens
            state.tokens.level -= max(0, completion_tokens) + correction

    def release(self, grant: Grant) -> None:
        """Free the grant's stream slot; safe to call twice."""
        if grant.released:
            return
        grant.released = True
        state = self._keys.get(grant.key_id)
        if state is not None:
            state.streams -= 1
        self.streams -= 1

    def remaining(self, key_id: str) -> dict[str, int]:
        """``x-ratelimit-*`` headers for ``key_id``, as OpenAI names them."""
        state = self._state(key_id, self.clock.now_ns())
        out: dict[str, int] = {}
        if state.requests is not None:
            out["x-ratelimit-limit-requests"] = int(state.requests.capacity)
            out["x-ratelimit-remaining-requests"] = max(0, math.floor(state.requests.level))
        if state.tokens is not None:
            out["x-ratelimit-limit-tokens"] = int(state.tokens.capacity)
            out["x-ratelimit-remaining-tokens"] = max(0, math.floor(state.tokens.level))
        return out


class Rejected(Exception):
    """Raised to turn a request away with ``refusal``."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def check_body_size(size: int, limits: Limits) -> Refusal | None:
    """413 when the body is over ``max_body_bytes``."""
    if size > limits.max_body_bytes:
        return Refusal(
            413,
            "request_too_large",
            f"the request body is over the relay's limit of {limits.max_body_bytes} bytes",
            type="invalid_request_error",
        )
    return None


def check_messages(count: int, limits: Limits) -> Refusal | None:
    """400 when there are more messages than ``max_messages``."""
    if count > limits.max_messages:
        return Refusal(
            400,
            "too_many_messages",
            f"the request has {count} messages; this relay accepts at most {limits.max_messages}",
            type="invalid_request_error",
        )
    return None


def cap_max_tokens(requested: int | None, limits: Limits) -> int | Refusal:
    """The ``max_tokens`` to use: the request's, or the cap when it sets none; 400 above the cap."""
    if requested is None:
        return limits.max_tokens
    if requested > limits.max_tokens:
        return Refusal(
            400,
            "max_tokens_too_large",
            f"max_tokens is {requested}; this relay allows at most {limits.max_tokens}",
            type="invalid_request_error",
        )
    return requested


def estimate_tokens(text_chars: int) -> int:
    """A prompt's tokens before the provider counts them: about four characters each."""
    return max(1, math.ceil(text_chars / 4))
