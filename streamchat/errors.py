"""Exceptions, one tree, each with a message a person can act on.

    StreamchatError
    ├── ConfigError            bad input before anything was sent
    └── ProviderError          the provider failed; ``retryable`` says if a retry may help
        ├── AuthenticationError    wrong or missing key (401/403)
        ├── ModelNotFoundError     unknown model or path (404)
        ├── BadRequestError        the server refused the request (400/413/422)
        ├── RateLimitError         429; ``retry_after`` in seconds when the server said
        ├── ServerError            5xx
        ├── ConnectError           host unreachable, connection refused, DNS failure
        ├── StreamDropped          the connection ended before the answer was complete
        ├── ProtocolError          a malformed chunk or bad UTF-8
        ├── UpstreamError          an ``error`` payload inside the stream
        └── StreamTimeout          connect, first-token, idle or total time limit passed

Messages never contain an API key: providers pass theirs to :func:`redact`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime
from typing import Literal

_KEYLIKE = re.compile(r"\b(sk|pk|rk|hf|gsk|xai)[-_][A-Za-z0-9_\-*]{6,}")


BROKE_MID_ANSWER = "the connection broke mid-answer"
"""How every client says a stream was cut (the relay repeats this phrase, never the rest)."""


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove every given secret, and anything shaped like an API key, from ``text``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _KEYLIKE.sub(lambda m: m.group(1) + "-***", text)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class StreamchatError(Exception):
    """Base class of every error streamchat raises."""


class ConfigError(StreamchatError, ValueError):
    """Bad input, found before anything was sent."""


class ProviderError(StreamchatError):
    """The provider failed."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        if retryable is not None:
            self.retryable = retryable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class AuthenticationError(ProviderError):
    """The API key is wrong, missing or not allowed to do this."""


class ModelNotFoundError(ProviderError):
    """The model does not exist on this server, or the model file is not there."""


class BadRequestError(ProviderError):
    """The server refused the request as malformed or too large."""


class RateLimitError(ProviderError):
    """Too many requests; ``retry_after`` says when to come back, if the server said."""

    retryable = True


class ServerError(ProviderError):
    """The server failed (HTTP 5xx)."""

    retryable = True


class ConnectError(ProviderError):
    """No connection could be made."""

    retryable = True


class StreamDropped(ProviderError):
    """The stream ended before the answer was complete."""

    retryable = True


class ProtocolError(ProviderError):
    """The provider sent something that is not a valid chunk."""


class UpstreamError(ProviderError):
    """The provider sent an ``error`` payload inside the stream."""


TimeoutPhase = Literal["connect", "first_token", "idle", "total"]


class StreamTimeout(ProviderError):
    """A time limit passed; ``phase`` says which one."""

    retryable = True

    def __init__(self, phase: TimeoutPhase, limit_s: float) -> None:
        what = {
            "connect": "connecting",
            "first_token": "waiting for the first token",
            "idle": "waiting for the next chunk",
            "total": "for the whole answer",
        }[phase]
        super().__init__(f"timed out after {limit_s:g} s {what} (timeouts.{phase})")
        self.phase: TimeoutPhase = phase
        self.limit_s = limit_s


def for_status(
    status: int, said: str, *, where: str, model: str, headers: Mapping[str, str] | None = None,
) -> ProviderError:
    """The error for an HTTP error status from an OpenAI-compatible server, saying what to check.

    ``said`` is the server's own message, already redacted; ``where`` is host:port.
    """
    said = said.strip().rstrip(".") or "no message"
    after = retry_after(headers) if headers is not None else None
    if status in (401, 403):
        return AuthenticationError(f"{where} refused the API key (HTTP {status}): {said}. Check the API key.", status=status)
    if status == 404:
        return ModelNotFoundError(
            f"{where} answered 404 for model {model!r}: {said}. Check the model name and that base_url ends in /v1.",
            status=status,
        )
    if status == 429:
        return RateLimitError(f"{where} is rate limiting (HTTP 429): {said}", status=status, retry_after=after)
    if status >= 500:
        return ServerError(f"{where} failed (HTTP {status}): {said}", status=status, retry_after=after)
    return BadRequestError(f"{where} refused the request (HTTP {status}): {said}", status=status)

