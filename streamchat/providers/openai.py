"""Any OpenAI-compatible server, through the official ``openai`` SDK.

The SDK sends the request (auth, base URL, Azure, status errors); streamchat
reads the body itself with its own SSE decoder, which lets it time the
response headers, see pings, abort a blocked read from another thread, and
keep per-chunk overhead below the SDK's own model parsing. Retries are left to
the core (``max_retries=0`` here), which only retries before the first token.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._chunks import DONE, parse_data
from .._sse import SSEDecoder, SSEEvent
from ..errors import (
    BROKE_MID_ANSWER,
    ConfigError,
    ConnectError,
    ProviderError,
    StreamDropped,
    StreamTimeout,
    for_status,
    redact,
)
from ..messages import ChatRequest
from ..options import Clock, Timeouts

if TYPE_CHECKING:
    import openai

class OpenAIProvider:
    """Streams from an OpenAI-compatible ``/chat/completions`` endpoint."""

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: openai.OpenAI | None = None,
        async_client: openai.AsyncOpenAI | None = None,
        include_usage: bool = True,
    ) -> None:
        if not model:
            raise ConfigError("model is required, e.g. model='gpt-4o-mini' or the name your server lists at /v1/models")
        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        if urlsplit(self.base_url).scheme not in ("http", "https"):
            raise ConfigError(f"base_url must start with http:// or https://, got {_host(self.base_url)!r}")
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.include_usage = include_usage
        self._lock = threading.Lock()
        try:
            import openai  # here, not in open(): importing it must not count as latency
        except ImportError:
            raise ConfigError("the openai package is not installed: pip install 'streamchat[openai]'") from None

        key = self._api_key or "none"
        self._client = client or openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0)
        self._owns_async = async_client is None
        self._async_client = async_client or openai.AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=0)

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return f"OpenAIProvider(model={self.model!r}, base_url={_host(self.base_url)!r}, api_key={key})"

    def redact(self, text: str) -> str:
        return redact(text, (self._api_key,))

    def close(self) -> None:
        """Close the sync client's pooled connections."""
        self._client.close()

    async def aclose(self) -> None:
        """Close the async client's pooled connections."""
        await self._async_client.close()

    async def release(self) -> None:
        """Close pooled connections at the end of an event loop; the next loop starts clean.

        An async HTTP pool belongs to the loop that opened its connections, so a
        provider reused across ``asyncio.run`` calls needs this between them.
        """
        if self._owns_async:
            await self._async_client.close()
            import openai

            self._async_client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key or "none", max_retries=0)

    def __enter__(self) -> OpenAIProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- clients (created once; retries off: the core retries) ----------------
    def _sync(self) -> openai.OpenAI:
        with self._lock:
            if self._client.max_retries:
                self._client = self._client.with_options(max_retries=0)
            return self._client

    def _async(self) -> openai.AsyncOpenAI:
        with self._lock:
            if self._async_client.max_retries:
                self._async_client = self._async_client.with_options(max_retries=0)
            return self._async_client

    def _kwargs(self, request: ChatRequest, timeouts: Timeouts) -> dict[str, Any]:
        import openai

        kwargs: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": [m.to_dict() for m in request.messages],
            "stream": True,
            # The core enforces the precise limits; socket timeouts are the backstop
            # while a sync request waits for its headers, which nothing else interrupts.
            "timeout": openai.Timeout(
                connect=timeouts.connect, read=_backstop(_least(timeouts.first_token, timeouts.total)), write=30.0, pool=30.0
            ),
            **request.sampling(),
            **request.extra,
        }
        if self.include_usage:
            kwargs["stream_options"] = {"include_usage": True}
        return kwargs

    # -- opening -------------------------------------------------------------
    def open(self, request: ChatRequest, timeouts: Timeouts, clock: Clock) -> HTTPSource:
        client = self._sync()
        kwargs = self._kwargs(request, timeouts)
        try:
            cm = client.chat.completions.with_streaming_response.create(**kwargs)
            response = cm.__enter__()
        except Exception as exc:
            if self._usage_rejected(exc, kwargs):
                return self.open(request, timeouts, clock)
            raise self._error(exc, kwargs["model"], timeouts) from None
        http = response.http_response
        _set_body_timeout(http, timeouts)
        return HTTPSource(http, clock.now_ns(), self)

    async def aopen(self, request: ChatRequest, timeouts: Timeouts, clock: Clock) -> AsyncHTTPSource:
        client = self._async()
        kwargs = self._kwargs(request, timeouts)
        try:
            cm = client.chat.completions.with_streaming_response.create(**kwargs)
            response = await cm.__aenter__()
        except Exception as exc:
            if self._usage_rejected(exc, kwargs):
                return await self.aopen(request, timeouts, clock)
            raise self._error(exc, kwargs["model"], timeouts) from None
        http = response.http_response
        _set_body_timeout(http, timeouts)
        return AsyncHTTPSource(http, clock.now_ns(), self)

    def _usage_rejected(self, exc: Exception, kwargs: Mapping[str, Any]) -> bool:
        """Some servers refuse ``stream_options``: drop it for good and try once more."""
        status = getattr(exc, "status_code", None)
        if status in (400, 422) and "stream_options" in kwargs and "stream_options" in str(exc):
            self.include_usage = False
            return True
        return False

    def _error(self, exc: Exception, model: str, timeouts: Timeouts) -> ProviderError:
        """The SDK's exception as one of ours, with a message that says what to do."""
        import openai

        where = _host(self.base_url)
        if isinstance(exc, openai.APITimeoutError):
            cause = type(exc.__cause__).__name__ if exc.__cause__ else ""
            if "Connect" in cause and timeouts.connect is not None:
                return StreamTimeout("connect", timeouts.connect)
            return StreamTimeout("first_token", timeouts.first_token or 0)
        if isinstance(exc, openai.APIConnectionError):
            reason = exc.__cause__ or exc
            return ConnectError(self.redact(f"could not connect to {where}: {reason}"))
        if isinstance(exc, openai.APIStatusError):
            said = self.redact(_server_message(exc))
            return for_status(exc.status_code, said, where=where, model=model, headers=exc.response.headers)
        return ProviderError(self.redact(f"{type(exc).__name__} from {where}: {exc}"))


