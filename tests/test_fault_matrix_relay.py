"""The failure matrix, relay column: ``streamchat serve`` in front of the fault rig, driven as its clients do.

One relay (provider: ``OpenAIProvider`` at the rig) and one of each client for
the whole module: the official ``openai`` SDK streaming from
``/v1/chat/completions`` (``max_retries=0``, so only the relay retries), the
``/v1/events`` stream a browser's ``EventSource`` reads (with a token from
``/v1/tokens``, as the page does), one WebSocket kept open across prompts, and
NDJSON from ``/v1/stream``. Each drill asks once (faulted), then asks again
through the same client (must be complete).

What the relay's client is told: on ``/v1/chat/completions`` a failure before
any output is an HTTP status with the relay's message (:data:`STATUS`), after
output an ``error`` payload with the partial text kept; on the event
endpoints both are ``error`` events (``streamed`` says which), because a
browser's ``EventSource`` cannot read the body of a non-200 answer.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from streamchat import RetryPolicy, Timeouts
from streamchat._sse import SSEDecoder
from streamchat.faults.matrix import DRILLS, LIMIT_S, Drill, expect
from streamchat.providers.openai import OpenAIProvider
from streamchat.relay import ClientKey, Limits, RelayConfig, UsageLog, create_app
from streamchat.relay.testing import ServedRelay
from streamchat.testing.fault_rig import RIG_KEY, RIG_MODEL, FaultRig

KEY = "matrix-relay-client-key-7Vq2Lx9Pz"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
ENDPOINTS = ("chat", "events", "ws", "ndjson")
IN_STALL_S = 0.2
"""How long after the partial text arrives the client stops: well inside the rig's 30 s stall."""

STATUS: dict[str, tuple[int, str]] = {
    # drill: the HTTP status (chat completions, before output) and the error code (everywhere)
    "rate_limited": (503, "upstream_rate_limited"),
    "server_down": (502, "upstream_error"),
    "disconnect": (200, "upstream_dropped"),
    "stall": (200, "upstream_timeout"),
    "slow_first_token": (504, "upstream_timeout"),
    "malformed": (200, "upstream_protocol_error"),
    "error_event": (200, "upstream_error"),
    "wrong_key": (502, "upstream_auth_failed"),  # not 401: the caller's own key is fine
    "unknown_model": (502, "upstream_model_not_found"),
    "unreachable": (502, "upstream_unreachable"),
}
RETRYABLE = {"upstream_rate_limited", "upstream_error", "upstream_unreachable", "upstream_timeout"}


def now() -> int:
    return time.perf_counter_ns()


@dataclass
class Answer:
    """One answer as its client received it."""

    start_ns: int
    status: int = 200
    text: str = ""
    error: dict[str, Any] | None = None
    """The relay's error: a JSON error body (before output, chat completions) or an ``error`` event."""
    finish: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    received: list[str] = field(default_factory=list)
    """Everything the client got (headers, bodies, events, exception texts), for the key check."""
    last_text_ns: int = 0
    error_ns: int = 0
    stop_ns: int = 0

    def got_text(self, text: str) -> None:
        self.text += text
        self.last_text_ns = now()

    def got_error(self, error: dict[str, Any]) -> None:
        self.error, self.error_ns = error, now()


