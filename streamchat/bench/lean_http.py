"""The benchmark's own HTTP/1.1 client for OpenAI-compatible servers: asyncio, no SDK, no HTTP library.

A benchmark client must not become the bottleneck. Through the openai SDK and
httpx, each chunk that arrives on its own costs the event loop about 200 µs
(docs/benchmarks.md), and each request the SDK's work on top; at 256 streams of
20 tokens a second that saturates the loop and every measured time grows
(docs/bench.md). This client writes the request bytes itself and reads the
response in an :class:`asyncio.Protocol`: chunked framing, streamchat's SSE
decoder, ``json.loads``. It yields the same chunk dicts as the OpenAI
provider, so the core turns them into the same events and
:class:`~streamchat.timing.Timings`. It is async only, HTTP/1.1 (``http`` and
``https``), with keep-alive connections pooled per event loop; no proxies.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._chunks import DONE, parse_data
from .._sse import SSEDecoder, SSEEvent
from ..errors import (
    BROKE_MID_ANSWER,
    ConfigError,
    ConnectError,
    ProtocolError,
    ProviderError,
    StreamDropped,
    StreamTimeout,
    for_status,
    redact,
)
from ..messages import ChatRequest
from ..options import Clock, Timeouts

if TYPE_CHECKING:
    from .blocking import OpenAIBlocking

_MAX_HEAD = 64 * 1024


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: bytes in a buffer, a future to wait for more."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def more(self) -> None:
        """Wait until bytes arrive or the connection ends."""
        if self.closed:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        """Hang up (FIN): the server sees the client leave."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class LeanHTTPProvider:
    """Streams from an OpenAI-compatible ``/chat/completions`` endpoint with a minimal client; async only."""

    name = "http"

    def __init__(self, model: str, *, base_url: str, api_key: str | None = None, include_usage: bool = True) -> None:
        if not model:
            raise ConfigError("model is required: the name your server lists at /v1/models")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"base_url must start with http:// or https:// and name a host, got {base_url!r}")
        self.model = model
        self.base_url = base_url
        self.include_usage = include_usage
        self._key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = parts.scheme == "https"
        self._path = parts.path.rstrip("/") + "/chat/completions"
        default_port = (parts.scheme == "https" and self._port == 443) or (parts.scheme == "http" and self._port == 80)
        self._authority = self._host if default_port else f"{self._host}:{self._port}"
        self._idle: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ssl: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return f"LeanHTTPProvider(model={self.model!r}, base_url={self._authority!r}, api_key={'set' if self._key else 'none'})"

    @property
    def where(self) -> str:
        return f"{self._host}:{self._port}"

    def redact(self, text: str) -> str:
        return redact(text, (self._key,))

    def blocking(self) -> OpenAIBlocking:
        """The same endpoint without streaming, for the streamed-vs-blocking comparison."""
        from .blocking import OpenAIBlocking

        return OpenAIBlocking(self.base_url, self._key, self.model)

    def open(self, request: ChatRequest, timeouts: Timeouts, clock: Clock) -> Any:
        raise ConfigError("LeanHTTPProvider is async only: use astream() (as streamchat bench does)")

    async def aopen(self, request: ChatRequest, timeouts: Timeouts, clock: Clock) -> LeanSource:
        payload: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": [m.to_dict() for m in request.messages],
            "stream": True,
            **request.sampling(),
            **_flatten_extra(request.extra),
        }
        if self.include_usage:
            payload["stream_options"] = {"include_usage": True}
        data = self._request_bytes(payload)
        for attempt in range(2):
            conn, reused = await self._connection(timeouts)
            try:
                conn.write(data)
                status, headers = await self._read_head(conn)
                if status == 200:
                    return LeanSource(conn, headers, clock.now_ns(), self)
                body = await _read_body(conn, headers)
            except StreamDropped:
                conn.close()
                if reused and attempt == 0:
                    continue  # the server had closed the idle connection: send again on a new one
                raise
            except BaseException:
                conn.close()  # a time limit or a cancel while waiting: hang up
                raise
            conn.close()
            if status in (400, 422) and self.include_usage and b"stream_options" in body:
                self.include_usage = False  # a server that refuses it: never ask again
                return await self.aopen(request, timeouts, clock)
            raise self._error(status, headers, body, payload["model"])
        raise StreamDropped(f"{self.where} closed the connection before answering")

    def _request_bytes(self, payload: Mapping[str, Any]) -> bytes:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        auth = f"Authorization: Bearer {self._key}\r\n" if self._key else ""
        head = (
            f"POST {self._path} HTTP/1.1\r\nHost: {self._authority}\r\nUser-Agent: streamchat-bench\r\n"
            f"Accept: text/event-stream\r\nContent-Type: application/json\r\n{auth}Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode("latin-1") + body

    async def _connection(self, timeouts: Timeouts) -> tuple[_Connection, bool]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._idle = []  # connections of another (finished) loop cannot be used here
            self._loop = loop
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and not conn.buf:
                return conn, True
            conn.close()
        if self._tls and self._ssl is None:
            self._ssl = ssl.create_default_context()  # once: loading the CA certificates is slow
        context = self._ssl if self._tls else None
        try:
            async with asyncio.timeout(timeouts.connect):
                _, conn = await loop.create_connection(
                    _Connection, self._host, self._port, ssl=context, server_hostname=self._host if self._tls else None
                )
        except TimeoutError:
            raise StreamTimeout("connect", timeouts.connect or 0) from None
        except OSError as exc:
            raise ConnectError(self.redact(f"could not connect to {self.where}: {exc}")) from None
        return conn, False

    async def _read_head(self, conn: _Connection) -> tuple[int, dict[str, str]]:
        while (end := conn.buf.find(b"\r\n\r\n")) < 0:
            if conn.closed:
                raise StreamDropped(f"{self.where} closed the connection before sending headers")
            if len(conn.buf) > _MAX_HEAD:
                raise ProtocolError(f"{self.where} sent more than 64 KiB of headers")
            await conn.more()
        lines = bytes(conn.buf[:end]).decode("latin-1").split("\r\n")
        del conn.buf[: end + 4]
        version, _, rest = lines[0].partition(" ")
        code = rest.split(" ", 1)[0]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ProtocolError(f"{self.where} did not answer in HTTP/1.1: {lines[0][:60]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if int(code) == 100:
            return await self._read_head(conn)
        return int(code), headers

    def _error(self, status: int, headers: Mapping[str, str], body: bytes, model: str) -> ProviderError:
        return for_status(status, self.redact(_server_message(body)), where=self.where, model=model, headers=headers)

    def _done_with(self, conn: _Connection, reusable: bool) -> None:
        if reusable and not conn.closed and asyncio.get_running_loop() is self._loop:
            self._idle.append(conn)
        else:
            conn.close()

    async def release(self) -> None:
        """Close the idle connections (they belong to the running event loop)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        self._loop = None
        await asyncio.sleep(0)  # let the transports finish closing in this loop


class LeanSource:
    """Chunk dicts from one streamed response; ``aclose()`` hangs up unless the answer is complete."""

    def __init__(self, conn: _Connection, headers: Mapping[str, str], headers_ns: int, provider: LeanHTTPProvider) -> None:
        self.headers_ns: int | None = headers_ns
        self._conn: _Connection | None = conn
        self._provider = provider
        self._body = _Body(headers)
        self._keep = headers.get("connection", "").lower() != "close"
        self._decoder = SSEDecoder()
        self._events: list[SSEEvent] = []
        self._done = False
        self._finished = False

    def __aiter__(self) -> LeanSource:
        return self

    async def __anext__(self) -> Mapping[str, Any]:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        while not self._events:
            if self._done or self._finished:
                await self._finish(conn)
                raise StopAsyncIteration
            payload = self._body.take(conn.buf)
            if payload:
                self._events = self._decoder.feed(payload)
                continue
            if self._body.complete:
                self._finished = True
                continue
            if conn.closed:
                if self._body.until_close:
                    self._finished = True
                    continue
                raise StreamDropped(f"{BROKE_MID_ANSWER} ({self._provider.where} closed it)")
            await conn.more()
        chunk = parse_data(self._events.pop(0).data, self._provider.redact)
        self._done = chunk is DONE
        return chunk

    async def _finish(self, conn: _Connection) -> None:
        """Read the rest of the body (the terminating chunk) so the connection can be reused."""
        while not self._body.complete and not conn.closed:
            self._body.take(conn.buf)
            if self._body.complete:
                break
            await conn.more()
        self._finished = True

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        complete = self._body.complete and self._keep and not conn.buf
        self._provider._done_with(conn, complete)


class _Body:
    """Undoes the response framing: chunked, a Content-Length, or until the connection closes."""

    __slots__ = ("_left", "_trailer", "chunked", "complete", "until_close")

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self.until_close = not self.chunked and length is None
        self._left = 0 if self.chunked or length is None else int(length)
        self._trailer = False
        self.complete = not self.chunked and length is not None and self._left == 0

    def take(self, buf: bytearray) -> bytes:
        """Remove from ``buf`` the body bytes it holds; return them (possibly empty)."""
        if self.complete:
            return b""
        if not self.chunked:
            if self.until_close:
                out = bytes(buf)
                buf.clear()
                return out
            out = bytes(buf[: self._left])
            del buf[: self._left]
            self._left -= len(out)
            self.complete = self._left == 0
            return out
        taken = bytearray()
        while True:
            if self._trailer:
                end = buf.find(b"\r\n")
                if end < 0:
                    break
                del buf[: end + 2]
                if end == 0:  # the blank line that ends the trailers
                    self.complete = True
                    break
                continue
            if self._left > 0:
                part = buf[: self._left]
                taken += part
                del buf[: len(part)]
                self._left -= len(part)
                if self._left:
                    break
                self._left = -2  # the CRLF after the data
            if self._left == -2:
                if len(buf) < 2:
                    break
                del buf[:2]
                self._left = 0
            end = buf.find(b"\r\n")
            if end < 0:
                break
            size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_text[:20]!r} in the response") from None
            del buf[: end + 2]
            if size == 0:
                self._trailer = True
            else:
                self._left = size
        return bytes(taken)


async def _read_body(conn: _Connection, headers: Mapping[str, str]) -> bytes:
    """A whole (error) body, at most 64 KiB."""
    body = _Body(headers)
    out = bytearray()
    while not body.complete and len(out) < _MAX_HEAD:
        out += body.take(conn.buf)
        if body.complete or conn.closed:
            break
        await conn.more()
    return bytes(out)


def _flatten_extra(extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` as the SDK would send it: ``extra_body`` merged into the body, the rest as is."""
    out = {k: v for k, v in extra.items() if k not in ("extra_body", "extra_headers", "extra_query")}
    body = extra.get("extra_body")
    if isinstance(body, Mapping):
        out.update(body)
    return out


def _server_message(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:200] or "no message"
    inner = parsed.get("error", parsed) if isinstance(parsed, Mapping) else parsed
    if isinstance(inner, Mapping) and inner.get("message"):
        return str(inner["message"])[:200]
    return json.dumps(parsed)[:200]


