"""Issue #7's failure matrix, notebook column: every drill through ChatWidget (and ``ashow``).

One rig (a key- and model-checking server behind the real fault proxy) and one
widget serve the whole file. Each cell is driven as a notebook user drives the
widget: type, press Send, watch the rendered HTML, press Stop. The assertions
read what the widget renders (the answer's HTML, the message and latency line
below it), then the same widget asks again to show the next request works.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
import pytest_asyncio

from streamchat import RetryPolicy, Timeouts, astream
from streamchat.faults.matrix import DRILLS, LIMIT_S, Drill, Expectation, expect
from streamchat.notebook import ChatWidget, Turn, ashow
from streamchat.notebook.render import HTMLRenderer
from streamchat.providers.openai import OpenAIProvider
from streamchat.testing.fault_rig import RIG_KEY, RIG_MODEL, FaultRig

pytestmark = pytest.mark.asyncio(loop_scope="module")

TIMEOUTS = Timeouts(first_token=LIMIT_S, idle=LIMIT_S)
RETRY = RetryPolicy(backoff_s=0.05)
MARKDOWN = HTMLRenderer()
ERROR = '">Error: '
"""How the widget's message line starts (a message itself may say "RemoteProtocolError: ")."""
WAIT_S = 20.0
"""Generous bound for an answer to end: other suites share the two cores."""

MID_STREAM = ("disconnect", "stall", "malformed", "error_event", "stop_in_stall")
"""Drills where ``ashow`` takes its own path (a partial paint, then an error or a cancellation)."""


@pytest.fixture(scope="module")
def rig() -> Iterator[FaultRig]:
    with FaultRig() as r:
        yield r


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def provider(rig: FaultRig) -> AsyncIterator[OpenAIProvider]:
    p = OpenAIProvider(RIG_MODEL, base_url=rig.url, api_key=RIG_KEY)
    yield p
    await p.aclose()
    p.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chat(provider: OpenAIProvider) -> AsyncIterator[ChatWidget]:
    widget = ChatWidget(provider, timeouts=TIMEOUTS, retry=RETRY)
    yield widget
    widget.close()


def shown(chat: ChatWidget) -> str:
    """Everything the widget renders, as one string."""
    parts = [chat.header.value, chat.input.value, chat.status.value]
    for turn in chat.turns:
        parts += [w.value for w in turn.box.children if hasattr(w, "value")] + [turn.reasoning.children[0].value]
    return "\n".join(parts)


def rendered(text: str) -> str:
    """The answer's HTML for ``text`` ("" shows nothing)."""
    return MARKDOWN.markdown(text) if text else ""


def expected_text(rig: FaultRig, cell: Expectation) -> str:
    return {"complete": rig.full_text, "kept": rig.text_after(4), "none": ""}[cell.partial]