class Clients:
    """The relay and one client of each kind, kept for the whole module."""

    def __init__(self, relay: ServedRelay, usage: io.StringIO, logs: list[str]) -> None:
        self.relay, self.usage, self.logs = relay, usage, logs
        self.sdk = openai.OpenAI(base_url=relay.base_url, api_key=KEY, max_retries=0)
        self.http = httpx2.Client(base_url=relay.url, timeout=10)
        # As the page does: exchange the key for a token to put in the EventSource URL.
        self.token = self.http.post("/v1/tokens", headers={"Authorization": f"Bearer {KEY}"}).json()["token"]
        self._open = contextlib.ExitStack()
        self.ws: ClientConnection = self._open.enter_context(
            ws_connect(relay.url.replace("http", "ws") + "/v1/ws", additional_headers={"Authorization": f"Bearer {KEY}"})
        )

    def close(self) -> None:
        self._open.close()
        self.http.close()
        self.sdk.close()

    def ask(self, endpoint: str, stop_at: str | None = None) -> Answer:
        """Ask once; with ``stop_at``, stop (as that client's user does) once that text is shown."""
        ask: dict[str, Callable[[str | None], Answer]] = {
            "chat": self._chat, "events": self._events, "ws": self._ws, "ndjson": self._ndjson,
        }
        return ask[endpoint](stop_at)

    def _stop_due(self, answer: Answer, stop_at: str | None) -> bool:
        if stop_at is None or answer.text != stop_at or answer.stop_ns:  # once: later events must not move it
            return False
        time.sleep(IN_STALL_S)
        answer.stop_ns = now()
        return True

    def _chat(self, stop_at: str | None) -> Answer:
        answer = Answer(now())
        try:
            stream = self.sdk.chat.completions.create(model=RIG_MODEL, messages=MESSAGES, stream=True)
        except openai.APIStatusError as exc:
            answer.got_error(exc.response.json()["error"])
            answer.status, answer.headers = exc.status_code, dict(exc.response.headers)
            answer.received += [str(exc), repr(exc.body), exc.response.text, repr(answer.headers)]
            return answer
        answer.headers = dict(stream.response.headers)
        answer.received.append(repr(answer.headers))
        with stream:
            try:
                for chunk in stream:
                    answer.received.append(chunk.model_dump_json())
                    if chunk.choices:
                        if chunk.choices[0].delta.content:
                            answer.got_text(chunk.choices[0].delta.content)
                        answer.finish = chunk.choices[0].finish_reason or answer.finish
                    if self._stop_due(answer, stop_at):
                        break  # leaving the block closes the response: the SDK user's Stop
            except openai.APIError as exc:  # the relay's error payload after output
                assert isinstance(exc.body, dict)
                answer.got_error(exc.body)
                answer.received += [str(exc), repr(exc.body)]
        return answer

    def _events(self, stop_at: str | None) -> Answer:
        return self._http_stream("GET", "/v1/events", self._sse_payloads, stop_at,
                                 params={"prompt": "hi", "token": self.token})

    def _ndjson(self, stop_at: str | None) -> Answer:
        def lines(response: httpx2.Response) -> Iterator[dict[str, Any]]:
            for line in response.iter_lines():
                yield json.loads(line)

        return self._http_stream("POST", "/v1/stream", lines, stop_at,
                                 json={"prompt": "hi"}, headers={"Authorization": f"Bearer {KEY}"})

    @staticmethod
    def _sse_payloads(response: httpx2.Response) -> Iterator[dict[str, Any]]:
        decoder = SSEDecoder()
        for data in response.iter_bytes():
            for event in decoder.feed(data):
                yield {"type": event.event, **json.loads(event.data)}

    def _http_stream(
        self, method: str, path: str, payloads: Callable[[httpx2.Response], Iterator[dict[str, Any]]],
        stop_at: str | None, **request: Any,
    ) -> Answer:
        answer = Answer(now())
        with self.http.stream(method, path, **request) as response:
            answer.status, answer.headers = response.status_code, dict(response.headers)
            answer.received.append(repr(answer.headers))
            if response.status_code != 200:
                answer.received.append(response.read().decode())
                answer.got_error(response.json()["error"])
                return answer
            for payload in payloads(response):
                answer.received.append(json.dumps(payload))
                self._on_payload(answer, payload)
                if self._stop_due(answer, stop_at):
                    break  # leaving the block closes the connection: EventSource.close(), curl's Ctrl-C
        return answer

    @staticmethod
    def _on_payload(answer: Answer, payload: dict[str, Any]) -> None:
        kind = payload["type"]
        if kind == "text":
            answer.got_text(payload["text"])
        elif kind == "error":
            answer.got_error(payload)
        elif kind == "done":
            answer.finish = payload["finish_reason"]

    def _ws(self, stop_at: str | None) -> Answer:
        answer = Answer(now(), status=101)
        self.ws.send(json.dumps({"type": "prompt", "prompt": "hi"}))
        while answer.finish is None:
            message = self.ws.recv(timeout=10)
            assert isinstance(message, str)
            answer.received.append(message)
            self._on_payload(answer, json.loads(message))
            if self._stop_due(answer, stop_at):
                self.ws.send(json.dumps({"type": "stop"}))  # the page's Stop button; the socket stays open
        return answer

    def usage_line(self, before: int) -> dict[str, Any]:
        """The usage line of the request after the first ``before`` lines."""
        deadline = time.monotonic() + 5
        while len(lines := self.usage.getvalue().splitlines()) <= before:
            assert time.monotonic() < deadline, "no usage line"
            time.sleep(0.005)
        assert len(lines) == before + 1, lines[before:]
        return dict(json.loads(lines[before]))

    def usage_count(self) -> int:
        return len(self.usage.getvalue().splitlines())


