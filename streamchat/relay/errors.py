"""What callers are told when something fails: the relay's own words, never the provider's.

A provider's error body may hold its key, its internals, or someone else's
data (OWASP LLM02), so it is never forwarded: each kind of failure gets a fixed
message and code here, and the full (redacted) detail goes to the server log
under the request id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import (
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
    "connect": "could not be reached in time",
    "first_token": "sent no first token in time",
    "idle": "stopped sending mid-answer",
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
            504, "upstream_timeout", f"the provider {what} (the relay's {exc.phase} limit is {exc.limit_s:g} s)",
            retryable=True,
        )
    if isinstance(exc, AuthenticationError):
        return PublicError(
            502, "upstream_auth_failed", "the provider refused the relay's credentials; the relay's operator must fix them"
        )
    if isinstance(exc, ModelNotFoundError):
        return PublicError(502, "upstream_model_not_found", f"the provider does not know the model {model!r}")
    if isinstance(exc, RateLimitError):
        return PublicError(
            503, "upstream_rate_limited", "the provider is rate limiting the relay; try again later",
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
        return PublicError(502, "upstream_error", "the provider failed (HTTP 5xx); try again", retryable=True)
    if isinstance(exc, ConnectError):
        return PublicError(502, "upstream_unreachable", "the relay could not connect to its provider", retryable=True)
    if isinstance(exc, StreamDropped):
        return PublicError(502, "upstream_dropped", "the provider's stream broke off before the answer was complete", retryable=True)
    if isinstance(exc, ProtocolError):
        return PublicError(502, "upstream_protocol_error", "the provider sent something that is not a valid stream")
    if isinstance(exc, UpstreamError):
        return PublicError(502, "upstream_error", "the provider reported an error mid-answer")
    return PublicError(502, "upstream_error", "the provider failed")


SHUTDOWN = PublicError(503, "server_shutdown", "the relay is shutting down; retry in a moment", retryable=True, retry_after_s=1)
STALLED = PublicError(408, "client_stalled", "the client read nothing for too long")


def error_body(
    code: str, message: str, type: str = "invalid_request_error", param: str | None = None, **more: Any
) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code, **more}}
