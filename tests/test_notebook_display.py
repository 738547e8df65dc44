"""show() / ashow(), what they render, and the latency tables and plots.

The screen is a recording surface here; the same code against a real kernel's
display messages is checked in test_notebook_magic.py and by the benchmark.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from conftest import FakeClock

from streamchat import Fault, ScriptedProvider, astream, stream
from streamchat.errors import ConfigError
from streamchat.notebook import (
    Snapshot,
    arrivals_table,
    ashow,
    plot_gaps,
    plot_overview,
    plot_timeline,
    plot_tokens_per_s,
    plot_ttft,
    show,
    summary_table,
    timings_table,
)
from streamchat.notebook.render import HTMLRenderer, close_fences, escape_markdown, to_bundle, to_markdown, to_plain
from streamchat.providers.openai import OpenAIProvider
from streamchat.testing.wire_server import Reply, WireServer, chunk, data, done, sleep

API_KEY = "sk-test-" + "N0tebookD1splayK3yZZ9"


class Screen:
    """A surface that records every paint and when it happened."""

    def __init__(self) -> None:
        self.paints: list[tuple[float, dict[str, str], bool]] = []
        self.started = time.perf_counter()

    def update(self, bundle: Mapping[str, str], *, final: bool) -> None:
        self.paints.append((time.perf_counter() - self.started, dict(bundle), final))

    @property
    def last(self) -> dict[str, str]:
        return self.paints[-1][1]


def words(n: int) -> str:
    return " ".join(f"w{i % 97}" for i in range(n))


# -- rendering (pure) -----------------------------------------------------------


def test_markdown_shows_reasoning_apart_then_text_error_and_latency_line() -> None:
    snap = Snapshot(text="Partial *answer*", reasoning="step one\nstep two", error="boom_<x> (HTTP 500)",
                    finish_reason="error", summary="TTFT 0.10 s · ~3 tokens · error")
    md = to_markdown(snap)
    reasoning, text, error, line = md.split("\n\n")
    assert reasoning == "> *Reasoning*\n>\n> step one\n> step two"
    assert text == "Partial *answer*"  # the model's Markdown is kept
    assert error == r"**Error:** boom\_\<x\> \(HTTP 500\)"  # ours is escaped
    assert line == r"*TTFT 0.10 s · \~3 tokens · error*"
    assert to_plain(snap) == "[reasoning] step one\nstep two\nPartial *answer*\n[error] boom_<x> (HTTP 500)\nTTFT 0.10 s · ~3 tokens · error"


def test_waiting_until_something_arrives() -> None:
    assert "waiting for the first token" in to_markdown(Snapshot())
    assert "waiting" not in to_markdown(Snapshot(text="a"))
    assert "waiting" not in to_markdown(Snapshot(finish_reason="cancelled", summary="TTFT — · ~0 tokens · cancelled"))


def test_an_open_code_fence_is_closed_so_the_latency_line_stays_outside() -> None:
    assert close_fences("```py\nx = 1") == "```py\nx = 1\n```"
    assert close_fences("~~~~\na\n") == "~~~~\na\n~~~~"
    assert close_fences("```\na\n```\ntext") == "```\na\n```\ntext"
    assert close_fences("````\n```\nstill inside") == "````\n```\nstill inside\n````"
    md = to_markdown(Snapshot(text="```py\nx = 1", finish_reason="stop", summary="TTFT 1.00 s"))
    assert md.endswith("```\n\n*TTFT 1.00 s*")


def test_escape_markdown_makes_text_literal() -> None:
    assert escape_markdown("a*b_c [d](e) <f> `g`") == r"a\*b\_c \[d\]\(e\) \<f\> \`g\`"


def test_widget_html_never_runs_model_html() -> None:
    out = HTMLRenderer().markdown("**hi** <img src=x onerror=alert(1)> <script>x</script>")
    assert "<strong>hi</strong>" in out
    assert "<img" not in out and "<script" not in out
    assert "&lt;img" in out
    assert HTMLRenderer.plain("<b>a</b>\nb") == '<div style="white-space: pre-wrap">&lt;b&gt;a&lt;/b&gt;\nb</div>'


# -- show(): the sync twin --------------------------------------------------------


def test_show_paints_at_most_rate_and_the_final_state_exactly() -> None:
    text = words(1500)
    s = stream(ScriptedProvider(text, ttft=0.0, tokens_per_s=3000.0), "hi")
    screen = Screen()
    assert show(s, surface=screen) is s
    seconds = s.timings.duration_s
    assert seconds is not None
    streamed = screen.paints[1:-1]
    assert len(streamed) <= seconds * 20 + 2, f"{len(streamed)} paints for {seconds:.2f} s"
    assert len(streamed) >= 3  # it did stream, not only paint at the end
    assert [final for *_, final in screen.paints] == [False] * (len(screen.paints) - 1) + [True]
    assert "waiting for the first token" in screen.paints[0][1]["text/markdown"]
    assert screen.last == to_bundle(Snapshot.of(s))
    assert s.text == text and screen.last["text/plain"].startswith(text + "\n")
    assert screen.last["text/markdown"].endswith(f"*{escape_markdown(s.timings.summary('stop'))}*")


def test_show_paints_text_that_arrived_before_a_stall_during_the_stall() -> None:
    before = words(200)
    provider = ScriptedProvider(before + " after", ttft=0.0, tokens_per_s=4000, faults=[Fault("stall", after_tokens=200, stall_s=1.5)])
    screen = Screen()
    s = show(stream(provider, "hi"), surface=screen)
    during_stall = [b["text/plain"] for t, b, _ in screen.paints if t < 1.4]
    assert during_stall[-1] == before, "text that had arrived stayed hidden during the stall"
    assert s.text == before + " after" and screen.last["text/plain"].startswith(s.text)


def test_show_keeps_partial_text_and_shows_one_error_line() -> None:
    provider = ScriptedProvider(words(50), ttft=0.0, tokens_per_s=2000, faults=[Fault("drop", after_tokens=10)])
    screen = Screen()
    s = show(stream(provider, "hi"), surface=screen)
    assert s.finish_reason == "error" and s.text == words(10)
    md = screen.last["text/markdown"]
    assert md.startswith(words(10) + "\n\n**Error:** the connection dropped mid")
    assert md.count("Error") == 1 and md.endswith("error*")


def test_show_refuses_what_it_cannot_draw() -> None:
    with pytest.raises(ConfigError, match=r"await ashow\(s\)"):
        show(astream(ScriptedProvider(), "hi"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not str"):
        show("hello")  # type: ignore[arg-type]


STALLED = Reply(steps=(data(chunk("", role="assistant")), data(chunk("Hel")), data(chunk("lo")), sleep(30), data(chunk("!")),
                       data(chunk(finish_reason="stop")), done()))


@pytest.fixture
def stalled() -> Iterator[WireServer]:
    with WireServer(STALLED) as server:
        yield server


def test_interrupt_while_waiting_closes_the_connection_keeps_the_text_and_goes_on(stalled: WireServer) -> None:
    """Jupyter's ■ sends SIGINT; here the test sends it to itself once "Hello" is on screen."""
    provider = OpenAIProvider("test-model", base_url=stalled.url, api_key=API_KEY)
    fired: list[threading.Timer] = []

    class Interrupting(Screen):
        def update(self, bundle: Mapping[str, str], *, final: bool) -> None:
            super().update(bundle, final=final)
            if bundle["text/plain"].startswith("Hello") and not fired:
                fired.append(threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)))
                fired[0].start()

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    screen = Interrupting()
    s = stream(provider, "hi")
    try:
        with pytest.raises(KeyboardInterrupt):
            show(s, surface=screen)
        stopped_ns = time.perf_counter_ns()
    finally:
        for timer in fired:
            timer.cancel()
        signal.signal(signal.SIGINT, previous)
        provider.close()
    record = stalled.wait_closed(0, timeout=5.0)
    assert record.client_closed_ns is not None, "the server never saw the client hang up"
    assert record.client_closed_ns - stopped_ns < 1_000_000_000
    assert s.finish_reason == "cancelled" and s.text == "Hello"
    assert screen.paints[-1][2] and screen.last["text/plain"].startswith("Hello\n")
    assert screen.last["text/markdown"].endswith("cancelled*")
    assert API_KEY not in repr(screen.paints)