class _Lines(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(f"{record.name} {record.levelname} {record.getMessage()} {record.exc_text or ''}")


@pytest.fixture(scope="module")
def rig() -> Iterator[FaultRig]:
    with FaultRig(gap=0.002) as rig:
        yield rig


@pytest.fixture(scope="module")
def clients(rig: FaultRig) -> Iterator[Clients]:
    usage, logs = io.StringIO(), list[str]()
    provider = OpenAIProvider(RIG_MODEL, base_url=rig.url, api_key=RIG_KEY)
    config = RelayConfig(
        keys=(ClientKey("matrix", KEY),),
        limits=Limits(requests_per_minute=None, tokens_per_minute=None),
        timeouts=Timeouts(connect=5.0, first_token=LIMIT_S, idle=LIMIT_S, total=60.0),
        retry=RetryPolicy(backoff_s=0.02, max_backoff_s=0.1),
    )
    with ServedRelay(create_app(provider, config, usage_log=UsageLog(usage))) as relay:
        # After uvicorn configured its loggers: every log line of the relay and of uvicorn, for the key check.
        handler = _Lines(logs)
        loggers = [logging.getLogger(name) for name in ("streamchat", "uvicorn")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.addHandler(handler)
        logging.getLogger("streamchat").setLevel(logging.DEBUG)
        clients = Clients(relay, usage, logs)
        try:
            yield clients
        finally:
            clients.close()
            for lg, level in zip(loggers, levels, strict=True):
                lg.removeHandler(handler)
                lg.setLevel(level)
    provider.close()


def assert_no_key(clients: Clients, *answers: Answer) -> None:
    for answer in answers:
        assert RIG_KEY not in "\n".join(answer.received)
    assert RIG_KEY not in clients.usage.getvalue()
    assert RIG_KEY not in "\n".join(clients.logs)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("drill", DRILLS, ids=[d.name for d in DRILLS])
def test_relay(rig: FaultRig, clients: Clients, drill: Drill, endpoint: str) -> None:
    want = expect(drill, "relay")
    partial = rig.text_after(4)
    before = clients.usage_count()
    with rig.drill(drill):
        answer = clients.ask(endpoint, stop_at=partial if drill.name == "stop_in_stall" else None)
    line = clients.usage_line(before)

    # the text: complete, kept or none, exactly (a duplicate from a retry would show)
    assert answer.text == {"complete": rig.full_text, "kept": partial, "none": ""}[want.partial], answer

    # retried? the rig counts what reached the server; the usage line counts what the relay sent
    if not want.retried:
        assert rig.attempts == 1 and line["attempts"] == 1, (rig.attempts, line)
    else:
        tries = 2 if want.partial == "complete" else 3  # "once" drills: one retry; otherwise all (max_retries=2)
        assert line["attempts"] == tries, line
        assert rig.attempts == (0 if drill.name == "unreachable" else tries)  # nothing listens: nothing arrives

    # what the client is told
    if drill.name == "stop_in_stall":
        closed = rig.wait_upstream_closed().client_closed_ns
        assert closed is not None, "the relay never closed its upstream"
        lag_ms = (closed - answer.stop_ns) / 1e6
        assert 0 <= lag_ms < 200, f"the upstream saw the Stop {lag_ms:.1f} ms later"
        assert answer.error is None
        if endpoint == "ws":
            assert answer.finish == "cancelled"  # the page marks the answer stopped
        assert line["finish_reason"] == ("cancelled" if endpoint == "ws" else "client_disconnected"), line
        assert line["completion_tokens"] == 3 and line["error"] is None
    elif want.told:
        status, code = STATUS[drill.name]
        error = answer.error
        assert error is not None and error["code"] == code and want.told in error["message"], answer
        assert line["error"] == code and line["finish_reason"] == "error"
        streamed = want.partial == "kept"
        if endpoint == "chat":
            assert answer.status == status
            if not streamed:  # an HTTP status, and whether the SDK may retry it
                assert answer.headers["x-should-retry"] == ("true" if code in RETRYABLE else "false")
                assert ("retry-after" in answer.headers) == (code == "upstream_rate_limited")
        else:
            assert answer.status == (101 if endpoint == "ws" else 200)
            assert (error["streamed"], answer.finish) == (streamed, "error"), answer
        # the operator's log has the core's full message under the request id
        assert any(line["request_id"] in log and want.told in log for log in clients.logs), clients.logs[-3:]
    else:
        assert answer.error is None and answer.finish == "stop", answer
        assert line["finish_reason"] == "stop" and line["error"] is None

    # every time limit fires within its limit + 0.5 s of becoming due, as this client sees it
    if drill.name in ("stall", "slow_first_token"):
        due_ns = answer.last_text_ns if drill.name == "stall" else answer.start_ns
        late_s = (answer.error_ns - due_ns) / 1e9
        assert LIMIT_S - 0.2 <= late_s <= LIMIT_S + 0.5, late_s  # measured from when the client read the last chunk

    # after any fault, the next request through the same client works
    rig.arm("")
    before = clients.usage_count()
    again = clients.ask(endpoint)
    assert (again.text, again.error, again.finish) == (rig.full_text, None, "stop"), again
    assert rig.attempts == 1 and clients.usage_line(before)["finish_reason"] == "stop"
    assert_no_key(clients, answer, again)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("spec", [
    f"status=503,message=upstream says key {RIG_KEY} is bad;times=9",
    f"error_after=4,message=upstream says key {RIG_KEY} is bad",
], ids=["before_output", "mid_stream"])
def test_an_upstream_echoing_the_key_reaches_no_client_and_no_log(
    rig: FaultRig, clients: Clients, endpoint: str, spec: str
) -> None:
    rig.arm(spec)
    before = clients.usage_count()
    answer = clients.ask(endpoint)
    clients.usage_line(before)  # written after the log line, maybe after the client got its answer
    assert answer.error is not None and RIG_KEY not in json.dumps(answer.error)
    assert any("upstream says key" in log for log in clients.logs)  # the detail is logged, redacted
    assert_no_key(clients, answer)
    rig.arm("")


@pytest.mark.parametrize("name", ["wrong_key", "unknown_model"])
def test_the_sdk_does_not_retry_what_cannot_help(rig: FaultRig, clients: Clients, name: str) -> None:
    """With its default retries, the SDK obeys the relay's ``x-should-retry: false``: one upstream request."""
    drill = next(d for d in DRILLS if d.name == name)
    sdk = openai.OpenAI(base_url=clients.relay.base_url, api_key=KEY)  # max_retries=2, the default
    with sdk, rig.drill(drill), pytest.raises(openai.InternalServerError) as raised:
        sdk.chat.completions.create(model=RIG_MODEL, messages=MESSAGES, stream=True)
    assert raised.value.status_code == 502 and rig.attempts == 1
    assert not isinstance(raised.value, openai.AuthenticationError)
