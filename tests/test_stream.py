"""The stream object, sync and async alike, driven by the scripted provider."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from conftest import FakeClock, Run

from streamchat import Error, Fault, Finish, RetryPolicy, ScriptedProvider, TextDelta, Timeouts, Usage, astream, stream
from streamchat.errors import ConfigError, RateLimitError, StreamTimeout
from streamchat.providers.scripted import tokenize

FAST = {"ttft": 0.0, "tokens_per_s": 0.0}
TEXT = "one two three four five six seven eight"


def test_happy_path_accumulates_the_whole_message(run: Run) -> None:
    s, events = run(ScriptedProvider(TEXT, reasoning="let me think", **FAST))
    assert s.text == TEXT
    assert s.reasoning == "let me think"
    assert s.finish_reason == "stop"
    assert [e.kind for e in events][-2:] == ["usage", "finish"]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == TEXT
    times = [e.t_ns for e in events]
    assert times == sorted(times)
    assert s.usage == Usage(0, len(tokenize("let me think")) + len(tokenize(TEXT)), s.usage.t_ns)
    assert s.error is None


def test_exactly_one_finish_and_it_is_last(run: Run) -> None:
    for faults in ([], [Fault("drop", after_tokens=2)], [Fault("error_event", after_tokens=2)]):
        _, events = run(ScriptedProvider(TEXT, faults=faults, **FAST))
        assert [isinstance(e, Finish) for e in events].count(True) == 1
        assert isinstance(events[-1], Finish)


def test_timings_are_exact_with_a_fake_clock(run: Run, fake_clock: FakeClock) -> None:
    provider = ScriptedProvider(TEXT, ttft=0.5, tokens_per_s=10)
    s, _ = run(provider, clock=fake_clock)
    t = s.timings
    n = len(tokenize(TEXT))
    assert t.ttft_s == pytest.approx(0.5)
    assert t.e2e_s == pytest.approx(0.5 + (n - 1) * 0.1)
    assert t.tpot_s == pytest.approx(0.1)
    assert t.decode_tokens_per_s == pytest.approx(10)
    assert t.output_tokens == n and t.token_source == "server"
    assert t.itl_s == pytest.approx([0.1] * (n - 1))
    assert t.chunk_gaps_s == pytest.approx([0.5] + [0.1] * (n - 1))


def test_reasoning_counts_for_ttfo_not_ttft(run: Run, fake_clock: FakeClock) -> None:
    s, _ = run(ScriptedProvider("answer", reasoning="hmm", ttft=0.2, tokens_per_s=10), clock=fake_clock)
    assert s.timings.ttfo_s == pytest.approx(0.2)
    assert s.timings.ttft_s == pytest.approx(0.3)


def test_max_tokens_gives_length(run: Run) -> None:
    s, _ = run(ScriptedProvider(TEXT, **FAST), max_tokens=3)
    assert s.finish_reason == "length"
    assert s.text == "".join(tokenize(TEXT)[:3])


def test_retry_before_first_token_honours_retry_after(run: Run) -> None:
    provider = ScriptedProvider(TEXT, faults=[Fault("rate_limit", retry_after=0.2, times=1)], **FAST)
    started = time.perf_counter()
    s, events = run(provider)
    assert s.finish_reason == "stop" and s.text == TEXT
    assert s.timings.attempts == 2
    assert time.perf_counter() - started >= 0.2
    assert s.timings.ttft_s >= 0.2
    assert not any(isinstance(e, Error) for e in events)


def test_retries_are_bounded(run: Run) -> None:
    provider = ScriptedProvider(TEXT, faults=[Fault("server_error")], **FAST)
    s, events = run(provider, retry=RetryPolicy(max_retries=2, backoff_s=0.01))
    assert s.finish_reason == "error"
    assert s.timings.attempts == 3
    assert s.error is not None and s.error.retryable and not s.error.streamed
    assert "scripted 500" in s.error.message


def test_retry_after_too_long_is_not_waited_for(run: Run) -> None:
    provider = ScriptedProvider(TEXT, faults=[Fault("rate_limit", retry_after=3600)], **FAST)
    s, _ = run(provider)
    assert s.finish_reason == "error" and s.timings.attempts == 1
    assert isinstance(s.error.error, RateLimitError)


def test_no_retry_that_could_only_start_after_the_time_limit(run: Run) -> None:
    # the wait would end past the first-token limit: the real cause is reported at once, not a timeout later
    provider = ScriptedProvider(TEXT, faults=[Fault("rate_limit", retry_after=5)], **FAST)
    started = time.perf_counter()
    s, _ = run(provider, timeouts=Timeouts(first_token=1.0))
    assert s.finish_reason == "error" and s.timings.attempts == 1
    assert isinstance(s.error.error, RateLimitError) and time.perf_counter() - started < 0.5
    assert "1 attempts" not in s.timings.summary("error")


def test_summary_counts_attempts_after_a_retry(run: Run) -> None:
    provider = ScriptedProvider(TEXT, faults=[Fault("server_error")], **FAST)
    s, _ = run(provider, retry=RetryPolicy(max_retries=1, backoff_s=0.01))
    assert s.timings.summary("error").endswith("· 2 attempts · error")


def test_no_retry_after_first_token_and_partial_text_kept(run: Run) -> None:
    provider = ScriptedProvider(TEXT, faults=[Fault("drop", after_tokens=3)], **FAST)
    s, events = run(provider, retry=RetryPolicy(max_retries=5, backoff_s=0.01))
    assert s.finish_reason == "error"
    assert s.text == "".join(tokenize(TEXT)[:3])
    assert s.timings.attempts == 1
    assert s.error.streamed and not s.error.retryable
    assert "dropped" in s.error.message


def test_error_payload_mid_stream(run: Run) -> None:
    s, _ = run(ScriptedProvider(TEXT, faults=[Fault("error_event", after_tokens=2, message="GPU fell over")], **FAST))
    assert s.finish_reason == "error" and s.text == "".join(tokenize(TEXT)[:2])
    assert "GPU fell over" in s.error.message


def test_auth_error_is_not_retried(run: Run) -> None:
    s, _ = run(ScriptedProvider(TEXT, faults=[Fault("auth")], **FAST), retry=RetryPolicy(backoff_s=0.01))
    assert s.finish_reason == "error" and s.timings.attempts == 1 and not s.error.retryable


@pytest.mark.parametrize(
    ("timeouts", "fault", "phase"),
    [
        (Timeouts(first_token=0.3), None, "first_token"),
        (Timeouts(idle=0.3), Fault("stall", after_tokens=2), "idle"),
        (Timeouts(total=0.5), None, "total"),
    ],
)
def test_timeouts_fire_within_limit_plus_half_a_second(run: Run, timeouts: Timeouts, fault: Fault | None, phase: str) -> None:
    ttft = 5.0 if phase == "first_token" else 0.0
    tps = 10.0 if phase == "total" else 0.0
    provider = ScriptedProvider(TEXT * 5, ttft=ttft, tokens_per_s=tps, faults=[fault] if fault else [])
    started = time.perf_counter()
    s, _ = run(provider, timeouts=timeouts)
    took = time.perf_counter() - started
    limit = {"first_token": 0.3, "idle": 0.3, "total": 0.5}[phase]
    assert s.finish_reason == "error"
    assert isinstance(s.error.error, StreamTimeout) and s.error.error.phase == phase
    assert limit <= took < limit + 0.5
    assert f"timeouts.{phase}" in s.error.message
    if phase != "first_token":
        assert s.text  # partial text kept


def test_close_from_another_thread_during_a_stall_sync() -> None:
    provider = ScriptedProvider(TEXT, faults=[Fault("stall", after_tokens=3)], **FAST)
    s = stream(provider, "hi")
    first = next(iter(s))
    timer = threading.Timer(0.2, s.close)
    timer.start()
    started = time.perf_counter()
    rest = list(s)
    assert time.perf_counter() - started < 0.5
    assert s.finish_reason == "cancelled"
    assert first.kind == "text" and s.text == "".join(tokenize(TEXT)[:3])
    assert all(e.kind == "text" for e in rest)
    s.close()  # idempotent
    assert list(s) == []


async def test_aclose_from_another_task_during_a_stall() -> None:
    provider = ScriptedProvider(TEXT, faults=[Fault("stall", after_tokens=3)], **FAST)
    s = astream(provider, "hi")

    async def read() -> list[object]:
        return [e async for e in s]

    task = asyncio.create_task(read())
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    await s.aclose()
    events = await asyncio.wait_for(task, 1)
    assert time.perf_counter() - started < 0.2
    assert s.finish_reason == "cancelled" and len(events) == 3
    await s.aclose()


async def test_cancelling_the_reader_task_cancels_the_stream() -> None:
    provider = ScriptedProvider(TEXT, faults=[Fault("stall", after_tokens=2)], **FAST)
    s = astream(provider, "hi")

    async def read() -> None:
        async for _ in s:
            pass

    task = asyncio.create_task(read())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert s.finish_reason == "cancelled" and s.text == "".join(tokenize(TEXT)[:2])


def test_close_before_start_and_context_manager() -> None:
    s = stream(ScriptedProvider(TEXT, **FAST), "hi")
    s.close()
    assert list(s) == [] and s.finish_reason == "cancelled"
    with stream(ScriptedProvider(TEXT, **FAST), "hi") as s2:
        for event in s2:
            if event.kind == "text":
                break
    assert s2.finish_reason == "cancelled" and s2.text == "one"


def test_helpers_until_done_and_iter_text() -> None:
    assert stream(ScriptedProvider(TEXT, **FAST), "hi").until_done().text == TEXT
    assert "".join(stream(ScriptedProvider(TEXT, **FAST), "hi").iter_text()) == TEXT

    async def go() -> str:
        return "".join([t async for t in astream(ScriptedProvider(TEXT, **FAST), "hi").iter_text()])

    assert asyncio.run(go()) == TEXT


@pytest.mark.parametrize(
    ("prompt", "kwargs", "message"),
    [
        ("", {}, "prompt is empty"),
        ([{"role": "robot", "content": "x"}], {}, "role must be one of"),
        ([{"role": "user", "content": 3}], {}, "content must be a string"),
        ("hi", {"temperature": 5}, "temperature must be between"),
        ("hi", {"max_tokens": 0}, "max_tokens must be at least 1"),
    ],
)
def test_bad_input_is_refused_before_sending(prompt: object, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        stream(ScriptedProvider(TEXT, **FAST), prompt, **kwargs)  # type: ignore[arg-type]


def test_messages_and_system_prompt_reach_the_provider() -> None:
    seen = []

    def reply(request: object) -> str:
        seen.append(request)
        return "ok"

    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    stream(ScriptedProvider(reply, **FAST), history, system="be brief", temperature=0.1).until_done()
    (request,) = seen
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "user"]
    assert request.temperature == 0.1


def test_repr_is_short_and_informative() -> None:
    s = stream(ScriptedProvider(TEXT, **FAST), "hi").until_done()
    assert repr(s) == f"<Stream scripted:scripted stop, {len(TEXT)} chars>"
