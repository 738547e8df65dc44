"""Gradio rendering: streamchat's coalesced adapter vs a naive per-chunk generator, in a real browser.

Goal: "with a scripted provider at 2,000 tokens/s for 4,000 tokens, the final
text is in the browser's DOM within 250 ms of the provider's last token, and the
number of UI updates stays near the configured rate"; and Stop closes the
upstream within 200 ms, seen from the server's side.

    python benchmarks/gradio_render.py              # 5 rounds (about 3 minutes)
    python benchmarks/gradio_render.py --rounds 1   # smoke test

Method
------
* Every variant is a ``gr.ChatInterface`` launched in this process on
  127.0.0.1 and driven by Debian's Chromium through Playwright; only the chat
  function differs. ``ours``: ``streamchat.gradio.chat_fn`` (20 updates/s).
  ``naive``: a generator that yields the whole reply after every chunk, as
  ``gr.load_chat`` does, over the *same* scripted provider (4,000 tokens at
  2,000 tokens/s, TTFT 0). ``load_chat`` / ``ours-http``: the real
  ``gr.load_chat`` and ours against the loopback wire server sending the same
  4,000 tokens at 2,000 tokens/s.
* Lag = the moment the last token's text is in the DOM (a MutationObserver in
  the page, ``performance.timeOrigin + performance.now()``) minus the moment the
  provider handed out its last token (``time.time()`` in the provider's source;
  for the wire server, its last write). Same machine, same clock.
* UI updates: frames the function yielded (server) and DOM mutation batches
  (browser). Browser main-thread busy time: Chrome's ``TaskDuration`` metric
  over the answer. Variants are interleaved within each round; medians over
  rounds, and ratios of medians.
* Markdown: a 600-token answer with lists, bold, inline code and code blocks at
  200 tokens/s; every DOM state of the answer is checked for raw markup showing
  (``**`` or a backtick outside code).
* Stop: the click (just before Playwright's click) to the moment the wire server
  saw the client hang up; for the embedded model, to the moment its generator
  was closed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import _bench

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from apps._shared import start_in_thread  # noqa: E402
from streamchat import ScriptedProvider, stream  # noqa: E402
from streamchat.gradio import chat_fn  # noqa: E402
from streamchat.messages import ChatRequest  # noqa: E402
from streamchat.options import Clock, Timeouts  # noqa: E402
from streamchat.testing.wire_server import WireServer, text_reply  # noqa: E402

N_TOKENS, TPS = 4000, 2000.0
MARKER = "END-OF-ANSWER"
PACKAGES = ("streamchat", "gradio", "playwright", "openai")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--no-first-run"]

OBSERVER = """([marker, checkMarkup]) => {
  const root = document.querySelector('#chat');
  const m = window.__m = {updates: 0, done: null, states: 0, broken: 0};
  const broken = () => {
    for (const el of root.querySelectorAll('[data-testid=bot]')) {
      const c = el.cloneNode(true);
      c.querySelectorAll('pre, code, .thought-group').forEach(n => n.remove());
      const t = c.textContent;
      if (t.includes('**') || t.includes('`')) return true;
    }
    return false;
  };
  new MutationObserver(() => {
    m.updates++;
    if (checkMarkup) { m.states++; if (broken()) m.broken++; }
    if (m.done === null && root.textContent.includes(marker)) m.done = performance.timeOrigin + performance.now();
  }).observe(root, {subtree: true, childList: true, characterData: true});
}"""


def long_text(n: int) -> str:
    words = [f"w{i}" for i in range(n - 3)]
    return " ".join(words) + " " + MARKER


MARKDOWN = (
    "Here is **a list** with `inline code`:\n\n- first **bold item** with `x = 1`\n- second item\n\n"
    "```python\ndef f(x):\n    return x * 2\n```\n\nThen a paragraph with **more bold** and `code` again.\n\n"
)


def markdown_text(tokens: int) -> str:
    from streamchat.providers.scripted import tokenize

    out = ""
    while len(tokenize(out)) < tokens:
        out += MARKDOWN
    return out + MARKER


class Stamped:
    """A provider whose sources note (wall clock) when they hand out the last content chunk."""

    def __init__(self, inner: ScriptedProvider) -> None:
        self.inner, self.name, self.model = inner, inner.name, inner.model
        self.last_token_s: float | None = None

    def redact(self, text: str) -> str:
        return self.inner.redact(text)

    def _seen(self, chunk: Mapping[str, Any]) -> Mapping[str, Any]:
        choices = chunk.get("choices") or []
        if choices and choices[0].get("delta", {}).get("content"):
            self.last_token_s = time.time()
        return chunk

    def open(self, request: ChatRequest, timeouts: Timeouts, clock: Clock) -> Any:
        source, owner = self.inner.open(request, timeouts, clock), self

        class Source:
            headers_ns = source.headers_ns

            def __iter__(self) -> Any:
                return self

            def __next__(self) -> Mapping[str, Any]:
                return owner._seen(next(source))

            def close(self) -> None:
                source.close()

        return Source()

    async def aopen(self, request: ChatRequest, timeouts: Timeouts, clock: Clock) -> Any:
        source, owner = await self.inner.aopen(request, timeouts, clock), self

        class Source:
            headers_ns = source.headers_ns

            def __aiter__(self) -> Any:
                return self

            async def __anext__(self) -> Mapping[str, Any]:
                return owner._seen(await source.__anext__())

            async def aclose(self) -> None:
                await source.aclose()

        return Source()


class Counted:
    """Counts what a chat function yields, and when the first and the last frame went out."""

    def __init__(self) -> None:
        self.frames = 0
        self.first_s = self.last_s = 0.0

    def tick(self) -> None:
        self.last_s = time.perf_counter()
        if not self.frames:
            self.first_s = self.last_s
        self.frames += 1

    def per_s(self) -> float:
        span = self.last_s - self.first_s
        return self.frames / span if span > 0 else float("nan")


def counting(fn: Callable[..., Iterator[Any]], counter: Counted) -> Callable[..., Iterator[Any]]:
    """Wrap a sync generator function so that its yields are counted."""

    def wrapped(*args: Any) -> Iterator[Any]:
        for item in fn(*args):
            counter.tick()
            yield item

    return wrapped


def naive_fn(provider: Any, counter: Counted) -> Callable[..., Iterator[str]]:
    """``gr.load_chat``'s generator: the whole reply so far, after every chunk."""

    def fn(message: str, history: list[Any]) -> Iterator[str]:
        response = ""
        for event in stream(provider, message):
            if event.kind == "text":
                response += event.text
                counter.tick()
                yield response

    return fn


