"""A real loopback HTTP/1.1 server speaking the OpenAI chat-completions stream format."""

from __future__ import annotations

import http
import json
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ConnectionRecord", "Reply", "Request", "Step", "WireServer", "chunk", "comment",
    "data", "done", "drop", "error_reply", "raw", "sleep", "text_reply", "usage_chunk",
]

_CREATED = 1_700_000_000  # fixed so builders stay pure
_USAGE_PROMPT_TOKENS = 10
_MAX_HEAD = 64 * 1024
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}


@dataclass(frozen=True)
class Step:
    """One action taken while streaming a response body."""

    kind: Literal["data", "raw", "sleep", "drop", "comment"]
    value: object = None


def data(obj: object) -> Step:
    """Send ``data: <json>`` followed by a blank line."""
    return Step("data", obj)


def raw(b: bytes) -> Step:
    """Write ``b`` verbatim as one HTTP chunk."""
    return Step("raw", bytes(b))


def sleep(s: float) -> Step:
    """Stall for ``s`` seconds while watching for the client hanging up."""
    return Step("sleep", float(s))


def drop() -> Step:
    """Close the connection mid-body, without the terminating chunk."""
    return Step("drop")


def comment(text: str = "ping") -> Step:
    """Send an SSE comment line ``: text``."""
    return Step("comment", text)


def done() -> Step:
    """Send the ``data: [DONE]`` sentinel."""
    return raw(b"data: [DONE]\n\n")


