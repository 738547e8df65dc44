"""Every auth failure and every limit: the documented status, body, headers and usage line, on a real server.

And the provider's key never shows: not in any response body or header, not
in the usage log, not in the server's log, even when the upstream echoes it.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from streamchat import ScriptedProvider
from streamchat.providers.openai import OpenAIProvider
from streamchat.relay import ClientKey, Limits, RelayConfig, UsageLog, create_app
from streamchat.relay.testing import ServedRelay
from streamchat.testing.wire_server import Reply, WireServer, chunk, data, error_reply, text_reply

ALICE = "alice-key-" + "N4vB8sQ2xK7pL1m"
BOB = "bob-key-" + "R6tY3wE9uI0oP5a"
UPSTREAM_KEY = "sk-proj-" + "Lk29Xc81Vb47Nm36Qw05Er"
KEYS = (ClientKey("alice", ALICE), ClientKey("bob", BOB))
MESSAGES = [{"role": "user", "content": "hi"}]


def auth(key: str = ALICE) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Served:
    """A relay on loopback and the usage lines it wrote."""

    def __init__(self, served: ServedRelay, usage: io.StringIO) -> None:
        self.served, self.out = served, usage
        self.http = httpx2.Client(base_url=served.url, timeout=10)

    @property
    def usage(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]

    def chat(self, key: str = ALICE, **body: Any) -> httpx2.Response:
        return self.http.post("/v1/chat/completions", headers=auth(key), json={"model": "scripted", "messages": MESSAGES, **body})


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    made: list[tuple[ServedRelay, Served]] = []

    def start(provider: Any = None, wall: Callable[[], float] | None = None, **config: Any) -> Served:
        usage = io.StringIO()
        extra = {"wall": wall} if wall else {}
        app = create_app(provider or ScriptedProvider(ttft=0, tokens_per_s=0), RelayConfig(**{"keys": KEYS, **config}),
                         usage_log=UsageLog(usage), **extra)
        served = ServedRelay(app).start()
        made.append((served, Served(served, usage)))
        return made[-1][1]

    yield start
    for served, client in made:
        client.http.close()
        served.stop()


def assert_error(response: httpx2.Response, status: int, code: str, type_: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and set(error) >= {"message", "type", "param", "code"}
    if type_ is not None:
        assert error["type"] == type_
    return dict(error)


# -- authentication ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "missing_api_key"), (auth("nope-not-a-key-at-all"), "invalid_api_key"), ({"Authorization": f"Basic {ALICE}"}, "invalid_api_key"),
     ({"Authorization": "Bearer"}, "invalid_api_key")],
)
def test_every_endpoint_refuses_a_missing_or_wrong_key(serve: Callable[..., Served], headers: dict[str, str], code: str) -> None:
    relay = serve()
    calls = [
        relay.http.post("/v1/chat/completions", headers=headers, json={"model": "scripted", "messages": MESSAGES}),
        relay.http.get("/v1/models", headers=headers),
        relay.http.get("/v1/events", params={"prompt": "hi"}, headers=headers),
        relay.http.post("/v1/stream", headers=headers, json={"prompt": "hi"}),
        relay.http.post("/v1/tokens", headers=headers),
    ]
    for response in calls:
        assert_error(response, 401, code, "authentication_error")
        assert response.headers["www-authenticate"] == 'Bearer realm="streamchat"'
    assert [(u["status"], u["error"], u["key_id"]) for u in relay.usage] == [(401, code, None)] * 4


def test_tokens_for_urls_are_issued_checked_and_expire(serve: Callable[..., Served]) -> None:
    now = [1_000_000.0]
    relay = serve(wall=lambda: now[0], token_ttl_s=60)
    issued = relay.http.post("/v1/tokens", headers=auth())
    assert issued.status_code == 200 and issued.headers["cache-control"] == "no-store"
    body = issued.json()
    token = body["token"]
    assert body["key_id"] == "alice" and body["expires_in"] == 60 and ALICE not in token
    ok = relay.http.get("/v1/events", params={"prompt": "hi", "token": token})
    assert ok.status_code == 200 and "event: done" in ok.text
    assert_error(relay.http.post("/v1/tokens", headers={"Authorization": f"Bearer {token}"}), 401, "invalid_api_key")
    forged = token[:-3] + ("abc" if not token.endswith("abc") else "xyz")
    assert_error(relay.http.get("/v1/events", params={"prompt": "hi", "token": forged}), 401, "invalid_token")
    now[0] += 61
    assert_error(relay.http.get("/v1/events", params={"prompt": "hi", "token": token}), 401, "expired_token")
    assert relay.usage[0]["key_id"] == "alice" and relay.usage[0]["endpoint"] == "events"


def test_a_relay_without_keys_will_not_start_unless_told() -> None:
    from streamchat.errors import ConfigError

    with pytest.raises(ConfigError, match="no keys"):
        create_app(ScriptedProvider(), RelayConfig())


# -- request caps -----------------------------------------------------------------------
def test_body_size_is_capped_with_or_without_content_length(serve: Callable[..., Served]) -> None:
    relay = serve(limits=Limits(max_body_bytes=1000))
    big = json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "x" * 2000}]}).encode()
    assert_error(relay.http.post("/v1/chat/completions", headers=auth(), content=big), 413, "request_too_large")

    def chunked() -> Iterator[bytes]:
        yield big[:600]
        yield big[600:]

    response = relay.http.post("/v1/chat/completions", headers=auth(), content=chunked())
    assert_error(response, 413, "request_too_large")
    assert_error(relay.http.get("/v1/events", headers=auth(), params={"prompt": "x" * 1200}), 413, "request_too_large")
    assert [u["status"] for u in relay.usage] == [413, 413, 413] and relay.usage[0]["key_id"] == "alice"


def test_message_count_max_tokens_and_model_are_checked(serve: Callable[..., Served]) -> None:
    relay = serve(limits=Limits(max_messages=2, max_tokens=50))
    error = assert_error(relay.chat(messages=MESSAGES * 3), 400, "too_many_messages")
    assert "at most 2" in error["message"]
    error = assert_error(relay.chat(max_tokens=51), 400, "max_tokens_too_large")
    assert "at most 50" in error["message"]
    error = assert_error(relay.chat(model="gpt-4o"), 404, "model_not_found")
    assert error["param"] == "model" and "available: scripted" in error["message"]
    error = assert_error(relay.http.post("/v1/chat/completions", headers=auth(), content=b"{not json"), 400, "invalid_json")
    assert_error(relay.chat(messages=[{"role": "user", "content": 7}]), 400, "invalid_value")
    assert [u["error"] for u in relay.usage] == [
        "too_many_messages", "max_tokens_too_large", "model_not_found", "invalid_json", "invalid_value"
    ]


# -- rate limits ---------------------------------------------------------------------------
def test_requests_per_minute(serve: Callable[..., Served]) -> None:
    relay = serve(limits=Limits(requests_per_minute=2, tokens_per_minute=None))
    first = relay.chat()
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2" and first.headers["x-ratelimit-remaining-requests"] == "1"
    assert relay.chat().status_code == 200
    refused = relay.chat()
    assert_error(refused, 429, "rate_limit_requests", "rate_limit_error")
    assert 25 <= int(refused.headers["retry-after"]) <= 30
    assert relay.chat(key=BOB).status_code == 200, "another key has its own allowance"
    assert relay.usage[2]["status"] == 429 and relay.usage[2]["key_id"] == "alice"


def test_tokens_per_minute_count_what_was_generated(serve: Callable[..., Served]) -> None:
    relay = serve(limits=Limits(requests_per_minute=None, tokens_per_minute=60))
    assert relay.chat().status_code == 200  # 49 completion tokens (prompt counted as 0 by the scripted provider)
    assert relay.chat().status_code == 200  # 11 left: admitted, then 38 in debt
    refused = relay.chat()
    error = assert_error(refused, 429, "rate_limit_tokens")
    assert "60 tokens per minute" in error["message"] and int(refused.headers["retry-after"]) == 39
    assert [u["completion_tokens"] for u in relay.usage] == [49, 49, 0]


def test_concurrent_streams_per_key_and_in_all(serve: Callable[..., Served]) -> None:
    relay = serve(ScriptedProvider(ttft=30), limits=Limits(streams_per_key=1, streams_total=2))
    with relay.http.stream("GET", "/v1/events", params={"prompt": "hi"}, headers=auth()) as held:
        assert held.status_code == 200
        error = assert_error(relay.chat(stream=True), 429, "too_many_streams")
        assert "retry-after" not in relay.chat(stream=True).headers and "1 open streams" in error["message"]
        with relay.http.stream("POST", "/v1/stream", json={"prompt": "hi"}, headers=auth(BOB)) as second:
            assert second.status_code == 200
            with ws_connect(relay.served.url.replace("http", "ws") + "/v1/ws", additional_headers=auth(BOB)) as ws:
                ws.send(json.dumps({"type": "prompt", "prompt": "hi"}))
                refusal = json.loads(ws.recv(timeout=5))
            assert (refusal["type"], refusal["status"], refusal["code"]) == ("error", 429, "too_many_streams")
            carol = serve_key_error(relay)
            assert carol is None
    # Both streams were closed by the client: their slots are free again.
    _wait(lambda: relay.served.app.state.relay.limiter.streams == 0)
    with relay.http.stream("GET", "/v1/events", params={"prompt": "hi"}, headers=auth()) as again:
        assert again.status_code == 200


def serve_key_error(relay: Served) -> None:
    """Two streams are open, the relay's limit: a third key would get 503 server_busy."""
    state = relay.served.app.state.relay
    from streamchat.relay.limits import Refusal

    refusal = state.limiter.admit("carol", 1)
    assert isinstance(refusal, Refusal) and (refusal.status, refusal.code) == (503, "server_busy")