def ours_fn(provider: Any, counter: Counted) -> Callable[..., Any]:
    inner = chat_fn(provider, rate=20.0, timeouts=Timeouts(first_token=120))

    async def fn(message: str, history: list[Any]) -> Any:
        async for messages in inner(message, history):
            counter.tick()
            yield messages

    return fn


def interface(fn: Callable[..., Any]) -> Any:
    import gradio as gr

    return gr.ChatInterface(fn, chatbot=gr.Chatbot(elem_id="chat"), textbox=gr.Textbox(elem_id="box", stop_btn=True),
                            analytics_enabled=False)


def load_chat(url: str, counter: Counted) -> Any:
    import gradio as gr

    demo = gr.load_chat(url, "test-model", token="sk-none", file_types=None, chatbot=gr.Chatbot(elem_id="chat"),
                        textbox=gr.Textbox(elem_id="box", stop_btn=True), analytics_enabled=False)
    demo.fn = counting(demo.fn, counter)  # ChatInterface looks its fn up at every call
    return demo


def one_answer(browser: Any, url: str, prompt: str, *, markup: bool = False, timeout_s: float = 60) -> dict[str, Any]:
    """Open the app, send ``prompt``, wait until the marker is in the DOM; the page's figures."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url)
        page.locator("#box textarea").wait_for()
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        page.evaluate(OBSERVER, [MARKER, markup])
        before = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        page.locator("#box textarea").fill(prompt)
        page.locator("#box textarea").press("Enter")
        page.wait_for_function("() => window.__m.done !== null", timeout=timeout_s * 1000)
        page.wait_for_timeout(300)  # let trailing updates land
        after = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        m = page.evaluate("() => window.__m")
        m["task_s"] = after["TaskDuration"] - before["TaskDuration"]
        m["script_s"] = after["ScriptDuration"] - before["ScriptDuration"]
        return dict(m)
    finally:
        page.close()


def body_sent_ns(server: WireServer, index: int, timeout: float = 10) -> int:
    """When the wire server wrote the end of the answer to request ``index`` (its last token)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = next((c for c in server.connections if index in c.request_indexes), None)
        if rec is not None and rec.request_indexes[-1] == index and rec.finished_body_ns is not None:
            return rec.finished_body_ns
        time.sleep(0.01)
    raise TimeoutError(f"request {index} never finished")


def render_round(browser: Any, apps: dict[str, Any], server: WireServer) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, (url, provider, counter) in apps.items():
        counter.frames = 0
        before = len(server.requests)
        m = one_answer(browser, url, f"go {name}")
        if provider is not None:
            last = provider.last_token_s
        else:
            last = time.time() - (time.perf_counter_ns() - body_sent_ns(server, before)) * 1e-9
        out[name] = {
            "lag_ms": (m["done"] / 1000 - last) * 1000,
            "server_frames": counter.frames,
            "frames_per_s": counter.per_s(),
            "dom_updates": m["updates"],
            "browser_busy_s": m["task_s"],
        }
    return out


