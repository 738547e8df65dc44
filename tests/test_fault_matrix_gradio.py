"""The failure matrix, Gradio column: every drill through the chat app, driven in a real browser.

One chat app (``apps/chat.py``, provider "openai") talks to the fault rig: a
key- and model-checking OpenAI-style server behind the real fault proxy. One
Chromium page types each prompt and presses Enter (or Stop), and reads the
answer from the DOM: the text from each message's accessible label (the raw
Markdown, so a duplicated chunk cannot hide), the notes (error, latency line)
by their titles, and the attempt count from the latency line's details. The
moments that time a limit are taken in the page, by a MutationObserver, when
the user could first see them.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from apps import chat  # noqa: E402
from apps._shared import Providers, ProviderSettings, start_in_thread  # noqa: E402
from streamchat import RetryPolicy, Timeouts  # noqa: E402
from streamchat.faults.matrix import DRILLS, LIMIT_S, Drill, expect  # noqa: E402
from streamchat.testing.fault_rig import RIG_KEY, RIG_MODEL, FaultRig  # noqa: E402

# Gradio's queue statistics use pandas options that pandas 3 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning:gradio.queueing")
WAIT_MS = 20_000  # generous: other suites share the two cores
STOP_TO_CLOSE_NS = 200e6

# Reads the latest answers from the DOM and stamps, with performance.now(), the
# first moment each awaited sight is in the page.
WATCHER = r"""
() => {
  if (window.__sc) return;
  const rows = () => document.querySelectorAll('#chat .message-row.bot-row');
  const read = (row) => {
    const a = {text: '', shown: '', notes: []};
    if (!row) return a;
    for (const m of row.querySelectorAll('.message.panel-full-width')) {
      const el = m.querySelector('[data-testid=bot]');
      if (!el) continue;
      const raw = (el.getAttribute('aria-label') || '').replace(/^bot's message: /, '');
      const group = el.querySelector('.thought-group');  // an annotation: it has a title
      if (group) {
        a.notes.push({title: (group.querySelector('.title')?.innerText || '').trim(), body: raw});
      } else {
        a.text += raw;
        a.shown += el.querySelector('.message-content')?.innerText || '';
      }
    }
    return a;
  };
  const matches = (a, w) => {
    if (w.field === 'text') return a.text === w.value;
    return a.notes.some(n => (w.field === 'title' ? n.title : n.body).includes(w.value));
  };
  const sc = window.__sc = {marks: {}, wanted: [], rows: () => rows().length};
  sc.answer = (after) => { const r = rows(); return r.length > after ? read(r[r.length - 1]) : null; };
  sc.want = (name, field, value) => {
    delete sc.marks[name];
    sc.wanted.push({name, field, value, after: rows().length});
  };
  const check = () => {
    const now = performance.now();
    sc.wanted = sc.wanted.filter(w => {
      const a = sc.answer(w.after);
      if (a && matches(a, w)) { sc.marks[w.name] = now; return false; }
      return true;
    });
  };
  new MutationObserver(check).observe(document.querySelector('#chat'),
    {subtree: true, childList: true, characterData: true, attributes: true});
}
"""
FINISHED = r"""
after => {
  const a = window.__sc.answer(after);
  const line = a && a.notes.length ? a.notes[a.notes.length - 1].title : '';
  const idle = document.querySelector('#box [data-testid=submit-button]') !== null
    && document.querySelector('#box [data-testid=stop-button]') === null;
  return /· (stop|error|stopped|length)$/.test(line) && idle;
}
"""


@dataclass(frozen=True)
class Note:
    title: str
    body: str


@dataclass(frozen=True)
class Shown:
    """One answer as the page shows it."""

    text: str
    """The answer's raw Markdown (the message's accessible label)."""
    rendered: str
    notes: tuple[Note, ...]

    @property
    def line(self) -> str:
        """The latency line: the last note's title (``… · stop``)."""
        return self.notes[-1].title if self.notes else ""

    @property
    def attempts(self) -> int:
        """The attempt count from the latency line's details."""
        for row in self.notes[-1].body.splitlines():
            if row.startswith("| attempts |"):
                return int(row.split("|")[2])
        raise AssertionError(f"no attempts row in the latency details: {self.notes[-1].body!r}")

    def errors(self) -> list[Note]:
        return [n for n in self.notes if n.title.startswith("⚠️ Error")]