# -- ashow(): the async twin ------------------------------------------------------


async def test_ashow_paints_at_most_rate_and_the_final_state_exactly(fake_clock: FakeClock) -> None:
    text = words(3000)
    s = astream(ScriptedProvider(text, ttft=0.0, tokens_per_s=1000.0, reasoning="think first"), "hi", clock=fake_clock)
    screen = Screen()
    assert await ashow(s, surface=screen, clock=fake_clock) is s
    fake_seconds = s.timings.duration_s
    assert fake_seconds is not None
    assert len(screen.paints) - 2 <= fake_seconds * 20 + 2
    assert s.text == text and screen.last == to_bundle(Snapshot.of(s))
    assert screen.last["text/markdown"].startswith("> *Reasoning*\n>\n> think first\n\n" + text)


async def test_cancelling_ashow_closes_the_stream_and_keeps_the_partial_answer() -> None:
    s = astream(ScriptedProvider(words(500), ttft=0.0, tokens_per_s=200), "hi")
    screen = Screen()
    task = asyncio.create_task(ashow(s, surface=screen))
    while len(s.text) < 20:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert s.finish_reason == "cancelled" and 20 <= len(s.text) < len(words(500))
    assert screen.paints[-1][2] and screen.last["text/plain"].startswith(s.text + "\n")


async def test_ashow_refuses_a_sync_stream() -> None:
    with pytest.raises(ConfigError, match=r"show\(s\)"):
        await ashow(stream(ScriptedProvider(), "hi"))  # type: ignore[arg-type]