class Watched:
    """The real embedded model, noting when each generation was closed."""

    def __init__(self, **kwargs: Any) -> None:
        from llama_cpp import Llama

        self.llm = Llama(**kwargs)
        self.closed_ns: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)

    def create_chat_completion(self, **kwargs: Any) -> Iterator[Any]:
        inner = self.llm.create_chat_completion(**kwargs)
        try:
            yield from inner
        finally:
            self.closed_ns.append(time.perf_counter_ns())
            inner.close()


HTTP_STREAMING = "() => (document.querySelector('#chat')?.innerText || '').includes('w40 ')"
LOCAL_STREAMING = "() => (document.querySelector('#chat')?.innerText || '').length > 300"


def stop_once(browser: Any, url: str, prompt: str, streaming: str, closed: Callable[[], int | None]) -> float | None:
    """Click Stop mid-answer; seconds until the upstream ended (None: not within 5 s)."""
    page = browser.new_page()
    try:
        page.goto(url)
        page.locator("#box textarea").fill(prompt)
        page.locator("#box textarea").press("Enter")
        page.wait_for_function(streaming, timeout=60_000)
        button = page.locator("#box [data-testid=stop-button]")
        button.wait_for()
        clicked = time.perf_counter_ns()
        button.click(timeout=10_000)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            t = closed()
            if t is not None:
                return (t - clicked) * 1e-9
            time.sleep(0.002)
        return None
    finally:
        page.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    facts = _bench.machine(PACKAGES)
    from playwright.sync_api import sync_playwright

    fast_reply = text_reply([f" w{i}" for i in range(N_TOKENS - 1)] + [" " + MARKER], gap=1 / TPS)
    slow_reply = text_reply([f"w{i} " for i in range(2000)], gap=0.02)

    def script(req: Any) -> Any:
        # gr.load_chat sends content as a list of parts: look at its text, whatever the form.
        return slow_reply if "slow" in str(req.json()["messages"][-1]["content"]) else fast_reply

    server = WireServer(script).start()
    from streamchat.providers.openai import OpenAIProvider

    scripted = {name: Stamped(ScriptedProvider(long_text(N_TOKENS), ttft=0.0, tokens_per_s=TPS)) for name in ("ours", "naive")}
    counters = {name: Counted() for name in ("ours", "naive", "ours-http", "load_chat")}
    http = OpenAIProvider("test-model", base_url=server.url, api_key="sk-none")
    built = {
        "ours": start_in_thread(lambda: interface(ours_fn(scripted["ours"], counters["ours"]))),
        "naive": start_in_thread(lambda: interface(naive_fn(scripted["naive"], counters["naive"]))),
        "ours-http": start_in_thread(lambda: interface(ours_fn(http, counters["ours-http"]))),
        "load_chat": start_in_thread(lambda: load_chat(server.url, counters["load_chat"])),
    }
    apps = {
        "ours": (built["ours"][1], scripted["ours"], counters["ours"]),
        "naive": (built["naive"][1], scripted["naive"], counters["naive"]),
        "ours-http": (built["ours-http"][1], None, counters["ours-http"]),
        "load_chat": (built["load_chat"][1], None, counters["load_chat"]),
    }
    md = {name: Stamped(ScriptedProvider(markdown_text(600), ttft=0.0, tokens_per_s=200)) for name in ("ours", "naive")}
    md_counters = {name: Counted() for name in md}
    md_apps = {
        "ours": start_in_thread(lambda: interface(ours_fn(md["ours"], md_counters["ours"])))[1],
        "naive": start_in_thread(lambda: interface(naive_fn(md["naive"], md_counters["naive"])))[1],
    }
    from apps import chat as chat_app
    from apps._shared import Providers, ProviderSettings
    from streamchat.providers.local import LocalProvider

    watched: list[Watched] = []
    local = LocalProvider(model_factory=lambda **kw: watched.append(Watched(**kw)) or watched[0], seed=1)
    chat_http = start_in_thread(lambda: chat_app.build(Providers(ProviderSettings(base_url=server.url, model="test-model")),
                                             chat_app.ChatConfig(provider="openai")))
    chat_local = start_in_thread(lambda: chat_app.build(Providers(ProviderSettings(), local=local),
                                              chat_app.ChatConfig(provider="embedded", max_tokens=1024)))
    rounds: list[dict[str, Any]] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        for r in range(args.rounds):
            order = dict(list(apps.items())[r % 4:] + list(apps.items())[: r % 4])
            result: dict[str, Any] = {"render": render_round(browser, order, server), "markdown": {}, "stop": {}}
            for name, url in md_apps.items():
                m = one_answer(browser, url, "markdown", markup=True)
                result["markdown"][name] = {"states": m["states"], "broken": m["broken"]}
            for name, url in (("ours-http", apps["ours-http"][0]), ("chat-http", chat_http[1]),
                              ("load_chat", apps["load_chat"][0])):
                before = len(server.requests)

                def closed(i: int = before) -> int | None:
                    if len(server.requests) <= i:
                        return None
                    rec = next((c for c in server.connections if i in c.request_indexes), None)
                    return rec.client_closed_ns if rec is not None else None

                result["stop"][name] = stop_once(browser, url, "slow please", HTTP_STREAMING, closed)
            n = len(watched[0].closed_ns) if watched else 0
            result["stop"]["chat-local"] = stop_once(
                browser, chat_local[1], "Write a long story about a dragon who bakes bread, in ten chapters.",
                LOCAL_STREAMING, lambda n=n: watched[0].closed_ns[n] if watched and len(watched[0].closed_ns) > n else None,
            )
            rounds.append(result)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{k} {v['lag_ms']:.0f} ms/{v['dom_updates']} updates" for k, v in result["render"].items()), flush=True)
        browser.close()
    for demo, _ in [*built.values(), chat_http, chat_local]:
        demo.close(verbose=False)
    server.stop()
    report(rounds, facts)


