"""Stopping early really stops the work: checked on the server side, on real sockets.

The server records, with ``perf_counter_ns``, the moment it notices the client
hanging up; every test compares that with the moment the client stopped.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import openai
import pytest

import streamchat
from streamchat import Error, Fault, Finish, RetryPolicy, ScriptedProvider, TextDelta, Timeouts
from streamchat.errors import StreamTimeout
from streamchat.providers.openai import OpenAIProvider
from streamchat.testing.wire_server import (
    ConnectionRecord,
    Reply,
    WireServer,
    chunk,
    comment,
    data,
    done,
    error_reply,
    sleep,
    text_reply,
)

MODES = pytest.mark.parametrize("mode", ["sync", "async"])
API_KEY = "sk-test-" + "Q7rT2mXv9LpA4sKd8WnE3bYh6JcU1f"
HANGUP_NS = 100_000_000  # the server must notice a hang-up within 100 ms
PROMPT_NS = 500_000_000  # a blocked read must end within 0.5 s of the close
SLACK_S = 0.5  # a timeout fires within its limit + 0.5 s
MakeProvider = Callable[[WireServer], OpenAIProvider]

STALL = Reply(steps=(
    data(chunk("", role="assistant")),
    data(chunk("Hel")),
    data(chunk("lo")),
    sleep(5),
    data(chunk(" never")),
    data(chunk(finish_reason="stop")),
    done(),
))


@pytest.fixture
def srv() -> Iterator[WireServer]:
    with WireServer(STALL) as server:
        yield server


@pytest.fixture
async def clients() -> AsyncIterator[list[Any]]:
    """SDK clients handed to providers, closed after the test so no socket outlives it."""
    made: list[Any] = []
    yield made
    for client in made:
        if isinstance(client, openai.AsyncOpenAI):
            await client.close()
        else:
            client.close()


@pytest.fixture
def make_provider(clients: list[Any]) -> MakeProvider:
    def make(server: WireServer) -> OpenAIProvider:
        client = openai.OpenAI(base_url=server.url, api_key=API_KEY, max_retries=0)
        async_client = openai.AsyncOpenAI(base_url=server.url, api_key=API_KEY, max_retries=0)
        clients.extend((client, async_client))
        return OpenAIProvider(
            "test-model", base_url=server.url, api_key=API_KEY, client=client, async_client=async_client
        )

    return make


@pytest.fixture
def provider(srv: WireServer, make_provider: MakeProvider) -> OpenAIProvider:
    return make_provider(srv)


async def run(mode: str, provider: Any, prompt: str = "Say hello", **kwargs: Any) -> tuple[Any, list[Any]]:
    """Read one stream to its end, sync or async."""
    if mode == "sync":
        s: Any = streamchat.stream(provider, prompt, **kwargs)
        events = list(s)
    else:
        s = streamchat.astream(provider, prompt, **kwargs)
        events = [e async for e in s]
    assert isinstance(events[-1], Finish) and events[-1].reason == s.finish_reason
    return s, events


async def assert_works_again(mode: str, provider: Any, server: WireServer | None = None) -> None:
    """The next request on the same provider succeeds."""
    if server is not None:
        server.set_replies(text_reply(["Works", " again"]))
    s, _ = await run(mode, provider)
    assert s.finish_reason == "stop" and s.error is None
    assert s.text == ("Works again" if server is not None else provider.text)


def assert_hangup_seen(record: ConnectionRecord, stopped_ns: int) -> None:
    """The server noticed the client hang up, within 100 ms of ``stopped_ns``."""
    assert record.client_closed_ns is not None, "the server closed first: the client never hung up"
    assert record.finished_body_ns is None, "the body was finished: nothing was cut short"
    lag_ns = record.client_closed_ns - stopped_ns
    assert 0 <= lag_ns < HANGUP_NS, f"server saw the hang-up {lag_ns / 1e6:.1f} ms after the stop"


def assert_closed_at_timeout(record: ConnectionRecord, events: list[Any]) -> None:
    """The client hung up when the limit passed: within 100 ms of the stream's end."""
    assert record.client_closed_ns is not None, "the server closed first: the client never hung up"
    assert record.finished_body_ns is None, "the body was finished: nothing was cut short"
    lag_ns = abs(record.client_closed_ns - events[-1].t_ns)
    assert lag_ns < HANGUP_NS, f"server saw the hang-up {lag_ns / 1e6:.1f} ms away from the timeout"


