"""The chat app in a real browser: Debian's Chromium driven by Playwright.

The app runs in this process on 127.0.0.1; the OpenAI-compatible answers come
from the loopback wire server, which records on its side when a client hung
up, and the embedded model is the real one, watched as it generates. Stop is
checked where it matters: on the server's side.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from apps import chat  # noqa: E402
from apps._shared import Providers, ProviderSettings, start_in_thread  # noqa: E402
from streamchat import stream  # noqa: E402
from streamchat.gradio import ChatSession, stream_answer, to_prompt  # noqa: E402
from streamchat.providers.local import LocalProvider  # noqa: E402
from streamchat.providers.openai import OpenAIProvider  # noqa: E402
from streamchat.testing.wire_server import Reply, Request, WireServer, chunk, data, drop, text_reply  # noqa: E402

# Gradio's queue statistics use pandas options that pandas 3 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning:gradio.queueing")
SECRET = "sk-test-" + "Br0wser5ecretKey77Tq"
HANGUP_S = 1.0  # generous: other test suites share the two cores (the benchmark measures the real figure)


def script(req: Request) -> Reply:
    prompt = str(req.json()["messages"][-1]["content"])
    if "slow" in prompt:
        return text_reply([f"w{i} " for i in range(600)], gap=0.02)
    if "pair" in prompt:
        return text_reply([f"p{i} " for i in range(40)], gap=0.025)
    if "grow" in prompt:
        return text_reply([f"g{i} " for i in range(80)], gap=0.025)
    if "drop" in prompt:
        return Reply(steps=(data(chunk("", role="assistant")), data(chunk("partial ")), data(chunk("text")), drop()))
    return text_reply(["Hello", ",", " world", "!"])


@pytest.fixture(scope="module")
def server() -> Iterator[WireServer]:
    with WireServer(script) as srv:
        yield srv


@pytest.fixture(scope="module")
def app_url(server: WireServer) -> Iterator[str]:
    providers = Providers(ProviderSettings(base_url=server.url, model="test-model", api_key=SECRET))
    demo, url = start_in_thread(lambda: chat.build(providers, chat.ChatConfig(provider="openai")))
    yield url
    demo.close(verbose=False)


class Page:
    """One browser session on an app, with every URL it requested."""

    def __init__(self, browser: Any, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.requested: list[str] = []
        self.page.on("request", lambda r: self.requested.append(r.url))
        self.page.goto(url)
        self.page.locator("#box textarea").wait_for()

    def send(self, text: str) -> None:
        box = self.page.locator("#box textarea")
        box.fill(text)
        box.press("Enter")

    def chat_text(self) -> str:
        return str(self.page.locator("#chat").inner_text())

    def wait_text(self, text: str, timeout: float = 15) -> None:
        self.page.wait_for_function(
            "t => (document.querySelector('#chat')?.innerText || '').includes(t)", arg=text, timeout=timeout * 1000
        )

    def stop(self) -> int:
        """Press Stop; return the time just before the click."""
        button = self.page.locator("#box [data-testid=stop-button]")
        button.wait_for()
        t = time.perf_counter_ns()
        button.click()
        return t

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_page(browser: Any) -> Generator[Callable[[str], Page], None, None]:
    pages: list[Page] = []

    def make(url: str) -> Page:
        pages.append(Page(browser, url))
        return pages[-1]

    yield make
    for p in pages:
        p.close()


def test_the_answer_grows_while_it_streams_then_shows_its_latency_line(app_url: str, open_page: Any) -> None:
    page = open_page(app_url)
    page.send("grow please")
    page.wait_text("g5 ")
    seen = [len(page.chat_text())]
    page.wait_text("g40 ")
    seen.append(len(page.chat_text()))
    page.wait_text("· stop")
    text = page.chat_text()
    assert seen[0] < seen[1] < len(text)
    assert "g79" in text and "TTFT " in text and "80 tokens" in text
    hosts = {u.split("/")[2] for u in page.requested}
    assert hosts == {app_url.split("/")[2]}  # the page loads nothing from anywhere else


def test_stop_keeps_the_text_and_the_server_sees_the_connection_close(
    app_url: str, server: WireServer, open_page: Any
) -> None:
    page = open_page(app_url)
    before = len(server.requests)
    page.send("slow please")
    page.wait_text("w10 ")
    clicked = page.stop()
    record = server.wait_closed(before, timeout=5)
    assert record.client_closed_ns is not None
    assert (record.client_closed_ns - clicked) * 1e-9 < HANGUP_S
    page.wait_text("· stopped")
    text = page.chat_text()
    assert "w10 " in text and "w599" not in text
    time.sleep(0.3)
    assert page.chat_text() == text  # nothing more arrives, nothing is lost
    page.page.locator("#box [data-testid=stop-button]").wait_for(state="hidden")


def test_an_error_mid_answer_shows_its_message_and_keeps_the_text(app_url: str, open_page: Any) -> None:
    page = open_page(app_url)
    page.send("drop please")
    page.wait_text("Error: the answer above is cut short")
    text = page.chat_text()
    assert "partial text" in text and "the connection broke mid-answer" in text and "· error" in text


def test_two_sessions_stream_at_the_same_time(app_url: str, server: WireServer, open_page: Any) -> None:
    one, two = open_page(app_url), open_page(app_url)
    before = len(server.requests)
    one.send("pair one")
    one.wait_text("p2 ")
    two.send("pair two")
    server.wait_for_requests(before + 2, timeout=5)
    second_arrived = time.perf_counter_ns()
    one.wait_text("· stop")
    two.wait_text("· stop")
    first = next(c for c in server.connections if before in c.request_indexes)
    assert first.finished_body_ns is not None and second_arrived < first.finished_body_ns


def test_the_sync_twin_stops_at_once_too(server: WireServer, open_page: Any) -> None:
    """A sync generator: Gradio could close it only after its current read; the session closes the stream."""
    import gradio as gr

    provider = OpenAIProvider("test-model", base_url=server.url, api_key=SECRET)

    def respond(history: list[Any], session: ChatSession) -> Iterator[list[Any]]:
        for messages in stream_answer(stream(provider, to_prompt(history)), session=session):
            yield [*history, *messages]

    async def stop(session: ChatSession) -> None:
        await session.stop()

    def build() -> Any:
        with gr.Blocks(analytics_enabled=False) as demo:
            session = gr.State(ChatSession)
            chatbot = gr.Chatbot(elem_id="chat")
            box = gr.Textbox(elem_id="box", submit_btn=True, stop_btn=True)
            box.submit(lambda m, h: ("", [*h, {"role": "user", "content": m}]), [box, chatbot], [box, chatbot],
                       queue=False).then(respond, [chatbot, session], [chatbot])
            box.stop(stop, [session], None, queue=False)
        return demo

    demo, url = start_in_thread(build)
    try:
        page = open_page(url)
        before = len(server.requests)
        page.send("slow sync")
        page.wait_text("w10 ")
        clicked = page.stop()
        record = server.wait_closed(before, timeout=5)
        assert (record.client_closed_ns - clicked) * 1e-9 < HANGUP_S
        page.wait_text("· stopped")
    finally:
        demo.close(verbose=False)
        provider.close()


class Watched:
    """The real embedded model, with a record of when it produced each chunk and when it was closed."""

    def __init__(self, **kwargs: Any) -> None:
        from llama_cpp import Llama

        self.llm = Llama(**kwargs)
        self.chunk_ns: list[int] = []  # the first generation's chunks only
        self.closed_ns: list[int] = []
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)

    def create_chat_completion(self, **kwargs: Any) -> Iterator[Any]:
        inner = self.llm.create_chat_completion(**kwargs)
        self.calls += 1
        first = self.calls == 1  # a queued request may start right after the stop
        try:
            for item in inner:
                if first:
                    self.chunk_ns.append(time.perf_counter_ns())
                yield item
        finally:
            self.closed_ns.append(time.perf_counter_ns())
            inner.close()


def test_embedded_model_queues_visibly_and_stop_halts_generation(open_page: Any) -> None:
    model: list[Watched] = []
    local = LocalProvider(model_factory=lambda **kw: model.append(Watched(**kw)) or model[0], seed=1)
    providers = Providers(ProviderSettings(), local=local)
    demo, url = start_in_thread(lambda: chat.build(providers, chat.ChatConfig(provider="embedded", max_tokens=1024)))
    try:
        first, second = open_page(url), open_page(url)
        prompt = "Write a long story about a dragon who learns to bake bread, in ten chapters."
        first.send(prompt)
        first.page.wait_for_function("() => (document.querySelector('#chat')?.innerText || '').length > 200",
                                     timeout=30_000)
        second.send(prompt)
        second.wait_text("Queued: 1 answer ahead")
        watched = model[0]
        clicked = first.stop()
        first.wait_text("· stopped")
        deadline = time.monotonic() + 5
        while not watched.closed_ns and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watched.closed_ns, "generation did not stop"
        assert (watched.closed_ns[0] - clicked) * 1e-9 < HANGUP_S
        assert not [t for t in watched.chunk_ns if t > watched.closed_ns[0]]  # nothing generated after
        # The queue moves on: the second answer starts, and stops as well.
        second.wait_text("TTFT", timeout=30)
        second.stop()
        second.wait_text("· stopped")
    finally:
        demo.close(verbose=False)