class HTTPSource:
    """Chunk dicts read from a streaming HTTP response (sync)."""

    def __init__(self, response: Any, headers_ns: int, provider: OpenAIProvider) -> None:
        self.headers_ns: int | None = headers_ns
        self._response = response
        self._bytes: Iterator[bytes] = response.iter_bytes()
        self._decoder = SSEDecoder()
        self._events: list[SSEEvent] = []
        self._provider = provider
        self._done = False
        self._reading = False
        self._closed = False
        self._lock = threading.Lock()

    def __iter__(self) -> HTTPSource:
        return self

    def __next__(self) -> Mapping[str, Any]:
        while not self._events:
            if self._done:
                self._drain()
            if self._closed or self._done:
                raise StopIteration
            self._reading = True
            try:
                data = next(self._bytes)
            except StopIteration:
                self._decoder.flush()
                raise
            except Exception as exc:
                raise _read_error(exc, self._provider) from None
            finally:
                self._reading = False
            self._events = self._decoder.feed(data)
        chunk = parse_data(self._events.pop(0).data, self._provider.redact)
        self._done = chunk is DONE
        return chunk

    def _drain(self) -> None:
        """Read the end of the body after ``[DONE]`` so the connection can be reused."""
        try:
            for _, _data in zip(range(4), self._bytes, strict=False):
                pass
        except Exception:
            pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._reading:
            # Another thread is blocked in recv(): only shutdown() wakes it, and it
            # sends the FIN at once, so the server sees the hang-up now.
            _shutdown(self._response)
        try:
            self._response.close()
        except Exception:
            _shutdown(self._response)


class AsyncHTTPSource:
    """Chunk dicts read from a streaming HTTP response (async)."""

    def __init__(self, response: Any, headers_ns: int, provider: OpenAIProvider) -> None:
        self.headers_ns: int | None = headers_ns
        self._response = response
        self._bytes = response.aiter_bytes()
        self._decoder = SSEDecoder()
        self._events: list[SSEEvent] = []
        self._provider = provider
        self._done = False
        self._closed = False
        self._reading = False

    def __aiter__(self) -> AsyncHTTPSource:
        return self

    async def __anext__(self) -> Mapping[str, Any]:
        while not self._events:
            if self._done:
                await self._drain()
            if self._closed or self._done:
                raise StopAsyncIteration
            self._reading = True
            try:
                data = await self._bytes.__anext__()
            except StopAsyncIteration:
                self._decoder.flush()
                raise
            except Exception as exc:
                raise _read_error(exc, self._provider) from None
            finally:
                self._reading = False
            self._events = self._decoder.feed(data)
        chunk = parse_data(self._events.pop(0).data, self._provider.redact)
        self._done = chunk is DONE
        return chunk

    async def _drain(self) -> None:
        """Read the end of the body after ``[DONE]`` so the connection can be reused."""
        try:
            for _ in range(4):
                await self._bytes.__anext__()
        except Exception:
            pass

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._reading:
            # closed here, on its loop, rather than by the garbage collector later, maybe after the loop is gone
            with contextlib.suppress(Exception):
                await self._bytes.aclose()
        try:
            await self._response.aclose()
        except Exception:
            _shutdown(self._response)


def _backstop(limit: float | None) -> float | None:
    """A socket read timeout a little past the stream's own limit, so that one fires first."""
    return None if limit is None else limit + 0.25


def _least(*limits: float | None) -> float | None:
    return min((x for x in limits if x is not None), default=None)


def _most(*limits: float | None) -> float | None:
    # None is "no limit": the largest of all.
    return None if None in limits else max(x for x in limits if x is not None)


def _set_body_timeout(response: Any, timeouts: Timeouts) -> None:
    """Headers are in: from now on a read may wait as long as the idle limit allows.

    httpcore reads the body's timeout from this dict when the body starts, so
    changing it here applies to the body only.
    """
    limits = response.request.extensions.get("timeout")
    if isinstance(limits, dict):
        longest_wait = _least(_most(timeouts.first_token, timeouts.idle), timeouts.total)
        limits["read"] = _backstop(longest_wait)


def _read_error(exc: Exception, provider: OpenAIProvider) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    name = type(exc).__name__
    if "Timeout" in name:
        return StreamTimeout("idle", 0)
    if "peer closed connection" in str(exc):  # the common case, said plainly (the bench's client says the same)
        return StreamDropped(f"{BROKE_MID_ANSWER} ({_host(provider.base_url)} closed it)")
    return StreamDropped(provider.redact(f"{BROKE_MID_ANSWER} ({name}: {exc})"))


def _shutdown(response: Any) -> None:
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and inner.get("message"):
            return str(inner["message"])[:200]
    text = str(getattr(exc, "message", "") or exc)
    return text[:200]


def _host(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or url
    return f"{host}:{parts.port}" if parts.port else host