@dataclass(frozen=True)
class Reply:
    """What the server answers to one chat-completions request."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    steps: tuple[Step, ...] = ()
    body: object | None = None  # JSON body (bytes/str are sent verbatim); steps then ignored
    headers_delay: float = 0.0
    line_ending: str = "\n"


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request, as received by the server."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    index: int

    def json(self) -> Any:
        """Decode the body as JSON."""
        return json.loads(self.body)


@dataclass(kw_only=True)
class ConnectionRecord:
    """Server-side timeline of one client connection (updated by its thread)."""

    request_indexes: list[int] = field(default_factory=list)
    opened_ns: int
    client_closed_ns: int | None = None  # None if the server closed first (drop/stop)
    finished_body_ns: int | None = None
    closed_event: threading.Event = field(default_factory=threading.Event)


def chunk(
    content: str | None = None, *, reasoning: str | None = None,
    reasoning_field: str = "reasoning_content", role: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None, finish_reason: str | None = None,
    model: str = "test-model", id: str = "chatcmpl-test",
) -> dict[str, Any]:
    """Build a ``chat.completion.chunk`` dict whose delta holds only the given keys."""
    fields = (("role", role), ("content", content), (reasoning_field, reasoning),
              ("tool_calls", tool_calls))
    delta = {k: v for k, v in fields if v is not None}
    return {
        "id": id, "object": "chat.completion.chunk", "created": _CREATED, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def usage_chunk(
    prompt_tokens: int, completion_tokens: int, *, model: str = "test-model",
    id: str = "chatcmpl-test",
) -> dict[str, Any]:
    """Build the final usage-only chunk (empty ``choices``)."""
    return {
        "id": id, "object": "chat.completion.chunk", "created": _CREATED, "model": model,
        "choices": [], "usage": {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def text_reply(
    tokens: Sequence[str], *, gap: float = 0.0, ttft: float = 0.0, usage: bool = True,
    role_first: bool = True, finish_reason: str = "stop", line_ending: str = "\n",
) -> Reply:
    """The realistic happy path: role chunk, token chunks, finish, usage, [DONE]."""
    steps: list[Step] = []
    if role_first:
        steps.append(data(chunk("", role="assistant")))
    if ttft > 0:
        steps.append(sleep(ttft))
    for i, token in enumerate(tokens):
        if i and gap > 0:
            steps.append(sleep(gap))
        steps.append(data(chunk(token)))
    steps.append(data(chunk(finish_reason=finish_reason)))
    if usage:
        steps.append(data(usage_chunk(_USAGE_PROMPT_TOKENS, len(tokens))))
    steps.append(raw(f"data: [DONE]{line_ending}{line_ending}".encode()))
    return Reply(steps=tuple(steps), line_ending=line_ending)


def error_reply(
    status: int, message: str, *, type_: str = "invalid_request_error",
    code: str | None = None, headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    """A non-streamed OpenAI-style JSON error."""
    err = {"message": message, "type": type_, "param": None, "code": code}
    return Reply(status=status, headers=headers, body={"error": err})


Script = Callable[[Request], Reply] | Sequence[Reply] | Reply | None


class _Hangup(Exception):
    """The client went away, or the server is stopping: abandon the connection."""


class WireServer:
    """Scriptable OpenAI-compatible streaming server on 127.0.0.1 (one thread per connection)."""

    def __init__(self, replies: Script = None, *, models: Sequence[str] = ("test-model",)) -> None:
        self.models = tuple(models)
        self.requests: list[Request] = []
        self.connections: list[ConnectionRecord] = []
        self._cond = threading.Condition()
        self._script: Callable[[Request], Reply] | tuple[Reply, ...] = ()
        self._seq_pos = 0
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._stopping = False
        self.set_replies(replies)

    @property
    def port(self) -> int:
        """The bound port (after ``start``)."""
        if self._listener is None:
            raise RuntimeError("WireServer not started")
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        """Base URL for the openai SDK, ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def set_replies(self, replies: Script) -> None:
        """Swap the script; a sequence restarts from its first reply."""
        if replies is None:
            replies = text_reply(["Hello", ",", " world", "!"])
        script = (replies,) if isinstance(replies, Reply) else replies
        if not callable(script):
            script = tuple(script)
            if not script:
                raise ValueError("replies sequence is empty")
        with self._cond:
            self._script, self._seq_pos = script, 0

    def start(self) -> WireServer:
        """Bind an ephemeral loopback port and start accepting."""
        if self._listener is not None or self._stopping:
            raise RuntimeError("WireServer can only be started once")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self._spawn(self._accept_loop, "accept")
        return self

    def stop(self) -> None:
        """Close everything and join the threads; safe to call twice."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            for s in self._socks:
                try:  # wakes a thread blocked in sendall
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._wake_w.send(b"x")
        deadline = time.monotonic() + 2.0
        with self._cond:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> WireServer:
        return self if self._listener is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:
        """Block until at least ``n`` requests have been received."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"got {len(self.requests)} requests, expected {n} within {timeout}s")

    def wait_closed(self, request_index: int = -1, timeout: float = 2.0) -> ConnectionRecord:
        """Block until the connection that served ``request_index`` has ended."""
        deadline = time.monotonic() + timeout
        need = request_index + 1 if request_index >= 0 else -request_index
        self.wait_for_requests(need, timeout)
        with self._cond:
            idx = request_index % len(self.requests)
            record = next(c for c in self.connections if idx in c.request_indexes)
        if not record.closed_event.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"connection serving request {idx} still open after {timeout}s")
        return record

    # -- server side ------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=f"wire-server:{self.port}:{name}", daemon=True)
        with self._cond:  # prune so long benchmarks don't accumulate dead threads
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                sel.select()
                try:
                    sock, _ = self._listener.accept()
                except (BlockingIOError, OSError):
                    continue
                sock.setblocking(True)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                record = ConnectionRecord(opened_ns=time.perf_counter_ns())
                with self._cond:
                    if self._stopping:
                        sock.close()
                        break
                    self.connections.append(record)
                    self._socks.append(sock)
                    n = len(self.connections) - 1
                self._spawn(self._serve_connection, f"conn-{n}", sock, record)

    def _serve_connection(self, sock: socket.socket, record: ConnectionRecord) -> None:
        conn = _Conn(self, sock, record)
        try:
            while conn.serve_one():
                pass
        except _Hangup:
            pass
        finally:
            with self._cond:
                sock.close()  # under the lock so stop() never shuts down a reused fd
                self._socks.remove(sock)
            conn.sel.close()
            record.closed_event.set()

    def _record_request(self, method: str, path: str, headers: dict[str, str], body: bytes,
                        record: ConnectionRecord) -> Request:
        with self._cond:
            req = Request(method, path, headers, body, len(self.requests))
            self.requests.append(req)
            record.request_indexes.append(req.index)
            self._cond.notify_all()
        return req

    def _reply_for(self, req: Request) -> Reply:
        route = req.path.split("?", 1)[0].rstrip("/")
        if route == "/v1/models" and req.method == "GET":
            models = [{"id": m, "object": "model", "created": _CREATED, "owned_by": "streamchat"}
                      for m in self.models]
            return Reply(body={"object": "list", "data": models})
        if route == "/v1/chat/completions" and req.method == "POST":
            with self._cond:
                script = self._script
                if isinstance(script, tuple):
                    self._seq_pos += 1
                    return script[min(self._seq_pos, len(script)) - 1]
            try:
                return script(req)
            except Exception as exc:  # surface script bugs to the client instead of hanging
                return error_reply(500, f"wire_server script raised {exc!r}", type_="server_error")
        if route in ("/v1/models", "/v1/chat/completions"):
            return error_reply(405, f"method {req.method} not allowed for {route}")
        return error_reply(404, f"unknown path {req.path}", type_="not_found_error")


