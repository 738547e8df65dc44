"""What callers are told when something fails: the relay's own words, never the provider's.

A provider's error body may hold its key, its internals, or someone else's
data (OWASP LLM02), so it is never forwarded: each kind of failure gets a fixed
message and code here, and the full (redacted) detail goes to the server log
under the request id. The messages reuse the core's fixed phrases ("is rate
limiting (HTTP 429)", "waiting for the next chunk", …) so every surface tells
the same fault in the same words (docs/faults.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._chunks import NOT_AN_OBJECT, NOT_JSON
from ..errors import (
    BROKE_MID_ANSWER,
    AuthenticationError,
    BadRequestError,
    ConnectError,
    ModelNotFoundError,
    ProtocolError,
    ProviderError,
    RateLimitError,
    ServerError,
    StreamDropped,
    StreamTimeout,
    UpstreamError,
)
from .limits import Refusal

_TIMEOUT_WHAT = {
    "connect": "could not be reached in time: the relay timed out connecting",
    "first_token": "sent no first token in time: the relay timed out waiting for the first token",
    "idle": "stopped sending mid-answer: the relay timed out waiting for the next chunk",
    "total": "took longer than the whole answer may take",
}


@dataclass(frozen=True, slots=True)
class PublicError:
    """A failure as callers see it."""

    status: int
    """The HTTP status, when the failure came before any output."""
    code: str
    message: str
    type: str = "server_error"
    retryable: bool = False
    retry_after_s: float | None = None

    def as_refusal(self) -> Refusal:
        return Refusal(self.status, self.code, self.message, self.retry_after_s, self.type)


def provider_failure(exc: BaseException, model: str | None) -> PublicError:
    """The public face of a provider's failure."""
    if isinstance(exc, StreamTimeout):
        what = _TIMEOUT_WHAT.get(exc.phase, "timed out")
        return PublicError(
            504, "upstream_timeout", f"the provider {what} (its {exc.phase} limit is {exc.limit_s:g} s)",
            retryable=True,
        )
    if isinstance(exc, AuthenticationError):
        # A 502, not a 401: the caller's own key is fine, and must not look wrong.
        return PublicError(
            502, "upstream_auth_failed",
            f"the provider refused the API key (HTTP {exc.status or 401}) the relay holds, not yours: "
            "the relay's operator must fix it",
        )
    if isinstance(exc, ModelNotFoundError):
        said = f"answered {exc.status} for model {model!r}" if exc.status else f"does not have the model {model!r}"
        return PublicError(502, "upstream_model_not_found", f"the provider {said}: it does not serve it")
    if isinstance(exc, RateLimitError):
        return PublicError(
            503, "upstream_rate_limited", "the relay's provider is rate limiting (HTTP 429); try again later",
            retryable=True, retry_after_s=exc.retry_after,
        )
    if isinstance(exc, BadRequestError) or (type(exc) is ProviderError and exc.status == 400):
        status = exc.status if isinstance(exc, ProviderError) and exc.status else 400
        return PublicError(
            400, "upstream_rejected_request",
            f"the provider refused this request (HTTP {status}): it may be too long for the model, "
            "or use a parameter the model does not support",
            type="invalid_request_error",
        )
    if isinstance(exc, ServerError):
        return PublicError(502, "upstream_error", f"the provider failed (HTTP {exc.status or '5xx'}); try again", retryable=True)
    if isinstance(exc, ConnectError):
        return PublicError(502, "upstream_unreachable", "the relay could not connect to its provider", retryable=True)
    if isinstance(exc, StreamDropped):
        return PublicError(
            502, "upstream_dropped",
            "the provider's stream broke off before the answer was complete" + _core_phrase(exc, _BROKE), retryable=True,
        )
    if isinstance(exc, ProtocolError):
        return PublicError(
            502, "upstream_protocol_error",
            "the provider sent something that is not a valid stream" + _core_phrase(exc, _MALFORMED),
        )
    if isinstance(exc, UpstreamError):
        return PublicError(502, "upstream_error", "the provider reported an error mid-stream")
    return PublicError(502, "upstream_error", "the provider failed")


_BROKE = (BROKE_MID_ANSWER,)
_MALFORMED = (NOT_JSON, NOT_AN_OBJECT, "malformed chunk")


def _core_phrase(exc: ProviderError, phrases: tuple[str, ...]) -> str:
    """``: <phrase>`` when the core's message starts with one of its fixed ``phrases``; the rest may be the provider's."""
    found = next((p for p in phrases if exc.message.startswith(p)), None)
    return f": {found}" if found else ""


SHUTDOWN = PublicError(503, "server_shutdown", "the relay is shutting down; retry in a moment", retryable=True, retry_after_s=1)
STALLED = PublicError(408, "client_stalled", "the client read nothing for too long")


def error_body(
    code: str, message: str, type: str = "invalid_request_error", param: str | None = None, **more: Any
) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code, **more}}
