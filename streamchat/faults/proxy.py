"""The fault proxy: an HTTP/1.1 proxy for OpenAI-compatible servers that breaks streams on purpose.

It sits between any client and any server. Requests without a fault pass
through byte for byte. A fault comes from the proxy's schedule or, for one
request, from the ``X-Streamchat-Fault`` header (removed before forwarding).
Every injection is logged as one JSON line. Built on asyncio streams rather
than an ASGI server because a fault proxy must control the bytes: cut a
connection with no terminating chunk, stall mid-body, split a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._sse import SSEDecoder, encode_sse
from ..errors import ConfigError
from .spec import FaultSpec, Injector, Schedule, parse

if TYPE_CHECKING:
    import httpx2

HEADER = "x-streamchat-fault"
_READ_AHEAD = 64  # pieces of the upstream's body read before they are sent on
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "proxy-connection", "te", "upgrade", HEADER}


class _Hangup(Exception):
    """The client went away."""


class FaultProxy:
    """Listens on ``host:port`` and forwards to ``upstream`` (e.g. ``http://127.0.0.1:8000/v1``)."""

    def __init__(
        self,
        upstream: str,
        injector: Injector | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        client: httpx2.AsyncClient | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"upstream must be an http(s) URL, not {upstream!r}")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.prefix = parts.path.rstrip("/")
        self.injector = injector or Injector(FaultSpec(), Schedule(every=1, times=0))
        self.host, self.port = host, port
        self._client = client
        self._log = log or (lambda line: None)
        self._keep_lines = log is None  # a long-running proxy must not grow
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.log_lines: list[str] = []
        """The injections' log lines, kept when no ``log`` callback takes them (tests read them)."""
        self.chat_requests = 0
        """Chat-completion requests received, injected or not."""

    @property
    def url(self) -> str:
        """The base URL clients use instead of the upstream's."""
        return f"http://{self.host}:{self.port}{self.prefix}"

    async def start(self) -> FaultProxy:
        if self._client is None:
            import httpx2

            self._client = httpx2.AsyncClient(timeout=httpx2.Timeout(None, connect=10.0))
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def pause(self) -> None:
        """Stop listening and drop every connection: the host is now unreachable (connection refused)."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            # a task stalled in a sleep would outlive the loop and be torn down by the GC, outside it
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def resume(self) -> None:
        """Listen again on the same port after :meth:`pause`."""
        if self._server is None:
            self._server = await asyncio.start_server(self._connection, self.host, self.port)

    async def aclose(self) -> None:
        await self.pause()
        if self._client is not None:
            await self._client.aclose()

    def _note(self, number: int, spec: FaultSpec, what: str) -> None:
        line = json.dumps({"t": round(time.time(), 3), "request": number, "fault": spec.describe(), "did": what})
        if self._keep_lines:
            self.log_lines.append(line)
        self._log(line)

    # -- one client connection, possibly several requests ----------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, _Hangup, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.transport.abort()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = [*lines[0].split(" ", 2), "", ""][:3]
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
        lower = {k.lower(): v for k, v in headers}
        body = await reader.readexactly(int(lower.get("content-length", "0") or 0))
        if method == "POST" and path.split("?", 1)[0].endswith("/chat/completions"):
            self.chat_requests += 1
        number = self.injector.requests + 1
        if HEADER in lower:
            try:
                spec: FaultSpec | None = parse(lower[HEADER])[0]
            except ConfigError as exc:
                await _send_json(writer, 400, {"error": {"message": str(exc), "type": "bad_fault_header"}})
                return True
            self.injector.requests += 1
        else:
            spec = self.injector.next()
        if spec is not None and spec.headers_delay_s:
            self._note(number, spec, f"delayed headers {spec.headers_delay_s:g} s")
            await _wait_or_hangup(reader, spec.headers_delay_s)
        if spec is not None and spec.status:
            self._note(number, spec, f"answered HTTP {spec.status}")
            extra = [("Retry-After", f"{spec.retry_after:g}")] if spec.retry_after is not None else []
            body_json = {"error": {"message": spec.message, "type": "injected", "code": spec.status}}
            await _send_json(writer, spec.status, body_json, extra)
            return True
        forward = [(k, v) for k, v in headers if k.lower() not in _HOP]
        assert self._client is not None
        request = self._client.build_request(method, self.origin + path, headers=forward, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except Exception as exc:
            await _send_json(writer, 502, {"error": {"message": f"upstream unreachable: {type(exc).__name__}", "type": "proxy"}})
            return True
        try:
            return await self._relay(reader, writer, response, spec, number)
        finally:
            await response.aclose()

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: Any, spec: FaultSpec | None, number: int
    ) -> bool:
        out = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _HOP]
        status_line = f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n"
        head = status_line + "".join(f"{k}: {v}\r\n" for k, v in out) + "Transfer-Encoding: chunked\r\n\r\n"
        writer.write(head.encode("latin-1"))
        is_sse = response.headers.get("content-type", "").startswith("text/event-stream")
        watcher = asyncio.create_task(_hangup(reader))
        pump = asyncio.create_task(
            self._body(writer, response, spec, number) if spec is not None and is_sse else _raw(writer, response)
        )
        try:
            done, _ = await asyncio.wait({watcher, pump}, return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:  # the client hung up: stop reading upstream now
                raise _Hangup
            return pump.result()
        finally:  # also when this connection is cancelled (the proxy closing): no task may outlive it
            for task in (watcher, pump):
                task.cancel()
            for task in (watcher, pump):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _body(self, writer: asyncio.StreamWriter, response: Any, spec: FaultSpec, number: int) -> bool:
        decoder = SSEDecoder()
        sent = 0
        gap = 1.0 / spec.tokens_per_s if spec.tokens_per_s > 0 else 0.0
        last = 0.0
        shift = 0.0  # how far the first-chunk delay has pushed the upstream's timeline back
        flowing = asyncio.Event()
        flowing.set()
        async with contextlib.aclosing(_arrivals(response, flowing)) as body:
            async for arrived, data in body:
                for event in decoder.feed(data):
                    if event.data != "[DONE]":
                        if sent == spec.disconnect_after:
                            self._note(number, spec, f"disconnected after {sent} chunks")
                            writer.transport.abort()
                            return False
                        if sent == spec.stall_after:
                            self._note(number, spec, f"stalled {spec.stall_s:g} s after {sent} chunks")
                            # a stalled server sends nothing: stop reading too, so its connection
                            # is still open (and closed when the client hangs up)
                            flowing.clear()
                            await asyncio.sleep(spec.stall_s)
                            flowing.set()
                        if sent == spec.malformed_after:
                            self._note(number, spec, f"sent a malformed chunk after {sent} chunks")
                            await _chunk(writer, b"data: {\"choices\": [{\"delta\": {\"content\n\n")
                        if sent == spec.error_after:
                            self._note(number, spec, f"sent an error event after {sent} chunks")
                            payload = json.dumps({"error": {"message": spec.message, "type": "injected"}})
                            await _chunk(writer, encode_sse(payload))
                            await _chunk(writer, b"")
                            return False
                        if sent == 0 and spec.ttft_delay_s:
                            self._note(number, spec, f"delayed the first chunk {spec.ttft_delay_s:g} s")
                            await asyncio.sleep(spec.ttft_delay_s)
                            shift += spec.ttft_delay_s
                        if gap:
                            now = time.perf_counter()
                            if now - last < gap:
                                await asyncio.sleep(gap - (now - last))
                            last = time.perf_counter()
                        sent += 1
                    if shift and (wait := arrived + shift - time.perf_counter()) > 0:
                        # what queued up meanwhile leaves at the upstream's own pace, not in one burst
                        await asyncio.sleep(wait)
                    await _chunk(writer, encode_sse(event.data, event=None if event.event == "message" else event.event, id=event.id))
        await _chunk(writer, b"")
        return True


async def _arrivals(response: Any, flowing: asyncio.Event) -> AsyncGenerator[tuple[float, bytes], None]:
    """The body's pieces with the moment each arrived, read ahead (while ``flowing`` is set) so that
    a delay of ours does not move that clock."""
    # Bounded, so that a long delay leaves the rest of a long answer upstream, its connection open.
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_READ_AHEAD)

    async def read() -> None:
        try:
            async with contextlib.aclosing(response.aiter_raw()) as body:
                async for data in body:
                    await queue.put((time.perf_counter(), data))
                    await flowing.wait()
        except Exception:
            await queue.put(None)  # the consumer wakes, and gets this error from `await reader`
            raise
        await queue.put(None)

    reader = asyncio.create_task(read())
    try:
        while (item := await queue.get()) is not None:
            yield item
        await reader  # its error, if the upstream failed
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


async def _raw(writer: asyncio.StreamWriter, response: Any) -> bool:
    async with contextlib.aclosing(response.aiter_raw()) as body:
        async for data in body:
            await _chunk(writer, data)
    await _chunk(writer, b"")
    return True


async def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    """One HTTP chunk; an empty one ends the body."""
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    await writer.drain()


async def _hangup(reader: asyncio.StreamReader) -> None:
    """Returns when the client closes its side (it sends nothing while it waits)."""
    try:
        while await reader.read(4096):
            pass
    except ConnectionError:
        pass


async def _wait_or_hangup(reader: asyncio.StreamReader, seconds: float) -> None:
    try:
        await asyncio.wait_for(_hangup(reader), seconds)
    except TimeoutError:
        return
    raise _Hangup


async def _send_json(writer: asyncio.StreamWriter, status: int, body: object, extra: list[tuple[str, str]] | None = None) -> None:
    data = json.dumps(body).encode()
    head = f"HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in extra or []) + "\r\n"
    writer.write(head.encode("latin-1") + data)
    await writer.drain()


class ProxyThread:
    """A :class:`FaultProxy` on its own event loop in a daemon thread, driven from sync code."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="streamchat-faults", daemon=True)
        self._ready = threading.Event()
        self._failed: BaseException | None = None

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def log_lines(self) -> list[str]:
        return self.proxy.log_lines

    def arm(self, spec: str) -> Injector:
        """From now on inject ``spec`` (with its schedule); returns the injector, which counts requests."""
        injector = Injector(*parse(spec)) if spec else Injector(FaultSpec(), Schedule(times=0))
        self.proxy.injector = injector
        return injector

    def pause(self) -> None:
        """The host becomes unreachable: connections are refused until :meth:`resume`."""
        self._call(self.proxy.pause())

    def resume(self) -> None:
        self._call(self.proxy.resume())

    def start(self) -> ProxyThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start within 10 s")
        if self._failed is not None:
            raise RuntimeError(f"the fault proxy did not start: {self._failed}") from self._failed
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self.proxy.aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_closed() and not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.proxy.start())
        except BaseException as exc:
            self._failed = exc
            return
        finally:
            self._ready.set()
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)


def running(upstream: str, spec: str = "", **kwargs: Any) -> ProxyThread:
    """A proxy on its own event loop in a thread, for sync code and tests: use it with ``with``."""
    injector = Injector(*parse(spec)) if spec else None
    return ProxyThread(FaultProxy(upstream, injector, **kwargs))