class _Conn:
    """Per-connection state: buffered reads and hang-up aware waits/writes."""

    def __init__(self, server: WireServer, sock: socket.socket, record: ConnectionRecord) -> None:
        self.server, self.sock, self.record = server, sock, record
        self.buf = bytearray()
        self.keep_alive = True
        self.sel = selectors.DefaultSelector()
        self.sel.register(sock, selectors.EVENT_READ)
        self.sel.register(server._wake_r, selectors.EVENT_READ)

    def _hung_up(self) -> _Hangup:
        if not self.server._stopping and self.record.client_closed_ns is None:
            self.record.client_closed_ns = time.perf_counter_ns()
        return _Hangup()

    def wait(self, seconds: float | None) -> None:
        """Wait ``seconds`` (None: until readable), raising _Hangup on EOF/reset/stop."""
        deadline = None if seconds is None else time.perf_counter() + seconds
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.perf_counter())
            events = self.sel.select(remaining)
            if self.server._stopping:
                raise _Hangup()
            if events:
                try:  # reading (not peeking) keeps a pipelined request from spinning us
                    got = self.sock.recv(65536)
                except OSError:
                    raise self._hung_up() from None
                if not got:
                    raise self._hung_up()
                self.buf += got
                if deadline is None:
                    return
            elif remaining is not None and remaining <= 0:
                return

    def send(self, payload: bytes) -> None:
        self.wait(0)  # notice a hang-up even when no sleep step gives us the chance
        try:
            self.sock.sendall(payload)
        except OSError:
            raise self._hung_up() from None

    def read_request(self) -> Request:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if len(self.buf) > _MAX_HEAD:
                raise _Hangup()
            self.wait(None)
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        method, path, version = [*head[0].split(" ", 2), "", ""][:3]
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():  # chunked request bodies are not needed by any client we test
            raise _Hangup()
        length = int(length_text)
        while len(self.buf) < length:
            self.wait(None)
        body = bytes(self.buf[:length])
        del self.buf[:length]
        self.keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        return self.server._record_request(method, path, headers, body, self.record)

    def serve_one(self) -> bool:
        """Serve one request; return whether the connection stays open."""
        reply = self.server._reply_for(self.read_request())
        if reply.headers_delay > 0:
            self.wait(reply.headers_delay)
        keep = self.keep_alive and ("connection", "close") not in {
            (k.lower(), v.lower()) for k, v in reply.headers}
        streamed, body, payload = reply.body is None, reply.body, b""
        if streamed:
            hdrs = [("Content-Type", "text/event-stream; charset=utf-8"),
                    ("Cache-Control", "no-cache"), ("Transfer-Encoding", "chunked")]
        else:
            payload = body if isinstance(body, bytes) else (
                body.encode() if isinstance(body, str) else json.dumps(body).encode())
            hdrs = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        hdrs.append(("Connection", "keep-alive" if keep else "close"))
        overridden = {k.lower() for k, _ in reply.headers}
        hdrs = [h for h in hdrs if h[0].lower() not in overridden] + list(reply.headers)
        lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}"]
        lines += [f"{k}: {v}" for k, v in hdrs]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        if streamed:
            for step in reply.steps:
                if not self.run_step(step, reply.line_ending):
                    return False
            self.send(b"0\r\n\r\n")
        self.record.finished_body_ns = time.perf_counter_ns()
        return keep

    def run_step(self, step: Step, le: str) -> bool:
        """Execute one body step; False means the server dropped the connection."""
        if step.kind == "sleep":
            assert isinstance(step.value, (int, float))
            self.wait(float(step.value))
            return True
        if step.kind == "drop":
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return False
        if step.kind == "data":
            text = json.dumps(step.value, ensure_ascii=False, separators=(",", ":"))
            payload = f"data: {text}{le}{le}".encode()
        elif step.kind == "comment":
            payload = f": {step.value}{le}{le}".encode()
        else:
            assert isinstance(step.value, bytes)
            payload = step.value
        if payload:  # an empty chunk would terminate the body
            self.send(b"%x\r\n%s\r\n" % (len(payload), payload))
        return True