def med(rounds: list[dict[str, Any]], section: str, name: str, key: str | None = None) -> float:
    vals = [r[section][name] if key is None else r[section][name][key] for r in rounds]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else float("nan")


def report(rounds: list[dict[str, Any]], facts: dict[str, Any]) -> None:
    names = ["ours", "naive", "ours-http", "load_chat"]
    labels = {
        "ours": "streamchat `chat_fn` (20/s), scripted provider",
        "naive": "per-chunk generator (gr.load_chat's), scripted provider",
        "ours-http": "streamchat `chat_fn` (20/s), wire server",
        "load_chat": "`gr.load_chat`, wire server",
    }
    rows = []
    for n in names:
        lag = [r["render"][n]["lag_ms"] for r in rounds]
        rows.append([
            labels[n], f"{statistics.median(lag):,.0f} ms ({min(lag):,.0f}–{max(lag):,.0f})",
            f"{med(rounds, 'render', n, 'server_frames'):,.0f} ({med(rounds, 'render', n, 'frames_per_s'):,.0f}/s)",
            f"{med(rounds, 'render', n, 'dom_updates'):,.0f}", f"{med(rounds, 'render', n, 'browser_busy_s'):.2f} s",
        ])
    print(f"\n{facts['nproc']} CPUs; {len(rounds)} rounds; 4,000 tokens at 2,000 tokens/s\n")
    print(_bench.table(["variant", "final text in DOM after last token (median, range)", "frames yielded (per s)",
                        "DOM updates", "browser main thread busy"], rows))
    r = med(rounds, "render", "naive", "lag_ms") / med(rounds, "render", "ours", "lag_ms")
    print(f"\nlag ratio naive/ours: {r:.1f}×")
    md_rows = []
    for n in ("ours", "naive"):
        states = med(rounds, "markdown", n, "states")
        broken = med(rounds, "markdown", n, "broken")
        md_rows.append([labels[n], f"{states:,.0f}", f"{broken:,.0f}"])
    print("\n" + _bench.table(["variant (600-token Markdown answer, 200 tokens/s)", "DOM states", "states showing raw markup"], md_rows))
    labels["chat-http"] = "streamchat chat app (session Stop), wire server"
    labels["chat-local"] = "streamchat chat app (session Stop), embedded model"
    stop_rows = []
    for n in ("ours-http", "chat-http", "chat-local", "load_chat"):
        vals = [r["stop"][n] for r in rounds]
        got = [v for v in vals if v is not None]
        shown = f"{statistics.median(got) * 1000:,.0f} ms ({min(got) * 1000:,.0f}–{max(got) * 1000:,.0f})" if got else "—"
        stop_rows.append([labels[n], shown, f"{len(vals) - len(got)} of {len(vals)}"])
    print("\n" + _bench.table(["variant", "Stop click → upstream closed (median, range)", "not closed within 5 s"], stop_rows))
    print("\n" + _bench.machine_line(facts))
    path = _bench.write_json("gradio_render", {"machine": facts, "rounds": rounds})
    print(f"data: {path.relative_to(_bench.REPO)}")


if __name__ == "__main__":
    main()
