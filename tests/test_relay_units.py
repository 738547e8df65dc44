"""The relay's pure parts: keys, limits (on a fake clock), config, request checks, wire encoders."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import FakeClock

from streamchat import ReasoningDelta, TextDelta, ToolCallDelta
from streamchat._chunks import DONE, ChunkDecoder
from streamchat._sse import SSEDecoder
from streamchat.errors import ConfigError, RateLimitError, StreamTimeout
from streamchat.relay.auth import AuthFailure, ClientKey, KeyRing, key_id_for, load_keys, parse_keys
from streamchat.relay.config import load_config
from streamchat.relay.errors import provider_failure
from streamchat.relay.limits import Grant, Limiter, Limits, Refusal, Rejected, cap_max_tokens, check_body_size
from streamchat.relay.usage import UsageRecord
from streamchat.relay.validate import Models, parse_chat, parse_json
from streamchat.relay.wire import EventSourceFrames, NDJSONFrames, OpenAIChunks, Outcome
from streamchat.timing import Timings

SECRET = "s3cret-key-for-alice-0123"
OTHER = "another-key-for-bob-456789"


# -- keys ------------------------------------------------------------------------
def test_keys_parse_with_and_without_ids_and_never_show_the_secret() -> None:
    keys = parse_keys(f"# comment\nalice:{SECRET}\n{OTHER}  # bob\n", where="keys.txt")
    assert [k.id for k in keys] == ["alice", key_id_for(OTHER)]
    assert SECRET not in repr(keys) and SECRET not in str(keys[0])
    assert key_id_for(OTHER).startswith("key-") and OTHER not in key_id_for(OTHER)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("alice:short", "shorter than 16"),
        ("bad/id!:" + SECRET, "key id may use"),
        (f"alice:{SECRET}\nalice:{OTHER}", "used twice"),
    ],
)
def test_bad_keys_are_refused_without_echoing_them(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        parse_keys(text, where="$STREAMCHAT_RELAY_KEYS")
    assert "short" not in str(info.value).replace("shorter", "") and SECRET not in str(info.value)


def test_keys_come_from_the_environment_and_a_file(tmp_path: Any) -> None:
    path = tmp_path / "keys"
    path.write_text(f"bob:{OTHER}\n")
    keys = load_keys(environ={"STREAMCHAT_RELAY_KEYS": f"alice:{SECRET}"}, file=path)
    assert [k.id for k in keys] == ["alice", "bob"]
    with pytest.raises(ConfigError, match="cannot read the keys file"):
        load_keys(environ={}, file=tmp_path / "missing")


def test_authenticate_checks_bearer_keys() -> None:
    ring = KeyRing([ClientKey("alice", SECRET), ClientKey("bob", OTHER)])
    assert ring.authenticate(f"Bearer {SECRET}").id == "alice"
    assert ring.authenticate(f"bearer  {OTHER} ").id == "bob"
    for header, code in [(None, "missing_api_key"), ("Bearer nope-nope-nope-nope", "invalid_api_key"),
                         (f"Basic {SECRET}", "invalid_api_key"), ("Bearer ", "invalid_api_key"),
                         (f"Bearer {SECRET}x", "invalid_api_key")]:
        with pytest.raises(AuthFailure) as info:
            ring.authenticate(header)
        assert info.value.code == code and SECRET not in info.value.message


def test_tokens_are_signed_per_key_and_expire() -> None:
    now = [1000.0]
    ring = KeyRing([ClientKey("alice", SECRET), ClientKey("bob", OTHER)], token_ttl_s=60, wall=lambda: now[0])
    token, expires = ring.issue_token(ClientKey("alice", SECRET))
    assert expires == 1060 and SECRET not in token
    assert ring.authenticate(None, token).id == "alice"
    assert ring.authenticate(f"Bearer {token}").id == "alice"
    forged = token.replace("sct.alice.", "sct.bob.")
    for bad in (forged, token[:-2] + "xx", "sct.alice.99999999999.abc", "garbage"):
        with pytest.raises(AuthFailure, match="not valid") as info:
            ring.authenticate(None, bad)
        assert info.value.code == "invalid_token"
    now[0] = 1060.0
    with pytest.raises(AuthFailure, match="expired"):
        ring.authenticate(None, token)


def test_anonymous_mode_lets_everyone_in_only_when_there_are_no_keys() -> None:
    assert KeyRing([], allow_anonymous=True).authenticate(None).id == "anonymous"
    assert KeyRing([ClientKey("alice", SECRET)], allow_anonymous=True).required
    with pytest.raises(AuthFailure):
        KeyRing([]).authenticate(None)


# -- limits -------------------------------------------------------------------------
def test_requests_per_minute_refill_continuously(fake_clock: FakeClock) -> None:
    limiter = Limiter(Limits(requests_per_minute=2, tokens_per_minute=None), fake_clock)
    for _ in range(2):
        grant = limiter.admit("alice", 10)
        assert isinstance(grant, Grant)
        limiter.release(grant)
    refusal = limiter.admit("alice", 10)
    assert isinstance(refusal, Refusal) and refusal.status == 429 and refusal.code == "rate_limit_requests"
    assert refusal.retry_after == "30" and "2 requests per minute" in refusal.message
    assert isinstance(limiter.admit("bob", 10), Grant), "each key has its own bucket"
    fake_clock.sleep(29.9)
    assert isinstance(limiter.admit("alice", 10), Refusal)
    fake_clock.sleep(0.2)
    assert isinstance(limiter.admit("alice", 10), Grant)


def test_tokens_per_minute_charge_the_prompt_then_the_completion(fake_clock: FakeClock) -> None:
    limiter = Limiter(Limits(requests_per_minute=None, tokens_per_minute=600), fake_clock)
    grant = limiter.admit("alice", 100)
    assert isinstance(grant, Grant)
    limiter.settle(grant, completion_tokens=560, prompt_tokens=90)
    limiter.release(grant)
    # 600 - 90 - 560 = -50: in debt until 50 tokens refill (5 s), then 1 more for the next prompt.
    refusal = limiter.admit("alice", 10)
    assert isinstance(refusal, Refusal) and refusal.code == "rate_limit_tokens"
    assert refusal.retry_after_s == pytest.approx(6.0)
    fake_clock.sleep(6.0)
    assert isinstance(limiter.admit("alice", 10), Grant)
    too_big = limiter.admit("alice", 601)
    assert isinstance(too_big, Refusal) and too_big.status == 400 and too_big.code == "prompt_too_large"


def test_concurrent_streams_per_key_and_overall(fake_clock: FakeClock) -> None:
    limiter = Limiter(Limits(requests_per_minute=None, tokens_per_minute=None, streams_per_key=1, streams_total=2), fake_clock)
    a = limiter.admit("alice", 1)
    assert isinstance(a, Grant)
    again = limiter.admit("alice", 1)
    assert isinstance(again, Refusal) and (again.status, again.code, again.retry_after) == (429, "too_many_streams", None)
    assert isinstance(limiter.admit("bob", 1), Grant)
    busy = limiter.admit("carol", 1)
    assert isinstance(busy, Refusal) and (busy.status, busy.code) == (503, "server_busy")
    limiter.release(a)
    limiter.release(a)  # twice is harmless
    assert limiter.streams == 1
    assert isinstance(limiter.admit("alice", 1), Grant)


def test_a_refused_request_charges_nothing(fake_clock: FakeClock) -> None:
    limiter = Limiter(Limits(requests_per_minute=5, tokens_per_minute=100, streams_per_key=1), fake_clock)
    held = limiter.admit("alice", 10)
    assert isinstance(held, Grant)
    before = limiter.remaining("alice")
    assert isinstance(limiter.admit("alice", 10), Refusal)
    assert limiter.remaining("alice") == before == {
        "x-ratelimit-limit-requests": 5, "x-ratelimit-remaining-requests": 4,
        "x-ratelimit-limit-tokens": 100, "x-ratelimit-remaining-tokens": 90,
    }


def test_size_caps() -> None:
    limits = Limits(max_body_bytes=100, max_tokens=50)
    assert check_body_size(100, limits) is None
    refusal = check_body_size(101, limits)
    assert refusal is not None and (refusal.status, refusal.code) == (413, "request_too_large")
    assert cap_max_tokens(None, limits) == 50 and cap_max_tokens(7, limits) == 7
    over = cap_max_tokens(51, limits)
    assert isinstance(over, Refusal) and over.code == "max_tokens_too_large" and "at most 50" in over.message


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="requests_per_minute"):
        Limits(requests_per_minute=0)
    with pytest.raises(ValueError, match="max_tokens"):
        Limits(max_tokens=True)


# -- config -------------------------------------------------------------------------
def test_config_from_file_environment_and_flags(tmp_path: Any) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('rpm = 10\ntpm = "off"\nmodels = ["a", "b"]\ngrace = 3\n')
    config = load_config(file=path, environ={"STREAMCHAT_RELAY_RPM": "20", "STREAMCHAT_RELAY_KEYS": f"alice:{SECRET}"},
                         max_tokens=64)
    assert config.limits.requests_per_minute == 20  # the environment beats the file
    assert config.limits.tokens_per_minute is None
    assert config.limits.max_tokens == 64 and config.models == ("a", "b") and config.grace_s == 3
    assert [k.id for k in config.keys] == ["alice"] and SECRET not in repr(config)


@pytest.mark.parametrize(
    ("text", "needle"),
    [("rpm = -1", "rpm must be a positive integer or 'off'"), ("colour = 1", "unknown setting 'colour'"),
     ("rpm = ", "not valid TOML"), ('keys = "x"', "keys do not belong")],
)
def test_config_errors_name_their_source(tmp_path: Any, text: str, needle: str) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(file=path, environ={})
    assert "relay.toml" in str(info.value)
    with pytest.raises(ConfigError, match=r"\$STREAMCHAT_RELAY_IDLE_TIMEOUT: idle_timeout must be seconds"):
        load_config(environ={"STREAMCHAT_RELAY_IDLE_TIMEOUT": "soon"})


# -- request checks ---------------------------------------------------------------------
MODELS = Models(["m1", "m2"])
LIMITS = Limits(max_messages=3, max_tokens=100)


def parse(**body: Any) -> Any:
    return parse_chat({"model": "m1", "messages": [{"role": "user", "content": "hi"}], **body}, limits=LIMITS, models=MODELS)


def test_a_full_request_is_understood() -> None:
    call = parse(
        messages=[{"role": "developer", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}],
        stream=True, stream_options={"include_usage": True}, max_completion_tokens=20, temperature=0.5, top_p=1,
        seed=3.0, stop="END", n=1, tools=[{"type": "function", "function": {"name": "f"}}], api_base="http://evil",
        user="u1",
    )
    request = call.request
    assert [(m.role, m.content) for m in request.messages] == [("system", "Be brief."), ("user", "hi there")]
    assert (call.stream, call.include_usage, request.max_tokens, request.temperature, request.seed) == (True, True, 20, 0.5, 3)
    assert request.stop == ("END",) and list(request.extra) == ["tools"]  # api_base and user never pass
    assert parse().request.max_tokens == 100  # the cap is the default


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"model": "gpt-4o"}, 404, "model_not_found", "model"),
        ({"model": None}, 400, "missing_required_parameter", "model"),
        ({"messages": "hi"}, 400, "invalid_value", "messages"),
        ({"messages": []}, 400, "empty_prompt", "messages"),
        ({"messages": [{"role": "user", "content": "  "}]}, 400, "empty_prompt", "messages"),
        ({"messages": [{"role": "user", "content": "x"}] * 4}, 400, "too_many_messages", None),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_value", "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, 400, "invalid_value", "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "unsupported_value", "messages[0].content[0]"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "unsupported_value", "messages[0]"),
        ({"max_tokens": 101}, 400, "max_tokens_too_large", None),
        ({"max_tokens": 0}, 400, "invalid_value", "max_tokens"),
        ({"max_tokens": True}, 400, "invalid_value", "max_tokens"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, 400, "invalid_value", "max_tokens"),
        ({"temperature": 3}, 400, "invalid_value", "temperature"),
        ({"temperature": "hot"}, 400, "invalid_value", "temperature"),
        ({"top_p": 0}, 400, "invalid_value", "top_p"),
        ({"seed": 1.5}, 400, "invalid_value", "seed"),
        ({"stop": ["a", 1]}, 400, "invalid_value", "stop"),
        ({"n": 2}, 400, "unsupported_value", "n"),
        ({"stream": "yes"}, 400, "invalid_value", "stream"),
        ({"stream_options": {"include_usage": 1}}, 400, "invalid_value", "stream_options.include_usage"),
        ({"tools": {"a": 1}}, 400, "invalid_value", "tools"),
        ({"presence_penalty": 9}, 400, "invalid_value", "presence_penalty"),
    ],
)
def test_every_bad_field_is_named(body: dict[str, Any], status: int, code: str, param: str | None) -> None:
    with pytest.raises(Rejected) as info:
        parse(**body)
    refusal = info.value.refusal
    assert (refusal.status, refusal.code, refusal.param) == (status, code, param), refusal.message
    assert refusal.message


@pytest.mark.parametrize(("body", "needle"), [(b"", "empty"), (b"{", "not valid JSON"), (b"[1]", "a list"), (b"\xff", "not valid JSON")])
def test_bodies_must_be_json_objects(body: bytes, needle: str) -> None:
    with pytest.raises(Rejected, match=needle):
        parse_json(body)


def test_the_prompt_shortcut() -> None:
    call = parse_chat({"prompt": "hi", "system": "brief"}, limits=LIMITS, models=MODELS, model_required=False, allow_prompt=True)
    assert call.model == "m1" and [m.role for m in call.request.messages] == ["system", "user"]


# -- errors -------------------------------------------------------------------------------
def test_provider_failures_are_told_in_the_relays_words() -> None:
    leaky = RateLimitError("sk-live-abcdefgh12345 is over quota at https://internal", retry_after=7)
    public = provider_failure(leaky, "m")
    assert (public.status, public.code, public.retry_after_s) == (503, "upstream_rate_limited", 7)
    assert "sk-" not in public.message and "internal" not in public.message
    timeout = provider_failure(StreamTimeout("first_token", 60), "m")
    assert (timeout.status, timeout.code) == (504, "upstream_timeout") and "60 s" in timeout.message


# -- wire --------------------------------------------------------------------------------------
def _timings() -> Timings:
    return Timings(0, 0.01, 0.1, 0.1, 0.3, 0.31, 3, "server", (0.1, 0.2, 0.3))


def _outcome(reason: str = "stop", **kw: Any) -> Outcome:
    return Outcome("req_1", reason, 5, "server", 3, "server", _timings(), **kw)


def test_openai_chunks_round_trip_through_the_cores_decoder() -> None:
    frames = OpenAIChunks("chatcmpl-1", "m", 123, include_usage=True)
    wire = frames.head() + b"".join(
        frames.output(e) for e in (TextDelta("Hel\nlo", 0), ReasoningDelta("hmm", 0), ToolCallDelta(0, 0, "c1", "f", '{"a"'))
    ) + frames.heartbeat() + frames.tail(_outcome())
    sse = SSEDecoder()
    events = sse.feed(wire)
    assert sse.comments == 1 and events[-1].data == "[DONE]"
    chunks = [json.loads(e.data) for e in events[:-1]]
    assert all(c["id"] == "chatcmpl-1" and c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    decoder = ChunkDecoder()
    decoded = [e for c in chunks for e in decoder.feed(c, 0)] + decoder.feed(DONE, 0)
    assert [e.kind for e in decoded] == ["text", "reasoning", "tool_call", "usage"]
    assert decoded[0].text == "Hel\nlo" and decoder.finish_reason == "stop"  # type: ignore[union-attr]


def test_openai_chunks_end_a_failed_stream_with_an_error_payload() -> None:
    from streamchat.relay.errors import SHUTDOWN

    tail = OpenAIChunks("c", "m", 0, include_usage=False).tail(_outcome("error", error=SHUTDOWN))
    (event,) = SSEDecoder().feed(tail)
    assert json.loads(event.data)["error"]["code"] == "server_shutdown" and b"[DONE]" not in tail


def test_event_source_frames_are_numbered_and_typed() -> None:
    frames = EventSourceFrames(retry_ms=2500)
    wire = frames.head() + frames.output(TextDelta("a\r\nb", 0)) + frames.metrics(_timings()) + frames.tail(_outcome())
    events = SSEDecoder().feed(wire)
    assert [(e.event, e.id) for e in events] == [("text", "1"), ("metrics", "2"), ("done", "3")]
    assert events[0].retry == 2500 and json.loads(events[0].data) == {"text": "a\r\nb"}
    done = json.loads(events[2].data)
    assert done["finish_reason"] == "stop" and done["usage"]["total_tokens"] == 8 and done["metrics"]["ttft_s"] == 0.1


def test_ndjson_frames_are_one_object_per_line() -> None:
    frames = NDJSONFrames("req_1", "m")
    text = (frames.head() + frames.output(TextDelta("x\ny", 0)) + frames.heartbeat() + frames.tail(_outcome())).decode()
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["type"] for r in rows] == ["start", "text", "ping", "done"] and rows[1]["text"] == "x\ny"


def test_usage_records_leave_out_the_prompt_unless_given() -> None:
    row = json.loads(UsageRecord("r", "alice", "events", "m", 200, "stop").to_json())
    assert "prompt" not in row and row["key_id"] == "alice"
    assert json.loads(UsageRecord("r", "a", "e", "m", 200, "stop", prompt="hi").to_json())["prompt"] == "hi"
