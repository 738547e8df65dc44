"""The fault proxy, between a real client and a real server."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest

from streamchat import RetryPolicy, Timeouts, stream
from streamchat.errors import ConfigError, StreamTimeout
from streamchat.faults import FaultSpec, Injector, Schedule, parse
from streamchat.faults.matrix import DRILLS, markdown
from streamchat.faults.proxy import running
from streamchat.providers.openai import OpenAIProvider
from streamchat.testing.wire_server import WireServer, text_reply

TOKENS = [f"t{i} " for i in range(12)]
FULL = "".join(TOKENS)


@pytest.fixture
def srv() -> Iterator[WireServer]:
    with WireServer(text_reply(TOKENS, gap=0.005)) as server:
        yield server


def provider(url: str, fault: str | None = None) -> OpenAIProvider:
    headers = {"X-Streamchat-Fault": fault} if fault else None
    client = openai.OpenAI(base_url=url, api_key="sk-x", max_retries=0, default_headers=headers)
    return OpenAIProvider("test-model", base_url=url, client=client)


def raw_body(url: str) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    body = json.dumps({"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    conn.request("POST", parts.path + "/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def test_passes_through_byte_for_byte(srv: WireServer) -> None:
    with running(srv.url) as proxy:
        assert raw_body(proxy.url) == raw_body(srv.url)
        assert proxy.log_lines == []


@pytest.mark.parametrize(
    ("fault", "text", "message"),
    [
        ("disconnect_after=4", "t0 t1 t2 ", "connection broke mid-answer"),
        ("malformed_after=3", "t0 t1 ", "malformed chunk"),
        ("error_after=5", "t0 t1 t2 t3 ", "injected by streamchat faults"),
    ],
)
def test_mid_stream_faults_keep_partial_text(srv: WireServer, fault: str, text: str, message: str) -> None:
    # chunks are SSE data events: the role-only first chunk is chunk 1
    with running(srv.url) as proxy, provider(proxy.url, fault) as p:
        s = stream(p, "hi", retry=RetryPolicy(backoff_s=0.01)).until_done()
        assert s.finish_reason == "error" and s.text == text
        assert message in s.error.message and s.error.streamed
        assert len(srv.requests) == 1  # never retried after the first token
        assert json.loads(proxy.log_lines[-1])["fault"] == fault.replace("=", "=")


@pytest.mark.parametrize(("fault", "status"), [("status=429,retry_after=0.1", 429), ("status=503", 503)])
def test_status_faults_are_retried_before_the_first_token(srv: WireServer, fault: str, status: int) -> None:
    with running(srv.url, f"{fault};times=1") as proxy, provider(proxy.url) as p:
        started = time.perf_counter()
        s = stream(p, "hi", retry=RetryPolicy(backoff_s=0.01)).until_done()
        assert s.finish_reason == "stop" and s.text == FULL and s.timings.attempts == 2
        assert len(srv.requests) == 1  # the injected answer never reached upstream
        if status == 429:
            assert time.perf_counter() - started >= 0.1


def test_delays_and_throttle(srv: WireServer) -> None:
    with running(srv.url) as proxy:
        with provider(proxy.url, "ttft_delay=0.3") as p:
            s = stream(p, "hi").until_done()
            assert s.timings.ttft_s >= 0.3 and s.text == FULL
            # the chunks that queued during the delay keep the upstream's pace (11 gaps of 5 ms): not one
            # burst (a few ms), and not slower either; pieces read together leave together, hence the room
            assert 0.02 <= s.timings.duration_s - s.timings.ttft_s < 0.25
        with provider(proxy.url, "headers_delay=0.3") as p:
            s = stream(p, "hi").until_done()
            assert s.timings.headers_s >= 0.3 and s.text == FULL
        with provider(proxy.url, "tps=40") as p:
            s = stream(p, "hi").until_done()
            assert s.timings.decode_tokens_per_s <= 44 and s.text == FULL


def test_stall_trips_the_idle_timeout(srv: WireServer) -> None:
    with running(srv.url) as proxy, provider(proxy.url, "stall_after=3,stall_s=30") as p:
        s = stream(p, "hi", timeouts=Timeouts(idle=0.5)).until_done()
    assert isinstance(s.error.error, StreamTimeout) and s.error.error.phase == "idle"
    assert s.text == "t0 t1 "
    last_chunk_s = s.timings.chunk_offsets_s[-1]
    assert 0.5 <= (s.error.t_ns - s.request_start_ns) / 1e9 - last_chunk_s < 1.0
    assert srv.wait_closed(0, timeout=2).client_closed_ns is not None  # upstream closed too


def test_stop_during_a_stall_reaches_the_server_within_200_ms(srv: WireServer) -> None:
    with running(srv.url) as proxy, provider(proxy.url, "stall_after=3,stall_s=30") as p:
        s = stream(p, "hi")
        for event in s:
            if s.text == "t0 t1 ":
                break
        time.sleep(0.2)
        stopped = time.perf_counter_ns()
        s.close()
        record = srv.wait_closed(0, timeout=2)
    assert record.client_closed_ns is not None and record.client_closed_ns - stopped < 200e6


def test_schedules() -> None:
    every = Injector(FaultSpec(status=500), Schedule(every=3))
    assert [every.next() is not None for _ in range(7)] == [True, False, False, True, False, False, True]
    once = Injector(FaultSpec(status=500), Schedule(times=1))
    assert [once.next() is not None for _ in range(3)] == [True, False, False]
    a = Injector(FaultSpec(status=500), Schedule(probability=0.5, seed=4))
    b = Injector(FaultSpec(status=500), Schedule(probability=0.5, seed=4))
    picks = [a.next() is not None for _ in range(40)]
    assert picks == [b.next() is not None for _ in range(40)] and 5 < sum(picks) < 35


def test_spec_parsing_and_clear_errors() -> None:
    spec, schedule = parse("stall_after=3,stall_s=2.5;every=2,seed=1")
    assert (spec.stall_after, spec.stall_s, schedule.every, schedule.seed) == (3, 2.5, 2, 1)
    assert spec.describe() == "stall_after=3,stall_s=2.5"
    with pytest.raises(ConfigError, match="unknown fault setting 'stal'"):
        parse("stal=3")
    with pytest.raises(ConfigError, match="is not a number"):
        parse("stall_after=x")
    with pytest.raises(ConfigError, match="needs a value"):
        parse("stall_after")
    with pytest.raises(ConfigError, match="unknown fault 'stal': .*drill's name: headers_delay"):
        parse("stal")
    assert parse("stall") == parse("stall_after=4,stall_s=30")
    assert parse("rate_limited;times=2")[1].times == 2 and parse("rate_limited")[1].times == 9
    with pytest.raises(ConfigError, match="'wrong_key' drill is not a proxy fault"):
        parse("wrong_key")
    with pytest.raises(ConfigError, match="bad schedule"):
        parse("status=500;probability=2")


def test_bad_header_gets_a_400_and_the_next_request_works(srv: WireServer) -> None:
    with running(srv.url) as proxy, provider(proxy.url, "nonsense=1") as p:
        s = stream(p, "hi").until_done()
        assert s.finish_reason == "error" and "unknown fault setting 'nonsense'" in s.error.message
        with provider(proxy.url) as good:
            assert stream(good, "hi").until_done().text == FULL


def test_cli_lists_the_drills() -> None:
    done = subprocess.run([sys.executable, "-m", "streamchat.cli", "faults", "--list"], capture_output=True, text=True, timeout=30)
    names = [line.split()[0] for line in done.stdout.splitlines()]
    assert done.returncode == 0 and names == [d.name for d in DRILLS]


def test_cli_rejects_a_bad_spec_clearly() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamchat.cli", "faults", "http://127.0.0.1:1/v1", "--spec", "stall_after"],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 2 and "needs a value" in done.stderr and "Traceback" not in done.stderr


def test_the_documented_matrix_is_the_tested_one() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "faults.md").read_text()
    between = doc.split("<!-- matrix:start -->\n", 1)[1].split("<!-- matrix:end -->", 1)[0]
    assert between == markdown(), "docs/faults.md is stale: paste streamchat.faults.matrix.markdown() between the markers"


def test_a_client_leaving_during_a_long_delay_closes_upstream() -> None:
    # the proxy reads ahead during a first-chunk delay (to keep the upstream's pace), but only so far:
    # the rest of a long answer stays upstream, so a client that leaves still closes that connection
    tokens = [f"w{i} " for i in range(400)]
    with WireServer(text_reply(tokens, gap=0.001)) as srv, running(srv.url) as proxy:
        parts = urlsplit(proxy.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        body = json.dumps({"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "stream": True})
        conn.request("POST", parts.path + "/chat/completions", body,
                     {"Content-Type": "application/json", "X-Streamchat-Fault": "ttft_delay=5"})
        assert conn.getresponse().status == 200
        time.sleep(1.0)  # upstream has sent everything it could by now
        left = time.perf_counter_ns()
        conn.close()
        record = srv.wait_closed(0, timeout=2)
    assert record.client_closed_ns is not None and 0 <= record.client_closed_ns - left < 200e6
