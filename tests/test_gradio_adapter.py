"""The Gradio adapter without a browser: coalescing on a fake clock, drawing, history, limits, stop.

No Gradio server runs here; the streams are real (the scripted provider, or the
loopback wire server for what only HTTP carries, like tool calls).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from contextlib import aclosing
from typing import Any

import pytest

from streamchat import Fault, ScriptedProvider, astream, stream
from streamchat.gradio import (
    AnswerView,
    ChatSession,
    InputRejected,
    Limits,
    Turns,
    arace,
    astream_answer,
    chat_fn,
    check_input,
    content_text,
    is_annotation,
    stream_answer,
    tidy_markdown,
    to_prompt,
    without_last_answer,
)
from streamchat.providers.openai import OpenAIProvider
from streamchat.testing.wire_server import Reply, WireServer, chunk, data, done, usage_chunk

N = 4000
TEXT = " ".join(f"t{i}" for i in range(N))


def fast(clock_free: bool = True, **kw: Any) -> ScriptedProvider:
    """4,000 tokens at 2,000 tokens/s: 2 s of stream on the clock."""
    return ScriptedProvider(TEXT, ttft=0.0, tokens_per_s=2000.0, **kw)


def title(message: dict[str, Any]) -> str:
    return str((message.get("metadata") or {}).get("title", ""))


def answer_text(messages: list[Any]) -> str:
    return "".join(m["content"] for m in messages if not is_annotation(m))


async def collect(gen: Any) -> list[Any]:
    async with aclosing(gen):
        return [frame async for frame in gen]


# -- coalescing, on a fake clock ---------------------------------------------------


@pytest.mark.parametrize("rate", [20.0, 5.0])
async def test_async_updates_stay_near_the_rate_and_end_on_the_exact_final_state(fake_clock: Any, rate: float) -> None:
    s = astream(fast(), "hi", clock=fake_clock)
    frames = await collect(astream_answer(s, rate=rate, clock=fake_clock))
    seconds = s.timings.duration_s
    assert seconds == pytest.approx((N - 1) / 2000, abs=1e-3)  # the fake clock makes the schedule exact
    # One frame before the request, at most `rate` a second while streaming, and the final one.
    assert seconds * rate * 0.6 <= len(frames) <= seconds * rate + 3
    final = frames[-1]
    assert answer_text(final) == TEXT
    assert title(final[-1]) == f"TTFT 0.00 s · {N} tokens · 2000.0 tok/s · {seconds:.2f} s · stop"


def test_sync_updates_stay_near_the_rate_and_end_on_the_exact_final_state(fake_clock: Any) -> None:
    s = stream(fast(), "hi", clock=fake_clock)
    frames = list(stream_answer(s, rate=20, clock=fake_clock))
    assert len(frames) <= s.timings.duration_s * 20 + 3
    assert answer_text(frames[-1]) == TEXT and title(frames[-1][-1]).endswith("· stop")


async def test_without_coalescing_every_chunk_is_a_frame(fake_clock: Any) -> None:
    s = astream(ScriptedProvider(" ".join(["x"] * 200), ttft=0.0, tokens_per_s=2000.0), "hi", clock=fake_clock)
    frames = await collect(astream_answer(s, rate=0, clock=fake_clock))
    assert len(frames) >= 200  # the anchor's behaviour: what coalescing saves


async def test_a_race_is_coalesced_across_answers(fake_clock: Any) -> None:
    streams = [astream(fast(), "a", clock=fake_clock), astream(fast(), "b", clock=fake_clock)]
    frames = await collect(arace(streams, rate=20, clock=fake_clock))
    assert len(frames) <= 2 * 20 + 4
    assert [answer_text(side) for side in frames[-1]] == [TEXT, TEXT]
    assert all(title(side[-1]).endswith("· stop") for side in frames[-1])


async def test_a_race_does_not_spin_while_one_answer_is_done_and_the_other_waits() -> None:
    streams = [astream(ScriptedProvider("quick", ttft=0.0), "a"), astream(ScriptedProvider("late", ttft=1.0), "b")]
    cpu = time.process_time()
    frames = await collect(arace(streams))
    assert [answer_text(side) for side in frames[-1]] == ["quick", "late"]
    assert time.process_time() - cpu < 0.5  # a busy loop would burn the whole second


async def test_waiting_is_shown_with_its_time_passing() -> None:
    s = astream(ScriptedProvider("late answer", ttft=1.2, tokens_per_s=100), "hi")
    frames = await collect(astream_answer(s, tick_s=0.3))
    waiting = [title(f[-1]) for f in frames if title(f[-1]).startswith("Waiting for the first token")]
    assert len(waiting) >= 3  # the first paint, then ticks while nothing arrives
    assert waiting[-1] != waiting[0]
    assert answer_text(frames[-1]) == "late answer"


# -- drawing -----------------------------------------------------------------------


async def test_reasoning_is_a_thought_pending_then_done_with_its_duration(fake_clock: Any) -> None:
    provider = ScriptedProvider("The answer.", reasoning="first this then that", ttft=0.5, tokens_per_s=10)
    s = astream(provider, "hi", clock=fake_clock)
    frames = await collect(astream_answer(s, rate=0, clock=fake_clock))
    thoughts = [f[0] for f in frames if f and f[0].get("metadata", {}).get("title", "").startswith("Think")]
    assert thoughts and thoughts[0]["metadata"]["status"] == "pending"
    final = frames[-1][0]
    assert final["content"] == "first this then that"
    assert final["metadata"] == {"title": "Thought", "status": "done", "duration": 0.4}  # 4 tokens at 10/s
    assert answer_text(frames[-1]) == "The answer."
    assert to_prompt([{"role": "user", "content": "hi"}, *frames[-1]])[-1].content == "The answer."


def test_tool_calls_are_drawn_as_such() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    more = {"index": 0, "function": {"arguments": '{"city": "Oslo"}'}}
    reply = Reply(steps=(
        data(chunk(role="assistant", tool_calls=[call])), data(chunk(tool_calls=[more])),
        data(chunk(finish_reason="tool_calls")), data(usage_chunk(5, 7)), done(),
    ))
    with WireServer(reply) as srv:
        provider = OpenAIProvider("test-model", base_url=srv.url, api_key="sk-none")
        with provider:
            frames = list(stream_answer(stream(provider, "weather?"), rate=0))
    final = frames[-1]
    assert title(final[0]) == "🛠️ Tool call: get_weather"
    assert final[0]["content"] == '```json\n{\n  "city": "Oslo"\n}\n```'
    assert final[0]["metadata"]["status"] == "done"
    assert title(final[-1]).endswith("· tool_calls")


async def test_an_error_keeps_the_partial_text_and_says_what_failed() -> None:
    provider = ScriptedProvider("one two three four five", ttft=0.0, tokens_per_s=500, faults=[Fault("drop", after_tokens=2)])
    frames = await collect(astream_answer(astream(provider, "hi")))
    final = frames[-1]
    assert answer_text(final) == "one two"
    error = next(m for m in final if "Error" in title(m))
    assert title(error) == "⚠️ Error: the answer above is cut short"
    assert "dropped mid-answer" in error["content"] and "Retrying may help." in error["content"]
    assert title(final[-1]).endswith("· error")


def test_a_queued_answer_shows_its_place() -> None:
    turns = Turns()
    first, second = turns.take(), turns.take()
    view = AnswerView()
    view.queue_ahead = turns.ahead(second)
    s = stream(ScriptedProvider("x"), "hi")
    assert title(view.messages(s, 0)[-1]).startswith("Queued: 1 answer ahead (this model answers one request at a time)")
    turns.done(first)
    assert turns.ahead(second) == 0


@pytest.mark.parametrize(
    ("growing", "shown"),
    [
        ("Here:\n`", "Here:"),  # a fence being typed is held back
        ("Here:\n``", "Here:"),
        ("```py\nx = 1\n``", "```py\nx = 1"),  # so is a closing fence
        ("```py\nx = '**", "```py\nx = '**"),  # inside a code block nothing else changes
        ("Some **bold te", "Some **bold te**"),  # an open emphasis is closed
        ("Some **", "Some "),  # ... or held back when nothing follows it yet
        ("call `f(x", "call `f(x`"),
        ("**done** and `code`", "**done** and `code`"),
        ("a\n\n- item **one", "a\n\n- item **one**"),
    ],
)
def test_growing_markdown_is_tidied_for_display(growing: str, shown: str) -> None:
    assert tidy_markdown(growing) == shown


async def test_the_final_frame_shows_the_exact_text_even_when_it_ends_oddly(fake_clock: Any) -> None:
    s = astream(ScriptedProvider("Look: **unfinished", ttft=0.0, tokens_per_s=100), "hi", clock=fake_clock)
    frames = await collect(astream_answer(s, rate=0, clock=fake_clock))
    assert answer_text(frames[-1]) == "Look: **unfinished"


# -- history -----------------------------------------------------------------------


def test_history_to_prompt_leaves_annotations_out() -> None:
    history = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}], "metadata": None},
        {"role": "assistant", "content": "let me think", "metadata": {"title": "Thought", "status": "done"}},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}], "metadata": None},
        {"role": "assistant", "content": "world"},
        {"role": "assistant", "content": "| metric |", "metadata": {"title": "TTFT 0.1 s · stop"}},
        {"role": "user", "content": [{"type": "file", "file": {"path": "/tmp/x.png"}}, {"type": "text", "text": "and?"}]},
    ]
    prompt = to_prompt(history)
    assert [(m.role, m.content) for m in prompt] == [("user", "hi"), ("assistant", "Hello\n\nworld"), ("user", "and?")]
    assert without_last_answer(history[:5]) == history[:1]
    assert without_last_answer([]) == []
    assert content_text({"type": "file", "file": {}}) == ""


async def test_chat_fn_works_as_a_chat_interface_function() -> None:
    seen: list[Any] = []

    def reply(request: Any) -> str:
        seen.append([(m.role, m.content) for m in request.messages])
        return "sure"

    fn = chat_fn(ScriptedProvider(reply, ttft=0.0, tokens_per_s=1000), system="Be brief.", max_tokens=50)
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
               {"role": "assistant", "content": "x", "metadata": {"title": "TTFT 1 s"}}]
    frames = await collect(fn("c", history))
    assert answer_text(frames[-1]) == "sure"
    assert seen == [[("system", "Be brief."), ("user", "a"), ("assistant", "b"), ("user", "c")]]


# -- limits ------------------------------------------------------------------------


def test_input_limits_say_what_to_do(fake_clock: Any) -> None:
    limits = Limits(max_input_chars=10, max_requests=2, window_s=60)
    session = ChatSession(fake_clock)
    with pytest.raises(InputRejected, match="The message is empty"):
        check_input("   ", limits, session)
    with pytest.raises(InputRejected, match="has 11 characters; this app takes at most 10. Shorten it"):
        check_input("x" * 11, limits, session)
    check_input("one", limits, session)
    check_input("two", limits, session)
    with pytest.raises(InputRejected, match="takes 2 per 60 s per session. Try again in 60 s"):
        check_input("three", limits, session)
    fake_clock.ns += 61 * 10**9
    check_input("four", limits, session)
    with pytest.raises(ValueError, match="max_input_chars must be at least 1"):
        Limits(max_input_chars=0)


def test_a_busy_session_refuses_a_second_message() -> None:
    session = ChatSession()
    s = stream(ScriptedProvider("x"), "hi")
    assert session.attach(s)
    with pytest.raises(InputRejected, match="still streaming: wait for it or press Stop"):
        check_input("again", Limits(), session)
    session.detach(s)
    check_input("again", Limits(), session)


# -- stop ----------------------------------------------------------------------------


def stalling() -> ScriptedProvider:
    return ScriptedProvider("one two three four", ttft=0.0, tokens_per_s=1000, faults=[Fault("stall", after_tokens=2, stall_s=30)])


async def test_session_stop_ends_an_async_answer_at_once_and_marks_it_stopped() -> None:
    session = ChatSession()
    s = astream(stalling(), "hi")
    frames: list[Any] = []

    async def consume() -> None:
        frames.extend(await collect(astream_answer(s, session=session)))

    task = asyncio.ensure_future(consume())
    while "one two" not in s.text:
        await asyncio.sleep(0.01)
    stopped = time.perf_counter()
    assert await session.stop() == 1
    await asyncio.wait_for(task, 5)
    assert time.perf_counter() - stopped < 1.0
    assert s.finish_reason == "cancelled" and not session.busy
    assert answer_text(frames[-1]) == "one two"
    assert title(frames[-1][-1]).endswith("· stopped")


def test_session_stop_ends_a_sync_answer_blocked_in_a_read() -> None:
    session = ChatSession()
    s = stream(stalling(), "hi")
    frames: list[Any] = []
    reader = threading.Thread(target=lambda: frames.extend(stream_answer(s, session=session)))
    reader.start()
    deadline = time.monotonic() + 5
    while "one two" not in s.text and time.monotonic() < deadline:
        time.sleep(0.01)
    stopped = time.perf_counter()
    asyncio.run(session.stop())  # Stop's handler runs on Gradio's event loop, not in the reading thread
    reader.join(5)
    assert not reader.is_alive() and time.perf_counter() - stopped < 1.0
    assert answer_text(frames[-1]) == "one two" and title(frames[-1][-1]).endswith("· stopped")


async def test_a_stop_that_comes_before_the_answer_starts_still_stops_it() -> None:
    session = ChatSession()
    await session.stop()
    frames = await collect(astream_answer(astream(ScriptedProvider("never shown"), "hi"), session=session))
    assert answer_text(frames[-1]) == "" and title(frames[-1][-1]).endswith("· stopped")
    session.begin()  # the next message is not stopped
    frames = await collect(astream_answer(astream(ScriptedProvider("shown", ttft=0.0), "hi"), session=session))
    assert answer_text(frames[-1]) == "shown"


async def test_cancelling_the_consumer_closes_the_stream() -> None:
    s = astream(stalling(), "hi")
    task = asyncio.ensure_future(collect(astream_answer(s)))
    while "one two" not in s.text:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert s.finish_reason == "cancelled"


async def test_closing_the_generator_while_it_waits_closes_the_stream_cleanly() -> None:
    s = astream(stalling(), "hi")
    gen = astream_answer(s, tick_s=0.02)
    seen = 0
    async for _ in gen:
        seen += 1 if "one two" in s.text else 0
        if seen == 3:  # repainted twice while nothing arrives: a read is pending
            break
    await gen.aclose()  # what Gradio does when the browser goes away
    assert s.finish_reason == "cancelled"


def test_importing_the_adapter_does_not_import_gradio() -> None:
    code = "import sys, streamchat.gradio; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