def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_server_busy_over_http(serve: Callable[..., Served]) -> None:
    relay = serve(ScriptedProvider(ttft=30), limits=Limits(streams_total=1))
    with relay.http.stream("POST", "/v1/stream", json={"prompt": "hi"}, headers=auth()) as held:
        assert held.status_code == 200
        assert_error(relay.chat(key=BOB), 503, "server_busy", "server_error")


def test_draining_refuses_new_streams(serve: Callable[..., Served]) -> None:
    relay = serve()
    relay.served.app.state.relay.draining = True
    response = relay.chat()
    assert_error(response, 503, "server_shutdown")
    assert response.headers["retry-after"] == "1"
    health = relay.http.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "draining"
    relay.served.app.state.relay.draining = False


# -- browsers: CORS, origins, reconnects ---------------------------------------------------------
def test_cors_is_closed_by_default(serve: Callable[..., Served]) -> None:
    relay = serve()
    preflight = relay.http.options("/v1/chat/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers and preflight.status_code == 405
    simple = relay.http.get("/v1/models", headers={**auth(), "Origin": "https://evil.example"})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers


def test_cors_opens_only_to_listed_origins(serve: Callable[..., Served]) -> None:
    relay = serve(cors_origins=("https://app.example",))
    ok = relay.http.options("/v1/chat/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
    other = relay.http.options("/v1/chat/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    response = relay.http.get("/v1/models", headers={**auth(), "Origin": "https://app.example"})
    assert response.headers["access-control-allow-origin"] == "https://app.example"


def test_websockets_check_keys_and_origins(serve: Callable[..., Served]) -> None:
    relay = serve()
    url = relay.served.url.replace("http", "ws") + "/v1/ws"
    with pytest.raises(InvalidStatus) as denied, ws_connect(url):
        pass
    assert denied.value.response.status_code == 401
    assert json.loads(denied.value.response.body)["error"]["code"] == "missing_api_key"
    evil = "https://evil.example"
    with pytest.raises(InvalidStatus) as foreign, ws_connect(url, additional_headers=auth(), origin=evil):  # type: ignore[arg-type]
        pass
    assert foreign.value.response.status_code == 403
    same_site = f"http://127.0.0.1:{relay.served.port}"
    with ws_connect(url, additional_headers=auth(), origin=same_site) as ws:  # type: ignore[arg-type]
        ws.send(json.dumps({"type": "prompt", "prompt": "hi", "max_tokens": 2}))
        kinds = [json.loads(ws.recv(timeout=5))["type"] for _ in range(4)]
    assert kinds == ["start", "text", "metrics", "text"]


def test_an_event_source_reconnect_is_not_answered_again(serve: Callable[..., Served]) -> None:
    relay = serve()
    response = relay.http.get("/v1/events", params={"prompt": "hi"}, headers={**auth(), "Last-Event-ID": "12"})
    assert response.status_code == 204 and response.content == b""
    assert relay.usage == []


def test_unknown_routes_and_methods_answer_json(serve: Callable[..., Served]) -> None:
    relay = serve()
    assert_error(relay.http.get("/v2/nothing"), 404, "not_found")
    assert_error(relay.http.get("/v1/chat/completions", headers=auth()), 405, "method_not_allowed")


# -- secrets ----------------------------------------------------------------------------------------
class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:  # Handler.handle holds self.lock
        self.lines.append(self.format(record))


def leaky_upstream(request: Any) -> Reply:
    """An upstream that echoes its key everywhere it can, as some really do."""
    prompt = request.json()["messages"][-1]["content"]
    leak = f"Incorrect API key provided: {UPSTREAM_KEY}."
    if prompt == "auth":
        return error_reply(401, leak, type_="invalid_request_error", headers=(("X-Echo-Key", UPSTREAM_KEY),))
    if prompt == "server":
        return error_reply(500, leak + " Internal error at https://internal.example/", type_="server_error")
    if prompt == "bad":
        return error_reply(400, leak)
    if prompt == "midstream":
        return Reply(steps=(data(chunk("", role="assistant")), data(chunk("partial")),
                            data({"error": {"message": leak, "type": "server_error"}})))
    return text_reply(["fine", " answer"])


def test_the_provider_key_never_leaves_the_server(serve: Callable[..., Served]) -> None:
    capture = LogCapture()
    loggers = [logging.getLogger(name) for name in ("streamchat", "uvicorn", "uvicorn.error", "starlette")]
    for logger in loggers:
        logger.addHandler(capture)
    seen: list[str] = []
    try:
        with WireServer(leaky_upstream) as wire:
            provider = OpenAIProvider("test-model", base_url=wire.url, api_key=UPSTREAM_KEY)
            relay = serve(provider, retry=__import__("streamchat").RetryPolicy(max_retries=0))
            for prompt in ("fine", "auth", "server", "bad", "midstream"):
                body = {"model": "test-model", "messages": [{"role": "user", "content": prompt}]}
                for stream in (False, True):
                    r = relay.http.post("/v1/chat/completions", headers=auth(), json={**body, "stream": stream})
                    seen.append(f"{r.status_code} {dict(r.headers)} {r.text}")
                r = relay.http.post("/v1/stream", headers=auth(), json={"prompt": prompt})
                seen.append(f"{dict(r.headers)} {r.text}")
                r = relay.http.get("/v1/events", headers=auth(), params={"prompt": prompt})
                seen.append(f"{dict(r.headers)} {r.text}")
                with ws_connect(relay.served.url.replace("http", "ws") + "/v1/ws", additional_headers=auth()) as ws:
                    ws.send(json.dumps({"type": "prompt", "prompt": prompt}))
                    while True:
                        message = ws.recv(timeout=10)
                        seen.append(str(message))
                        if json.loads(message)["type"] == "done":
                            break
            for path in ("/", "/page.js", "/openapi.json", "/health", "/v1/models"):
                r = relay.http.get(path, headers=auth())
                seen.append(f"{dict(r.headers)} {r.text}")
            relay.served.stop()
            provider.close()
    finally:
        for logger in loggers:
            logger.removeHandler(capture)
    everything = "\n".join(seen)
    statuses = [s.split(" ", 1)[0] for s in seen[:2]]
    assert statuses == ["200", "200"] and "fine answer" in everything  # the requests really happened
    assert "upstream_auth_failed" in everything and "upstream_rejected_request" in everything
    assert '"partial_content": "partial"' in everything or '"partial_content":"partial"' in everything
    logs = "\n".join(capture.lines) + relay.out.getvalue()
    assert "provider error" in logs and len(relay.usage) == 25
    for secret in (UPSTREAM_KEY, UPSTREAM_KEY[8:], ALICE):
        assert secret not in everything, "a response carried a secret"
        assert secret not in logs, "a log line carried a secret"
    assert "internal.example" not in everything, "a provider error body was forwarded"