class ChatPage:
    """The chat app in one browser tab, used as a person uses it."""

    def __init__(self, browser: Any, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.pressed_ms = 0.0
        """Page-clock time just before the last Enter."""
        self.page.on("console", lambda m: self.console.append(m.text))
        self.page.goto(url)
        self.box = self.page.locator("#box textarea")
        self.box.wait_for()
        self.page.evaluate(WATCHER)

    def rows(self) -> int:
        return int(self.page.evaluate("() => window.__sc.rows()"))

    def want(self, name: str, field: str, value: str) -> None:
        """Stamp the first moment the next answer's text equals / a note's title or body holds ``value``."""
        self.page.evaluate("([n, f, v]) => window.__sc.want(n, f, v)", [name, field, value])

    def marks(self) -> dict[str, float]:
        """Page-clock milliseconds of each awaited sight."""
        return dict(self.page.evaluate("() => window.__sc.marks"))

    def send(self, prompt: str) -> int:
        """Type ``prompt`` and press Enter; return the number of answers before it."""
        self.page.locator("#box [data-testid=submit-button]").wait_for()
        before = self.rows()
        self.box.fill(prompt)
        self.pressed_ms = float(self.page.evaluate("() => performance.now()"))
        self.box.press("Enter")
        return before

    def wait_text(self, after: int, text: str) -> None:
        """Until the answer after ``after`` shows exactly ``text``."""
        self.page.wait_for_function(
            "([after, text]) => window.__sc.answer(after)?.text === text", arg=[after, text], timeout=WAIT_MS
        )

    def finished(self, after: int) -> Shown:
        """The answer after ``after`` once it has ended and the box takes a message again."""
        self.page.wait_for_function(FINISHED, arg=after, timeout=WAIT_MS)
        raw = self.page.evaluate("after => window.__sc.answer(after)", after)
        notes = tuple(Note(n["title"], n["body"]) for n in raw["notes"])
        return Shown(raw["text"], raw["shown"], notes)

    def ask(self, prompt: str) -> Shown:
        return self.finished(self.send(prompt))

    def press_stop(self) -> int:
        """Click Stop with the mouse; return ``perf_counter_ns()`` just before the click."""
        button = self.page.locator("#box [data-testid=stop-button]")
        button.wait_for()
        box = button.bounding_box()
        assert box is not None
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        t = time.perf_counter_ns()
        self.page.mouse.click(x, y)
        return t


@pytest.fixture(scope="module")
def rig() -> Iterator[FaultRig]:
    with FaultRig() as r:
        yield r


@pytest.fixture(scope="module")
def app_url(rig: FaultRig) -> Iterator[str]:
    providers = Providers(ProviderSettings(base_url=rig.url, model=RIG_MODEL, api_key=RIG_KEY))
    config = chat.ChatConfig(
        provider="openai",
        timeouts=Timeouts(first_token=LIMIT_S, idle=LIMIT_S),
        retry=RetryPolicy(backoff_s=0.02, jitter=0.0),
    )
    demo, url = start_in_thread(lambda: chat.build(providers, config))
    yield url
    demo.close(verbose=False)


@pytest.fixture(scope="module")
def page(browser: Any, app_url: str) -> Iterator[ChatPage]:
    p = ChatPage(browser, app_url)
    yield p
    p.context.close()


def expected_text(rig: FaultRig, partial: str) -> str:
    return {"complete": rig.full_text, "kept": rig.text_after(4), "none": ""}[partial]


@pytest.mark.parametrize("drill", DRILLS, ids=lambda d: d.name)
def test_drill(
    drill: Drill, rig: FaultRig, page: ChatPage, app_url: str,
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    want = expect(drill, "gradio")
    text = expected_text(rig, want.partial)
    partial = rig.text_after(4)

    with rig.drill(drill):
        if drill.name == "stall":
            page.want("partial", "text", partial)
            page.want("told", "body", want.told)
        if drill.name == "slow_first_token":
            page.want("asked", "title", "Waiting for the first token")
            page.want("told", "body", want.told)
        if drill.name == "stop_in_stall":
            after = page.send(f"drill {drill.name}")
            page.wait_text(after, partial)
            stop_ns = page.press_stop()
            closed = rig.wait_upstream_closed(timeout=5)
            shown = page.finished(after)
        else:
            shown = page.ask(f"drill {drill.name}")

    # the text: exactly the expected part of the answer, once
    assert shown.text == text, f"{drill.name}: shown {shown.text!r}, expected {text!r}"
    assert shown.rendered.split() == text.split()
    # retried or not: counted by the server and by the app, which alone sees refused connections
    attempts = shown.attempts
    assert rig.attempts == (0 if drill.name == "unreachable" else attempts)
    if not want.retried:
        assert attempts == 1
    elif drill.name in ("rate_limit", "server_error"):
        assert attempts == 2
    else:
        assert attempts >= 2
    # what the user is told
    errors = shown.errors()
    if drill.name == "stop_in_stall":
        assert shown.line.endswith(f"· {want.told}") and not errors
        assert closed.client_closed_ns is not None
        took_ms = (closed.client_closed_ns - stop_ns) / 1e6
        assert 0 <= took_ms < STOP_TO_CLOSE_NS / 1e6, f"upstream closed {took_ms:.0f} ms after Stop"
    elif want.told:
        assert shown.line.endswith("· error")
        assert len(errors) == 1 and want.told in errors[0].body, f"told: {[e.body for e in errors]}"
        cut = "the answer above is cut short" if text else "no answer"
        assert errors[0].title.endswith(cut)
    else:
        assert shown.line.endswith("· stop") and not errors
    # every timeout within its limit plus 0.5 s of when it started, as the user sees both moments
    if drill.name in ("stall", "slow_first_token"):
        assert f"timed out after {LIMIT_S:g} s" in errors[0].body
        marks = page.marks()
        started = marks["partial" if drill.name == "stall" else "asked"]  # the last chunk / the request's first frame
        waited = (marks["told"] - started) / 1e3
        assert waited < LIMIT_S + 0.5, f"{drill.name}: told {waited:.3f} s after the limit started"
        if drill.name == "slow_first_token":  # and not before the limit: the request started after Enter
            assert (marks["told"] - page.pressed_ms) / 1e3 >= LIMIT_S

    # after any fault, the next request through the same app works
    rig.arm("")
    again = page.ask(f"after {drill.name}")
    assert again.text == rig.full_text and again.line.endswith("· stop") and not again.errors()
    assert rig.attempts == 1

    # the key: nowhere the app showed, logged or served
    config = httpx.get(f"{app_url.rstrip('/')}/config")
    assert config.status_code == 200 and RIG_MODEL in config.text  # what every visitor's browser loads
    out, err = capfd.readouterr()
    seen = {"page": page.page.content(), "console": "\n".join(page.console), "config": config.text,
            "stdout": out, "stderr": err, "log": caplog.text}
    assert [where for where, s in seen.items() if RIG_KEY in s] == []
