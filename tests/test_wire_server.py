"""Self-tests for the loopback OpenAI wire server, using real sockets."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from streamchat.testing.wire_server import (
    Reply,
    Request,
    WireServer,
    chunk,
    comment,
    data,
    done,
    drop,
    error_reply,
    raw,
    sleep,
    text_reply,
)


@pytest.fixture
def server() -> Iterator[WireServer]:
    with WireServer() as srv:
        yield srv


def _post_raw(srv: WireServer, payload: object | None = None) -> socket.socket:
    body = json.dumps(payload or {"model": "test-model", "messages": [], "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    return sock


class _RawResponse:
    """Minimal chunked-response reader that keeps each HTTP chunk separate."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""
        head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        self.status = int(head[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}

    def _fill(self) -> bool:
        got = self.sock.recv(65536)
        self.buf += got
        return bool(got)

    def _until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            if not self._fill():
                raise EOFError
        out, self.buf = self.buf.split(sep, 1)
        return out

    def next_chunk(self) -> bytes | None:
        """Next chunk payload; None at the terminating chunk; EOFError if cut short."""
        size = int(self._until(b"\r\n"), 16)
        while len(self.buf) < size + 2:
            if not self._fill():
                raise EOFError
        payload, self.buf = self.buf[:size], self.buf[size + 2 :]
        return payload if size else None

    def chunks(self) -> tuple[list[bytes], bool]:
        """All chunk payloads and whether the body was properly terminated."""
        out: list[bytes] = []
        try:
            while (c := self.next_chunk()) is not None:
                out.append(c)
        except EOFError:
            return out, False
        return out, True


def _events(body: bytes) -> list[object]:
    out: list[object] = []
    for block in body.decode().replace("\r\n", "\n").split("\n\n"):
        if block.startswith("data: "):
            text = block[len("data: ") :]
            out.append(text if text == "[DONE]" else json.loads(text))
    return out


def test_happy_path_stream(server: WireServer) -> None:
    with _post_raw(server) as sock:
        resp = _RawResponse(sock)
        chunks, complete = resp.chunks()
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["transfer-encoding"] == "chunked"
    assert complete
    events = _events(b"".join(chunks))
    assert events[-1] == "[DONE]"
    first = events[0]
    assert isinstance(first, dict) and first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-1]
                      if isinstance(e, dict) and e["choices"])
    assert content == "Hello, world!"
    usage = events[-2]
    assert isinstance(usage, dict) and usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 4
    assert server.requests[0].json()["stream"] is True


def test_crlf_and_split_multibyte(server: WireServer) -> None:
    server.set_replies(text_reply(["x"], line_ending="\r\n"))
    with _post_raw(server) as sock:
        body = b"".join(_RawResponse(sock).chunks()[0])
    assert body.count(b"\r\n\r\n") == 5 and b"\n\n" not in body.replace(b"\r\n", b"")
    assert body.replace(b"\r\n", b"").count(b"\n") == 0

    server.set_replies(Reply(steps=(comment(), raw(b'data: {"c":"\xc3'), raw(b'\xa9"}\n\n'), done()),
                             line_ending="\r\n"))
    with _post_raw(server) as sock:
        chunks, complete = _RawResponse(sock).chunks()
    assert complete and chunks[0] == b": ping\r\n\r\n"
    assert chunks[1].endswith(b"\xc3") and chunks[2].startswith(b"\xa9")
    assert _events(b"".join(chunks)) == [{"c": "é"}, "[DONE]"]


def test_error_reply_status_body_and_headers(server: WireServer) -> None:
    server.set_replies(error_reply(429, "slow down", type_="rate_limit_error",
                                   code="rate_limit_exceeded", headers=(("Retry-After", "1"),)))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
    conn.request("POST", "/v1/chat/completions", body=b"{}", headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 429
    assert resp.getheader("Retry-After") == "1"
    assert resp.getheader("Content-Type") == "application/json"
    assert json.loads(body) == {"error": {"message": "slow down", "type": "rate_limit_error",
                                          "param": None, "code": "rate_limit_exceeded"}}
    conn.request("GET", "/v1/nope")
    resp = conn.getresponse()
    assert resp.status == 404 and "error" in json.loads(resp.read())
    conn.close()
    assert len(server.connections) == 1  # keep-alive reused the socket


def test_models_endpoint() -> None:
    with WireServer(models=("a", "b")) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=2)
        conn.request("GET", "/v1/models")
        resp = conn.getresponse()
        assert resp.status == 200
        assert [m["id"] for m in json.loads(resp.read())["data"]] == ["a", "b"]
        conn.close()