# -- tables -----------------------------------------------------------------------


def finished(provider: ScriptedProvider, n: int, clock: FakeClock) -> list[Any]:
    return [stream(provider, f"q{i}", clock=clock).until_done() for i in range(n)]


def test_timings_table_one_row_per_request_with_every_metric(fake_clock: FakeClock) -> None:
    runs = finished(ScriptedProvider("a b c d e", ttft=0.25, tokens_per_s=10.0), 3, fake_clock)
    table = timings_table(runs)
    assert list(table["request"]) == [0, 1, 2] and "label" not in table
    row = table.iloc[0]
    assert row["finish_reason"] == "stop" and row["provider"] == "scripted"
    assert row["ttft_s"] == pytest.approx(0.25) and row["e2e_s"] == pytest.approx(0.65)
    assert row["output_tokens"] == 5 and row["token_source"] == "server"
    assert row["tpot_s"] == pytest.approx(0.1) and row["itl_p50_s"] == pytest.approx(0.1)
    assert row["tokens_per_s"] == pytest.approx(5 / 0.65)


def test_tables_compare_labelled_groups(fake_clock: FakeClock) -> None:
    fast = finished(ScriptedProvider("a b c d e", ttft=0.1, tokens_per_s=100.0), 4, fake_clock)
    slow = finished(ScriptedProvider("a b c d e", ttft=0.5, tokens_per_s=10.0), 2, fake_clock)
    runs = {"fast": fast, "slow": slow}
    assert list(timings_table(runs)["label"]) == ["fast"] * 4 + ["slow"] * 2
    summary = summary_table(runs)
    assert summary.loc[("fast", "ttft_s"), "p50"] == pytest.approx(0.1)
    assert summary.loc[("slow", "ttft_s"), "p90"] == pytest.approx(0.5)
    assert summary.loc[("slow", "itl_s"), "n"] == 2 * 4  # pooled gaps: 4 per request
    assert summary.loc[("fast", "tpot_s"), "mean"] == pytest.approx(0.01)
    arrivals = arrivals_table(runs)
    assert len(arrivals) == 6 * 5
    first = arrivals[(arrivals["label"] == "slow") & (arrivals["chunk"] == 0)]
    assert list(first["gap_s"]) == pytest.approx([0.5, 0.5])


def test_tables_reject_bad_input_with_one_clear_message(fake_clock: FakeClock) -> None:
    with pytest.raises(ConfigError, match="has not finished"):
        timings_table([stream(ScriptedProvider(), "hi")])
    with pytest.raises(ConfigError, match="expected a Stream, AsyncStream or Timings, not int"):
        timings_table([1, 2])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="unknown metric 'ttfb'"):
        summary_table(finished(ScriptedProvider("a b"), 1, fake_clock), metrics=["ttfb"])
    with pytest.raises(ConfigError, match="fractions"):
        summary_table(finished(ScriptedProvider("a b"), 1, fake_clock), percentiles=[50])


# -- plots ------------------------------------------------------------------------


def test_plots_draw_every_request_and_render_to_png(fake_clock: FakeClock) -> None:
    runs = {
        "local": finished(ScriptedProvider(words(20), ttft=0.05, tokens_per_s=120.0, jitter=0.3), 5, fake_clock),
        "hosted": finished(ScriptedProvider(words(20), ttft=0.4, tokens_per_s=60.0, jitter=0.3), 3, fake_clock),
    }
    ttft = plot_ttft(runs)
    from matplotlib.collections import PathCollection

    points = [len(c.get_offsets()) for c in ttft.axes[0].collections if isinstance(c, PathCollection)]
    assert points == [5, 3]
    assert [t.get_text() for t in ttft.axes[0].get_xticklabels()] == ["local\n(n=5)", "hosted\n(n=3)"]
    gaps = plot_gaps(runs)
    assert sum(len(c.patches) for c in gaps.axes[0].containers) == 2 * 40
    timeline = plot_timeline(runs)
    assert len(timeline.axes[0].get_yticklabels()) == 8
    speed = plot_tokens_per_s(runs)
    assert len(speed.axes[0].patches) == 2 * 8
    overview = plot_overview(runs)
    assert len(overview.axes) == 4
    import io

    png = io.BytesIO()
    overview.savefig(png, format="png")
    assert png.getvalue().startswith(b"\x89PNG")
    with pytest.raises(ConfigError, match="nothing to plot"):
        plot_ttft([])


async def test_cancelling_ashow_always_cancels_even_when_it_lands_as_a_token_arrives() -> None:
    """On Python 3.11 asyncio.wait_for drops a cancellation that lands as its awaitable completes."""
    for i in range(25):
        s = astream(ScriptedProvider(words(3000), ttft=0.0, tokens_per_s=1000), "hi")
        task = asyncio.create_task(ashow(s, surface=Screen()))
        await asyncio.sleep(0.03 + 0.0037 * i)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert s.finish_reason == "cancelled", f"attempt {i}: the stream went on ({s.finish_reason})"
