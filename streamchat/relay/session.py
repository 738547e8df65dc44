"""One relayed answer, whatever carries it (SSE, NDJSON, WebSocket), and the state the relay shares.

A :class:`Session` runs the core's :class:`~streamchat.AsyncStream`, so retries
(before the first token only), time limits and the error model are the core's.
It can be stopped from any task (:meth:`Session.stop`: the upstream is closed
at once), and it ends exactly once (:meth:`Session.finish`): the stream slot
is freed, the tokens are charged and the usage line is written, even when the
client went away mid-answer.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from .._events import Error, Finish, StreamEvent
from .._stream import AsyncStream
from ..errors import redact
from ..options import Clock
from ..providers.base import Provider
from .auth import ClientKey, KeyRing
from .config import RelayConfig
from .errors import SHUTDOWN, STALLED, PublicError, provider_failure
from .limits import Grant, Limiter, Refusal, Rejected, estimate_tokens
from .usage import UsageLog, UsageRecord, utc_now
from .validate import ChatCall, Models
from .wire import Outcome

log = logging.getLogger("streamchat.relay")

StopReason = str
"""``client_disconnected``, ``cancelled`` (the client asked), ``server_shutdown`` or ``client_stalled``."""


def new_request_id() -> str:
    return "req_" + secrets.token_hex(8)


class Relay:
    """What every request shares in one process: provider, keys, limiter, usage log, open sessions."""

    def __init__(
        self,
        provider: Provider,
        config: RelayConfig,
        *,
        clock: Clock,
        usage: UsageLog,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.config = config
        self.clock = clock
        self.usage = usage
        self.wall = wall
        self.keys = KeyRing(config.keys, allow_anonymous=config.allow_anonymous, token_ttl_s=config.token_ttl_s, wall=wall)
        self.limiter = Limiter(config.limits, clock)
        self.models = Models(config.models or (provider.model,))
        self.sessions: set[Session] = set()
        self.draining = False
        self._secrets = self.keys.secrets()

    def redact(self, text: str) -> str:
        """Remove the provider's key and every client key from ``text``."""
        return redact(self.provider.redact(text), self._secrets)

    def admit(self, key: ClientKey, call: ChatCall, endpoint: str, request_id: str) -> Session:
        """A session for ``call``, or :class:`Rejected` (and a usage line saying why)."""
        if self.draining:
            self.refused(request_id, key.id, endpoint, call.model, SHUTDOWN.as_refusal())
            raise Rejected(SHUTDOWN.as_refusal())
        grant = self.limiter.admit(key.id, estimate_tokens(call.prompt_chars))
        if isinstance(grant, Refusal):
            self.refused(request_id, key.id, endpoint, call.model, grant)
            raise Rejected(grant)
        session = Session(self, grant, call, endpoint, request_id)
        self.sessions.add(session)
        return session

    def refused(self, request_id: str, key_id: str | None, endpoint: str, model: str | None, refusal: Refusal) -> None:
        """The usage line of a request turned away before streaming."""
        self.usage.write(
            UsageRecord(
                request_id=request_id, key_id=key_id, endpoint=endpoint, model=model, status=refusal.status,
                finish_reason=None, error=refusal.code, time=utc_now(self.wall),
            )
        )

    async def stop_all(self, reason: StopReason) -> None:
        """Stop every open session (shutdown, once the grace period is over)."""
        for session in list(self.sessions):
            await session.stop(reason)


class Session:
    """One answer being relayed; see the module docstring."""

    def __init__(self, relay: Relay, grant: Grant, call: ChatCall, endpoint: str, request_id: str) -> None:
        self.relay = relay
        self.grant = grant
        self.call = call
        self.endpoint = endpoint
        self.request_id = request_id
        config = relay.config
        self.stream = AsyncStream(relay.provider, call.request, timeouts=config.timeouts, retry=config.retry, clock=relay.clock)
        self.stopped: StopReason | None = None
        self.streamed = False
        self.outcome: Outcome | None = None
        self.started_wall = relay.wall()

    @property
    def key_id(self) -> str:
        return self.grant.key_id

    async def stop(self, reason: StopReason) -> None:
        """Stop now, from any task: the upstream is closed; the partial answer is kept."""
        if self.stopped is None and self.stream.finish_reason is None:
            self.stopped = reason
        await self.stream.aclose()

    def public_error(self) -> PublicError | None:
        """The error to tell the client, if the stream failed or the relay stopped it."""
        if self.stopped == "server_shutdown":
            return SHUTDOWN
        if self.stopped == "client_stalled":
            return STALLED
        error = self.stream.error
        if error is None:
            return None
        return provider_failure(error.error, self.call.model)

    def first_failure(self, event: StreamEvent) -> PublicError | None:
        """When the first event is an error (nothing was output), what to answer instead of 200."""
        if isinstance(event, Error) and not event.streamed:
            return self.public_error()
        if isinstance(event, Finish) and self.stopped == "server_shutdown":
            return SHUTDOWN
        return None

    def finish(self, status: int) -> Outcome:
        """End the session once: free its slot, charge its tokens, write its usage line."""
        if self.outcome is not None:
            return self.outcome
        relay, stream = self.relay, self.stream
        relay.sessions.discard(self)
        timings = stream.timings
        usage = stream.usage
        if usage is not None and usage.completion_tokens is not None:
            completion, completion_source = usage.completion_tokens, usage.source
        else:
            completion, completion_source = timings.output_tokens, "chunks"
        if usage is not None and usage.prompt_tokens is not None and usage.source == "server":
            prompt, prompt_source = usage.prompt_tokens, "server"
        else:
            prompt, prompt_source = self.grant.prompt_tokens, "estimate"
        relay.limiter.settle(self.grant, completion, prompt if prompt_source == "server" else None)
        relay.limiter.release(self.grant)
        error = self.public_error()
        reason = self.stopped or stream.finish_reason or "error"
        self.outcome = outcome = Outcome(
            request_id=self.request_id, finish_reason=reason, prompt_tokens=prompt, prompt_tokens_source=prompt_source,
            completion_tokens=completion, completion_tokens_source=completion_source, timings=timings, error=error,
            streamed=self.streamed,
        )
        if stream.error is not None:
            # The detail stays here, redacted; the client got the relay's own words.
            log.warning("%s: provider error: %s", self.request_id, relay.redact(stream.error.message))
        relay.usage.write(
            UsageRecord(
                request_id=self.request_id, key_id=self.key_id, endpoint=self.endpoint, model=self.call.model,
                status=status, finish_reason=reason, prompt_tokens=prompt, prompt_tokens_source=prompt_source,
                completion_tokens=completion, completion_tokens_source=completion_source,
                ttft_s=_round(timings.ttft_s), duration_s=_round(timings.duration_s), attempts=timings.attempts,
                error=error.code if error is not None else None,
                prompt=_prompt(self.call) if relay.config.log_prompts else None,
                time=utc_now(lambda: self.started_wall),
            )
        )
        return outcome


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _prompt(call: ChatCall) -> Any:
    return "\n".join(f"{m.role}: {m.content}" for m in call.request.messages)