def test_hangup_during_sleep_detected_quickly(server: WireServer) -> None:
    server.set_replies(Reply(steps=(data(chunk("a")), sleep(5), data(chunk("b")))))
    sock = _post_raw(server)
    resp = _RawResponse(sock)
    assert b'"a"' in (resp.next_chunk() or b"")  # server is now inside the 5 s stall
    t_close_ns = time.perf_counter_ns()
    sock.close()
    record = server.wait_closed(0, timeout=1.0)
    assert record.client_closed_ns is not None
    assert 0 <= record.client_closed_ns - t_close_ns < 100e6
    assert record.finished_body_ns is None
    name = f"wire-server:{server.port}:conn-0"
    deadline = time.monotonic() + 1.0
    while any(t.name == name for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not any(t.name == name for t in threading.enumerate())


def test_idle_keepalive_close_recorded(server: WireServer) -> None:
    sock = _post_raw(server)
    assert _RawResponse(sock).chunks()[1]
    record = server.connections[0]
    deadline = time.monotonic() + 1.0  # the stamp lands just after the last byte is written
    while record.finished_body_ns is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert record.finished_body_ns is not None and not record.closed_event.is_set()
    t_close_ns = time.perf_counter_ns()
    sock.close()
    record = server.wait_closed(-1, timeout=1.0)
    assert record.client_closed_ns is not None and record.client_closed_ns >= t_close_ns


def test_drop_gives_incomplete_chunked_body(server: WireServer) -> None:
    server.set_replies(Reply(steps=(data(chunk("a")), drop(), data(chunk("never")))))
    with _post_raw(server) as sock:
        chunks, complete = _RawResponse(sock).chunks()
    assert not complete and len(chunks) == 1
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
    conn.request("POST", "/v1/chat/completions", body=b"{}")
    with pytest.raises(http.client.IncompleteRead):
        conn.getresponse().read()
    conn.close()
    record = server.wait_closed(0, timeout=1.0)
    assert record.client_closed_ns is None  # the server hung up first


def test_stop_is_idempotent_and_joins_threads() -> None:
    srv = WireServer(Reply(steps=(sleep(5),))).start()
    prefix = f"wire-server:{srv.port}:"
    busy = _post_raw(srv)
    idle = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
    srv.wait_for_requests(1)
    deadline = time.monotonic() + 1.0
    while len(srv.connections) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert sum(t.name.startswith(prefix) for t in threading.enumerate()) == 3
    t0 = time.monotonic()
    srv.stop()
    srv.stop()
    assert time.monotonic() - t0 < 1.0
    assert not [t.name for t in threading.enumerate() if t.name.startswith(prefix)]
    assert all(c.closed_event.is_set() and c.client_closed_ns is None for c in srv.connections)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
    busy.close()
    idle.close()


def test_sequence_serves_in_order_last_repeats() -> None:
    replies = [text_reply(["one"]), text_reply(["two"], usage=False)]
    with WireServer(replies) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=2)
        contents = []
        for _ in range(3):
            conn.request("POST", "/v1/chat/completions", body=b"{}")
            events = _events(conn.getresponse().read())
            contents.append("".join(e["choices"][0]["delta"].get("content", "")
                                    for e in events if isinstance(e, dict) and e["choices"]))
        conn.close()
        assert contents == ["one", "two", "two"]
        assert srv.connections[0].request_indexes == [0, 1, 2]


def test_callable_receives_parsed_request() -> None:
    seen: list[Request] = []

    def script(req: Request) -> Reply:
        seen.append(req)
        return text_reply([req.json()["messages"][0]["content"].upper()])

    with WireServer(script) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=2)
        payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        conn.request("POST", "/v1/chat/completions", body=json.dumps(payload),
                     headers={"Content-Type": "application/json", "X-Trace": "t1"})
        events = _events(conn.getresponse().read())
        conn.close()
    assert any(isinstance(e, dict) and e["choices"] and e["choices"][0]["delta"].get("content") == "HI"
               for e in events)
    assert len(seen) == 1 and seen[0].json() == payload
    assert seen[0].method == "POST" and seen[0].path == "/v1/chat/completions"
    assert seen[0].headers["x-trace"] == "t1" and seen[0].index == 0


def test_openai_sdk_streams_text_reply(server: WireServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url, api_key="sk-test", max_retries=0)
    stream = client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, world!"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert server.requests[0].headers["authorization"] == "Bearer sk-test"
    client.close()
    assert server.wait_closed(0).client_closed_ns is not None