async def wait_closed(server: WireServer, index: int = 0) -> ConnectionRecord:
    return await asyncio.to_thread(server.wait_closed, index, 2.0)


def texts(events: list[Any]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


# -- (a)-(e) closing early ----------------------------------------------------------


async def test_sync_close_during_server_stall(srv: WireServer, provider: OpenAIProvider) -> None:
    s = streamchat.stream(provider, "Say hello")
    first = next(s)
    assert isinstance(first, TextDelta) and first.text == "Hel"
    time.sleep(0.05)  # the server is now in its 5 s sleep step
    stopped_ns = time.perf_counter_ns()
    s.close()
    assert time.perf_counter_ns() - stopped_ns < PROMPT_NS
    assert_hangup_seen(srv.wait_closed(0, 2.0), stopped_ns)
    assert s.finish_reason == "cancelled" and s.error is None
    assert s.text == "Hel"  # what was handed out is kept
    assert list(s) == []
    s.close()  # twice is fine
    assert s.finish_reason == "cancelled" and list(s) == []
    await assert_works_again("sync", provider, srv)


async def test_sync_close_from_another_thread_unblocks_next(srv: WireServer, provider: OpenAIProvider) -> None:
    s = streamchat.stream(provider, "Say hello")
    assert texts([next(s), next(s)]) == ["Hel", "lo"]
    stopped: list[int] = []

    def close() -> None:
        stopped.append(time.perf_counter_ns())
        s.close()

    closer = threading.Timer(0.2, close)
    closer.start()
    t0 = time.perf_counter_ns()
    with pytest.raises(StopIteration):
        next(s)  # blocked in the stall until the other thread closes
    unblocked_ns = time.perf_counter_ns()
    closer.join()
    assert unblocked_ns - t0 >= 150_000_000, "next() returned before the close: it was not blocked"
    assert unblocked_ns - stopped[0] < PROMPT_NS
    assert_hangup_seen(srv.wait_closed(0, 2.0), stopped[0])
    assert s.finish_reason == "cancelled" and s.error is None
    assert s.text == "Hello"
    assert list(s) == []
    await assert_works_again("sync", provider, srv)


async def _start_reader(s: Any, n_events: int) -> tuple[asyncio.Task[int], list[Any]]:
    """Read ``s`` in a task; return once ``n_events`` have arrived (the task goes on reading)."""
    got: list[Any] = []
    ready = asyncio.Event()

    async def reader() -> int:
        async for event in s:
            got.append(event)
            if len(got) == n_events:
                ready.set()
        return time.perf_counter_ns()

    task = asyncio.create_task(reader())
    await asyncio.wait_for(ready.wait(), 2.0)
    await asyncio.sleep(0.2)  # the reader now awaits the next chunk, inside the stall
    assert not task.done()
    return task, got


async def test_async_aclose_from_another_task(srv: WireServer, provider: OpenAIProvider) -> None:
    s = streamchat.astream(provider, "Say hello")
    task, got = await _start_reader(s, 2)
    stopped_ns = time.perf_counter_ns()
    await s.aclose()
    ended_ns = await asyncio.wait_for(task, 1.0)  # the reader's loop just ends
    assert ended_ns - stopped_ns < PROMPT_NS
    assert_hangup_seen(await wait_closed(srv), stopped_ns)
    assert texts(got) == ["Hel", "lo"]
    assert s.finish_reason == "cancelled" and s.error is None
    assert s.text == "Hello"
    assert [e async for e in s] == []
    await s.aclose()
    await assert_works_again("async", provider, srv)


async def test_async_cancelling_the_reader_task(srv: WireServer, provider: OpenAIProvider) -> None:
    s = streamchat.astream(provider, "Say hello")
    task, got = await _start_reader(s, 2)
    stopped_ns = time.perf_counter_ns()
    task.cancel()  # what Gradio's Stop button does
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    assert time.perf_counter_ns() - stopped_ns < PROMPT_NS
    assert_hangup_seen(await wait_closed(srv), stopped_ns)
    assert texts(got) == ["Hel", "lo"]
    assert s.finish_reason == "cancelled" and s.error is None
    assert s.text == "Hello"
    assert [e async for e in s] == []
    await assert_works_again("async", provider, srv)


@MODES
async def test_leaving_the_with_block_early_closes_upstream(
    mode: str, srv: WireServer, provider: OpenAIProvider
) -> None:
    seen: list[Any] = []
    if mode == "sync":
        with streamchat.stream(provider, "Say hello") as s:
            for event in s:
                seen.append(event)
                break
            stopped_ns = time.perf_counter_ns()
    else:
        async with streamchat.astream(provider, "Say hello") as s:
            async for event in s:
                seen.append(event)
                break
            stopped_ns = time.perf_counter_ns()
    assert texts(seen) == ["Hel"]
    assert_hangup_seen(await wait_closed(srv), stopped_ns)
    assert s.finish_reason == "cancelled" and s.text == "Hel"
    await assert_works_again(mode, provider, srv)


async def _close_while_blocked(mode: str, s: Any, after_s: float = 0.2) -> tuple[list[Any], int, int]:
    """Read ``s`` to its end while something else closes it after ``after_s``.

    Sync: the close comes from another thread while this one is blocked in ``next()``.
    Async: ``aclose()`` comes from another task while the reader task awaits.
    Returns the events, when the close was called and when the reading ended.
    """
    stopped: list[int] = []
    if mode == "sync":

        def close() -> None:
            stopped.append(time.perf_counter_ns())
            s.close()

        closer = threading.Timer(after_s, close)
        closer.start()
        events = list(s)
        ended_ns = time.perf_counter_ns()
        closer.join()
        return events, stopped[0], ended_ns

    async def reader() -> list[Any]:
        return [e async for e in s]

    task = asyncio.create_task(reader())
    await asyncio.sleep(after_s)
    assert not task.done()
    stopped.append(time.perf_counter_ns())
    await s.aclose()
    events = await asyncio.wait_for(task, 2.0)  # ends normally: no CancelledError leaks out
    return events, stopped[0], time.perf_counter_ns()


def _open(mode: str, provider: Any, **kwargs: Any) -> Any:
    return (streamchat.stream if mode == "sync" else streamchat.astream)(provider, "Say hello", **kwargs)


async def test_close_while_waiting_for_headers_async(srv: WireServer, provider: OpenAIProvider) -> None:
    srv.set_replies(Reply(headers_delay=1.05, steps=text_reply(["late"]).steps))
    s = _open("async", provider)
    events, stopped_ns, ended_ns = await _close_while_blocked("async", s)
    assert ended_ns - stopped_ns < PROMPT_NS
    assert_hangup_seen(await wait_closed(srv), stopped_ns)
    assert events == [] and s.finish_reason == "cancelled" and s.text == ""
    await assert_works_again("async", provider, srv)


async def test_close_while_waiting_for_headers_sync(srv: WireServer, provider: OpenAIProvider) -> None:
    """The documented limit: a blocked sync request can only hang up once its headers arrive.

    Nothing is read or retried after the close, and nothing reaches the caller.
    """
    srv.set_replies(Reply(headers_delay=1.05, steps=text_reply(["late"]).steps))
    s = _open("sync", provider)
    events, stopped_ns, ended_ns = await _close_while_blocked("sync", s)
    record = await wait_closed(srv)
    assert ended_ns - stopped_ns < 1.05e9 + PROMPT_NS
    assert record.client_closed_ns is not None and record.client_closed_ns - stopped_ns < 1.05e9 + HANGUP_NS
    assert events == [] and s.finish_reason == "cancelled" and s.text == ""
    assert len(srv.requests) == 1
    await assert_works_again("sync", provider, srv)


@MODES
async def test_close_while_waiting_to_retry(mode: str, srv: WireServer, provider: OpenAIProvider) -> None:
    srv.set_replies([error_reply(429, "Rate limit reached", headers=(("Retry-After", "3"),)), text_reply(["x"])])
    s = _open(mode, provider, retry=RetryPolicy(backoff_s=0.01))
    events, stopped_ns, ended_ns = await _close_while_blocked(mode, s)
    assert ended_ns - stopped_ns < PROMPT_NS
    assert events == [] and s.finish_reason == "cancelled" and s.error is None
    await asyncio.sleep(0.1)
    assert len(srv.requests) == 1  # the retry was never sent
    await assert_works_again(mode, provider, srv)


# -- (f) time limits ----------------------------------------------------------------


def assert_timed_out(s: Any, events: list[Any], phase: str, limit: float) -> float:
    """The stream ended with a StreamTimeout of ``phase``; return when (s after the request)."""
    assert s.finish_reason == "error"
    assert s.error is not None and isinstance(s.error.error, StreamTimeout), s.error
    assert s.error.error.phase == phase and s.error.error.limit_s == limit
    assert f"timeouts.{phase}" in s.error.message
    assert isinstance(events[-2], Error)
    duration = s.timings.duration_s
    assert duration is not None
    return float(duration)


@MODES
async def test_first_token_timeout_during_a_stall_before_content(
    mode: str, srv: WireServer, provider: OpenAIProvider
) -> None:
    srv.set_replies(Reply(steps=(data(chunk("", role="assistant")), sleep(5), *STALL.steps[1:])))
    t0 = time.perf_counter()
    s, events = await run(mode, provider, timeouts=Timeouts(first_token=0.5), retry=RetryPolicy(backoff_s=0.01))
    elapsed = time.perf_counter() - t0
    when = assert_timed_out(s, events, "first_token", 0.5)
    assert 0.5 <= when < 0.5 + SLACK_S and elapsed < 0.5 + SLACK_S
    assert s.text == "" and s.error.streamed is False
    assert_closed_at_timeout(await wait_closed(srv), events)
    assert len(srv.requests) == 1  # a timeout is not retried
    await assert_works_again(mode, provider, srv)


@MODES
async def test_first_token_timeout_while_waiting_for_headers(
    mode: str, srv: WireServer, provider: OpenAIProvider
) -> None:
    srv.set_replies(Reply(headers_delay=1.05, steps=text_reply(["late"]).steps))
    t0 = time.perf_counter()
    s, events = await run(mode, provider, timeouts=Timeouts(first_token=0.5), retry=RetryPolicy(backoff_s=0.01))
    elapsed = time.perf_counter() - t0
    when = assert_timed_out(s, events, "first_token", 0.5)
    assert 0.5 <= when < 0.5 + SLACK_S and elapsed < 0.5 + SLACK_S
    assert s.text == ""
    assert_closed_at_timeout(await wait_closed(srv), events)
    assert len(srv.requests) == 1
    await assert_works_again(mode, provider, srv)


@MODES
async def test_idle_timeout_after_some_text(mode: str, srv: WireServer, provider: OpenAIProvider) -> None:
    s, events = await run(mode, provider, timeouts=Timeouts(idle=0.5))
    assert_timed_out(s, events, "idle", 0.5)
    assert s.text == "Hello" and s.error.streamed is True
    gap_s = (events[-1].t_ns - [e for e in events if isinstance(e, TextDelta)][-1].t_ns) / 1e9
    assert 0.5 <= gap_s < 0.5 + SLACK_S
    assert_closed_at_timeout(await wait_closed(srv), events)
    assert len(srv.requests) == 1
    await assert_works_again(mode, provider, srv)


@MODES
async def test_total_timeout_on_a_slow_steady_stream(mode: str, srv: WireServer, provider: OpenAIProvider) -> None:
    steps: list[Any] = [data(chunk("", role="assistant"))]
    for i in range(20):  # a token every 0.2 s, with a ping in between
        steps += [data(chunk(f"t{i} ")), sleep(0.1), comment(), sleep(0.1)]
    srv.set_replies(Reply(steps=(*steps, data(chunk(finish_reason="stop")), done())))
    s, events = await run(mode, provider, timeouts=Timeouts(total=1.0, idle=0.5))
    when = assert_timed_out(s, events, "total", 1.0)
    assert 1.0 <= when < 1.0 + SLACK_S
    assert 3 <= len(texts(events)) <= 7 and s.text.startswith("t0 t1 t2 ")  # partial text kept
    assert_closed_at_timeout(await wait_closed(srv), events)
    assert len(srv.requests) == 1
    await assert_works_again(mode, provider, srv)


@MODES
async def test_total_timeout_with_a_slow_consumer(mode: str, srv: WireServer, provider: OpenAIProvider) -> None:
    tokens = [f"t{i} " for i in range(20)]
    srv.set_replies(text_reply(tokens, gap=0.01))  # the server is faster than the consumer
    s = _open(mode, provider, timeouts=Timeouts(total=0.25))
    t0 = time.perf_counter()
    events: list[Any] = []
    if mode == "sync":  # a limit passes while the caller is busy between two reads
        for event in s:
            events.append(event)
            time.sleep(0.02)  # rendering each token takes a while
    else:
        async for event in s:
            events.append(event)
            await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - t0
    answer = "".join(tokens)
    assert len(srv.requests) == 1  # never sent twice
    assert answer.startswith(s.text) and s.text.count("t0 ") == 1  # nothing duplicated
    if s.finish_reason == "error":  # the limit passed while the consumer was busy...
        assert_timed_out(s, events, "total", 0.25)
        assert elapsed < 0.25 + SLACK_S
    else:  # ...or (async, which times out only while it waits) the whole answer was already in
        assert s.finish_reason == "stop" and s.text == answer
    await assert_works_again(mode, provider, srv)


@MODES
async def test_pings_do_not_reset_the_idle_timeout(mode: str, srv: WireServer, provider: OpenAIProvider) -> None:
    pings = [step for _ in range(30) for step in (sleep(0.1), comment())]
    srv.set_replies(Reply(steps=(data(chunk("", role="assistant")), data(chunk("a")), *pings, *STALL.steps[3:])))
    s, events = await run(mode, provider, timeouts=Timeouts(idle=0.5))
    assert_timed_out(s, events, "idle", 0.5)
    assert s.text == "a"
    gap_s = (events[-1].t_ns - events[0].t_ns) / 1e9
    assert 0.5 <= gap_s < 0.5 + SLACK_S
    assert_closed_at_timeout(await wait_closed(srv), events)
    assert len(srv.requests) == 1
    await assert_works_again(mode, provider, srv)


# -- the scripted provider: same properties, no server ----------------------------------


def scripted() -> ScriptedProvider:
    """Three tokens, then a stall of an hour (first request only), then the rest."""
    return ScriptedProvider(
        "one two three four five", ttft=0.0, tokens_per_s=200.0, faults=[Fault("stall", after_tokens=3, times=1)]
    )


async def test_scripted_sync_close_from_another_thread() -> None:
    provider = scripted()
    s = streamchat.stream(provider, "Count")
    assert texts([next(s) for _ in range(3)]) == ["one", " two", " three"]
    stopped: list[int] = []

    def close() -> None:
        stopped.append(time.perf_counter_ns())
        s.close()

    closer = threading.Timer(0.2, close)
    closer.start()
    t0 = time.perf_counter_ns()
    with pytest.raises(StopIteration):
        next(s)
    unblocked_ns = time.perf_counter_ns()
    closer.join()
    assert unblocked_ns - t0 >= 150_000_000
    assert unblocked_ns - stopped[0] < PROMPT_NS
    assert s.finish_reason == "cancelled" and s.error is None
    assert s.text == "one two three"
    assert list(s) == []
    await assert_works_again("sync", provider)


async def test_scripted_async_aclose_from_another_task() -> None:
    provider = scripted()
    s = streamchat.astream(provider, "Count")
    task, got = await _start_reader(s, 3)
    stopped_ns = time.perf_counter_ns()
    await s.aclose()
    ended_ns = await asyncio.wait_for(task, 1.0)
    assert ended_ns - stopped_ns < PROMPT_NS
    assert texts(got) == ["one", " two", " three"]
    assert s.finish_reason == "cancelled" and s.text == "one two three"
    await assert_works_again("async", provider)


async def test_scripted_async_cancelling_the_reader_task() -> None:
    provider = scripted()
    s = streamchat.astream(provider, "Count")
    task, _ = await _start_reader(s, 3)
    stopped_ns = time.perf_counter_ns()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    assert time.perf_counter_ns() - stopped_ns < PROMPT_NS
    assert s.finish_reason == "cancelled" and s.text == "one two three"
    await assert_works_again("async", provider)


@MODES
async def test_scripted_stall_trips_the_idle_timeout(mode: str) -> None:
    provider = scripted()
    s, events = await run(mode, provider, timeouts=Timeouts(idle=0.3))
    assert_timed_out(s, events, "idle", 0.3)
    assert s.text == "one two three" and s.error.streamed is True
    gap_s = (events[-1].t_ns - [e for e in events if isinstance(e, TextDelta)][-1].t_ns) / 1e9
    assert 0.3 <= gap_s < 0.3 + SLACK_S
    await assert_works_again(mode, provider)