async def until(check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


class Watch:
    """When each rendered value of a widget first held something (perf_counter_ns)."""

    def __init__(self, widget: Any) -> None:
        self.values: list[tuple[int, str]] = []
        widget.observe(lambda change: self.values.append((time.perf_counter_ns(), change["new"])), "value")

    def first(self, needle: str) -> int:
        return next(t for t, value in self.values if needle in value)


def ask(chat: ChatWidget, prompt: str) -> Turn:
    """What a person does: type, then click Send."""
    before = len(chat.turns)
    chat.input.value = prompt
    chat.send_button.click()
    assert len(chat.turns) == before + 1 and chat.busy, chat.status.value
    return chat.turns[-1]


async def finished(chat: ChatWidget) -> Turn:
    turn = await asyncio.wait_for(chat.wait(), WAIT_S)
    assert turn is not None and not chat.busy and chat.stop_button.disabled and not chat.send_button.disabled
    return turn


async def run_drill(rig: FaultRig, chat: ChatWidget, drill: Drill) -> tuple[Turn, Watch, int]:
    """Cause ``drill`` and ask once; returns the turn, a watch on its message line, and when Send was pressed."""
    with rig.drill(drill):
        sent_ns = time.perf_counter_ns()
        turn = ask(chat, f"drill {drill.name}")
        watch = Watch(turn.metrics)
        if drill.name == "stop_in_stall":
            await stop_in_stall(rig, chat, turn)
        await finished(chat)
    return turn, watch, sent_ns


async def stop_in_stall(rig: FaultRig, chat: ChatWidget, turn: Turn) -> None:
    partial = rendered(rig.text_after(4))
    await until(lambda: turn.answer.value == partial)
    await asyncio.sleep(0.1)  # well inside the stall, well before the idle limit
    assert turn.finish_reason is None, "the answer ended before Stop was pressed"
    stop_ns = time.perf_counter_ns()
    chat.stop_button.click()
    record = await asyncio.to_thread(rig.wait_upstream_closed, 5.0)
    assert record.client_closed_ns is not None, "the upstream never saw the connection close"
    took_ms = (record.client_closed_ns - stop_ns) / 1e6
    assert 0 <= took_ms < 200, f"upstream closed {took_ms:.0f} ms after Stop"


def check_deadline(drill: Drill, turn: Turn, watch: Watch, sent_ns: int) -> None:
    """The timeout's message appears within LIMIT_S + 0.5 s of the moment it became due."""
    shown_ns = watch.first(ERROR)
    if drill.name == "stall":
        timings = turn.timings
        due_ns = turn.stream.request_start_ns + int(timings.chunk_offsets_s[-1] * 1e9)  # the last chunk
    else:
        due_ns = sent_ns  # Send was pressed: the request started a little later
    late_s = (shown_ns - due_ns) / 1e9
    assert LIMIT_S - 0.05 <= late_s <= LIMIT_S + 0.5, f"the {drill.name} message appeared {late_s:.2f} s after it was due"


def check_key_never_shown(chat: ChatWidget, turn: Turn, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    out, err = capsys.readouterr()
    seen = [shown(chat), chat.transcript(), repr(chat), repr(turn), turn.error or "", caplog.text, out, err]
    assert not any(RIG_KEY in s for s in seen), "the API key was shown"


@pytest.mark.parametrize("drill", DRILLS, ids=[d.name for d in DRILLS])
async def test_widget_cell(
    rig: FaultRig, chat: ChatWidget, drill: Drill, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    cell = expect(drill, "notebook")
    turn, watch, sent_ns = await run_drill(rig, chat, drill)
    text = expected_text(rig, cell)

    # The text on screen, exactly: a retry that repeated tokens, or lost ones, would fail here.
    assert turn.text == text and turn.answer.value == rendered(text)

    # Retried, and how often.
    attempts = rig.attempts
    if drill.name == "unreachable":
        assert attempts == 0  # nothing got through to count; the stream counts its own attempts
        attempts = turn.timings.attempts
    else:
        assert turn.timings.attempts == attempts
    if not cell.retried:
        assert attempts == 1
    elif drill.name in ("rate_limit", "server_error"):
        assert attempts == 2
    else:
        assert attempts >= 2

    # What the user is told, below the answer.
    message = turn.metrics.value
    if drill.name == "stop_in_stall":
        assert turn.finish_reason == "cancelled" and ERROR not in message
        assert cell.told in message.lower(), message
        assert turn.timings.summary("cancelled") in message
    elif cell.told:
        assert turn.finish_reason == "error" and message.count(ERROR) == 1
        assert html.escape(cell.told) in message, message
        assert turn.timings.summary("error") in message
    else:
        assert turn.finish_reason == "stop" and ERROR not in message
        assert turn.timings.summary("stop") in message
    assert "Traceback" not in shown(chat) and chat.status.value == ""
    if drill.name in ("stall", "slow_first_token"):
        check_deadline(drill, turn, watch, sent_ns)
    check_key_never_shown(chat, turn, caplog, capsys)

    # After any fault, the next request through the same widget works.
    rig.arm("")
    again = ask(chat, f"after {drill.name}")
    await finished(chat)
    assert again.finish_reason == "stop" and rig.attempts == 1
    assert again.text == rig.full_text and again.answer.value == rendered(rig.full_text)
    assert ERROR not in again.metrics.value
    # The earlier answer is left as it was.
    assert turn.answer.value == rendered(text) and turn.metrics.value == message


class Screen:
    """A recording display surface: what ``ashow`` painted, and when."""

    def __init__(self) -> None:
        self.paints: list[tuple[int, dict[str, str], bool]] = []

    def update(self, bundle: Mapping[str, str], *, final: bool) -> None:
        self.paints.append((time.perf_counter_ns(), dict(bundle), final))

    @property
    def plain(self) -> str:
        return self.paints[-1][1]["text/plain"] if self.paints else ""

    @property
    def markdown(self) -> str:
        return self.paints[-1][1]["text/markdown"] if self.paints else ""

    def first(self, needle: str) -> int:
        return next(t for t, bundle, _ in self.paints if needle in bundle["text/plain"])


@pytest.mark.parametrize("drill", [d for d in DRILLS if d.name in MID_STREAM], ids=MID_STREAM)
async def test_ashow_cell(
    rig: FaultRig, provider: OpenAIProvider, drill: Drill, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    cell = expect(drill, "notebook")
    text = expected_text(rig, cell)
    screen = Screen()
    rig.arm(drill.spec)
    s = astream(provider, f"ashow {drill.name}", timeouts=TIMEOUTS, retry=RETRY)
    task = asyncio.create_task(ashow(s, surface=screen))
    if drill.name == "stop_in_stall":
        await until(lambda: screen.plain == text)
        await asyncio.sleep(0.1)
        assert not task.done()
        stop_ns = time.perf_counter_ns()
        task.cancel()  # what a notebook's interrupt does to the awaiting task
        record = await asyncio.to_thread(rig.wait_upstream_closed, 5.0)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert record.client_closed_ns is not None and 0 <= record.client_closed_ns - stop_ns < 200e6
        assert s.finish_reason == "cancelled"
        assert screen.plain == f"{text}\n{s.timings.summary('cancelled')}"
        assert cell.told in screen.markdown.lower()
    else:
        assert await asyncio.wait_for(task, WAIT_S) is s
        assert s.finish_reason == "error" and s.error is not None
        # The text, exactly, then one message naming the fault, then the latency line.
        assert screen.plain == f"{text}\n[error] {s.error.message}\n{s.timings.summary('error')}"
        assert cell.told in s.error.message and screen.markdown.count("**Error:**") == 1
        if drill.name == "stall":
            due_ns = s.request_start_ns + int(s.timings.chunk_offsets_s[-1] * 1e9)
            late_s = (screen.first("[error]") - due_ns) / 1e9
            assert LIMIT_S - 0.05 <= late_s <= LIMIT_S + 0.5, f"the stall message appeared {late_s:.2f} s after it was due"
    assert screen.paints[-1][2] and sum(final for _, _, final in screen.paints) == 1
    assert rig.attempts == 1 and s.text == text
    out, err = capsys.readouterr()
    assert not any(RIG_KEY in x for x in (*(b["text/plain"] + b["text/markdown"] for _, b, _ in screen.paints), caplog.text, out, err))

    rig.arm("")
    nxt = Screen()
    again = await asyncio.wait_for(ashow(astream(provider, "again", timeouts=TIMEOUTS, retry=RETRY), surface=nxt), WAIT_S)
    assert again.finish_reason == "stop" and rig.attempts == 1
    assert nxt.plain == f"{rig.full_text}\n{again.timings.summary('stop')}"
