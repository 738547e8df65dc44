"""ChatWidget driven through its own buttons on a real event loop, without a browser.

Upstream is real: a loopback HTTP server that records when the client hung up,
or the embedded model.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from conftest import FakeClock

from streamchat import Fault, RetryPolicy, ScriptedProvider
from streamchat.errors import StreamchatError
from streamchat.notebook import ChatWidget, Snapshot
from streamchat.notebook.render import HTMLRenderer
from streamchat.providers.openai import OpenAIProvider
from streamchat.testing.wire_server import Reply, WireServer, chunk, data, done, error_reply, sleep, text_reply

API_KEY = "sk-test-" + "W1dgetK3yNeverSh0wn42"


def slow_reply(tokens: int = 400, gap: float = 0.02) -> Reply:
    steps = [data(chunk("", role="assistant"))]
    for i in range(tokens):
        steps += [data(chunk(f"t{i} ")), sleep(gap)]
    return Reply(steps=(*steps, data(chunk(finish_reason="stop")), done()))


@pytest.fixture
def server() -> Iterator[WireServer]:
    with WireServer(slow_reply()) as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[Callable[..., OpenAIProvider]]:
    made: list[OpenAIProvider] = []

    def make(url: str, key: str = API_KEY) -> OpenAIProvider:
        made.append(OpenAIProvider("test-model", base_url=url, api_key=key))
        return made[-1]

    yield make
    for provider in made:
        provider.close()
        await provider.aclose()


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Let the loop run until ``check()`` holds (generous: other suites share the CPU)."""
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def widget_text(chat: ChatWidget) -> str:
    """Everything the widget shows, as one string."""
    parts = [chat.status.value, chat.input.value, chat.header.value]
    for turn in chat.turns:
        parts += [w.value for w in turn.box.children if hasattr(w, "value")] + [turn.reasoning.children[0].value]
    return "\n".join(parts)


def ask(chat: ChatWidget, prompt: str) -> None:
    """What a person does: type, then click Send."""
    chat.input.value = prompt
    chat.send_button.click()


async def test_answer_streams_then_shows_the_exact_text_and_latency_line() -> None:
    text = "Streaming *shows* words as they come.\n\n- one\n- two"
    chat = ChatWidget(ScriptedProvider(text, ttft=0.05, tokens_per_s=400, reasoning="Think first."))
    ask(chat, "What is streaming?")
    assert chat.busy and chat.send_button.disabled and not chat.stop_button.disabled
    assert chat.input.value == ""  # the prompt moved into the history
    turn = await chat.wait()
    assert turn is chat.turns[0] and turn.finish_reason == "stop" and turn.text == text
    assert not chat.busy and not chat.send_button.disabled and chat.stop_button.disabled
    assert turn.answer.value == HTMLRenderer().markdown(text)
    assert "<em>shows</em>" in turn.answer.value and "<li>two</li>" in turn.answer.value
    assert turn.timings.summary("stop") in turn.metrics.value
    assert "Think first." in turn.reasoning.children[0].value
    assert turn.reasoning.layout.display is None and turn.reasoning.selected_index is None  # shown, folded
    assert "What is streaming?" in turn.box.children[0].value
    assert chat.transcript().startswith("**You:** What is streaming?\n\n> *Reasoning*")


async def test_repaints_at_most_rate_and_the_final_state_is_exact(fake_clock: FakeClock) -> None:
    text = " ".join(f"w{i}" for i in range(3000))
    chat = ChatWidget(ScriptedProvider(text, ttft=0.0, tokens_per_s=1000.0), clock=fake_clock)
    values: list[str] = []
    turn = chat.send("go")
    assert turn is not None
    turn.answer.observe(lambda change: values.append(change["new"]), "value")
    await chat.wait()
    seconds = turn.timings.duration_s
    assert seconds is not None and seconds == pytest.approx(3.0, rel=0.01)
    assert 5 <= turn.painted <= seconds * 20 + 3
    assert len(values) <= turn.painted
    assert values[-1] == HTMLRenderer().markdown(text) and turn.text == text


async def test_stop_cancels_the_task_closes_the_connection_and_keeps_the_text(
    server: WireServer, http: Callable[..., OpenAIProvider]
) -> None:
    chat = ChatWidget(http(server.url))
    ask(chat, "Count slowly")
    turn = chat.turns[0]
    task = chat._task
    await until(lambda: "t5 " in turn.text)
    chat.stop_button.click()
    stopped = await chat.wait()
    assert stopped is turn and task is not None and task.done() and not task.cancelled()
    record = await asyncio.to_thread(server.wait_closed, 0, 5.0)
    assert record.client_closed_ns is not None, "the server never saw the client hang up"
    assert turn.finish_reason == "cancelled" and turn.error is None
    assert turn.text.startswith("t0 t1 t2 t3 t4 t5 ") and "t399" not in turn.text
    assert turn.answer.value == HTMLRenderer().markdown(turn.text)  # what is shown is what was received
    assert "cancelled" in turn.metrics.value
    assert not chat.busy and chat.stop_button.disabled and not chat.send_button.disabled
    # The stopped answer stays in the conversation with the text it had.
    assert [m.content for m in chat.messages] == ["Count slowly", turn.text]
    server.set_replies(text_reply(["Next", " answer"]))
    ask(chat, "And now?")
    await chat.wait()
    assert chat.turns[1].text == "Next answer"
    sent = server.requests[-1].json()["messages"]
    assert [m["content"] for m in sent] == ["Count slowly", turn.text, "And now?"]
    assert API_KEY not in widget_text(chat)


async def test_stop_before_the_task_ran_sends_nothing(server: WireServer, http: Callable[..., OpenAIProvider]) -> None:
    chat = ChatWidget(http(server.url))
    turn = chat.send("hi")
    chat.stop()
    await chat.wait()
    await asyncio.sleep(0)
    assert turn is not None and turn.finish_reason in (None, "cancelled")
    assert not chat.busy and chat.stop_button.disabled and not chat.send_button.disabled
    assert "stopped before the request was sent" in turn.metrics.value or "cancelled" in turn.metrics.value
    assert chat.messages == ()


class CountingModel:
    """The real embedded model, counting the chunks each generation yields."""

    def __init__(self, **kwargs: Any) -> None:
        from llama_cpp import Llama

        self.llm = Llama(**kwargs)
        self.generated: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)

    def create_chat_completion(self, **kwargs: Any) -> Iterator[Any]:
        self.generated.append(0)
        for piece in self.llm.create_chat_completion(**kwargs):
            self.generated[-1] += 1
            yield piece


async def test_stop_halts_the_embedded_model_within_a_token() -> None:
    from streamchat.providers.local import LocalProvider

    models: list[CountingModel] = []
    local = LocalProvider(model_factory=lambda **kw: models.append(CountingModel(**kw)) or models[-1])
    chat = ChatWidget(local, max_tokens=400, seed=1, temperature=0.0)
    turn = chat.send("Write a long story about a lighthouse keeper.")
    assert turn is not None
    await until(lambda: len(turn.text) > 10, timeout=60)
    chat.stop()
    await chat.wait()
    assert turn.finish_reason == "cancelled" and len(turn.text) > 10
    received = turn.timings.output_chunks
    # The next answer runs on the same model thread, so once it is done the stopped one has ended.
    chat.params["max_tokens"] = 8
    again = chat.send("Say yes.")
    assert again is not None
    await asyncio.wait_for(chat.wait(), 60)
    assert again.finish_reason in ("stop", "length") and again.text
    stopped_generation = models[0].generated[0]
    assert stopped_generation <= received + 3, f"{stopped_generation} chunks generated, {received} received before Stop"
    assert stopped_generation < 400


async def test_error_keeps_partial_text_and_shows_one_message() -> None:
    words = " ".join(f"w{i}" for i in range(40))
    chat = ChatWidget(ScriptedProvider(words, ttft=0.0, tokens_per_s=500, faults=[Fault("drop", after_tokens=12)]))
    turn = chat.send("hi")
    await chat.wait()
    assert turn is not None and turn.finish_reason == "error"
    assert turn.text == " ".join(f"w{i}" for i in range(12))
    assert turn.answer.value == HTMLRenderer().markdown(turn.text)
    assert turn.metrics.value.count("Error:") == 1 and "dropped mid-answer" in turn.metrics.value
    assert turn.timings.summary("error") in turn.metrics.value
    assert not chat.busy and chat.status.value == ""


async def test_empty_prompt_gives_one_message_and_sends_nothing(server: WireServer, http: Callable[..., OpenAIProvider]) -> None:
    chat = ChatWidget(http(server.url))
    ask(chat, "   \n ")
    assert chat.turns == [] and not chat.busy
    assert "Type a message first." in chat.status.value
    await asyncio.sleep(0.05)
    assert server.requests == []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_url_gives_one_clear_message(http: Callable[..., OpenAIProvider]) -> None:
    port = closed_port()
    chat = ChatWidget(http(f"http://127.0.0.1:{port}/v1"), retry=RetryPolicy(max_retries=0))
    ask(chat, "hello?")
    turn = await chat.wait()
    assert turn is not None and turn.finish_reason == "error" and turn.text == ""
    assert turn.metrics.value.count("Error:") == 1
    assert f"could not connect to 127.0.0.1:{port}" in turn.metrics.value
    assert "Traceback" not in widget_text(chat)
    assert chat.messages == ()  # a failed question is not sent again as context


async def test_wrong_key_gives_one_clear_message_and_never_shows_the_key(http: Callable[..., OpenAIProvider]) -> None:
    bad_key = "sk-proj-" + "Wr0ngK3yWr0ngK3yWr0ngK3y"
    refusal = error_reply(401, f"Incorrect API key provided: {bad_key}", type_="invalid_request_error", code="invalid_api_key")
    with WireServer(refusal) as srv:
        chat = ChatWidget(http(srv.url, bad_key))
        ask(chat, "hi")
        turn = await chat.wait()
    assert turn is not None and turn.finish_reason == "error"
    assert "refused the API key (HTTP 401)" in turn.metrics.value and turn.metrics.value.count("Error:") == 1
    assert bad_key not in widget_text(chat) and bad_key not in chat.transcript()


async def test_send_while_streaming_and_bad_input_are_refused_plainly() -> None:
    chat = ChatWidget(ScriptedProvider(ttft=0.0, tokens_per_s=100))
    assert chat.send("first") is not None
    assert chat.send("second") is None and len(chat.turns) == 1
    assert "still streaming" in chat.status.value
    chat.stop()
    await chat.wait()
    with pytest.raises(StreamchatError, match="needs a provider"):
        ChatWidget("gpt-4o")  # type: ignore[arg-type]


async def test_bad_request_parameters_give_a_message_not_a_traceback() -> None:
    chat = ChatWidget(ScriptedProvider(), temperature=9.0)
    assert chat.send("hi") is None and chat.turns == []
    assert "temperature must be between 0 and 2" in chat.status.value


async def test_a_click_from_another_thread_runs_on_the_kernel_loop() -> None:
    chat = ChatWidget(ScriptedProvider("ok", ttft=0.0))
    chat.input.value = "hi"
    await asyncio.to_thread(chat.send_button.click)
    await until(lambda: bool(chat.turns))
    turn = await chat.wait()
    assert turn is not None and turn.text == "ok"


async def test_repr_and_close() -> None:
    chat = ChatWidget(ScriptedProvider(), title="Workshop")
    bundle: dict[str, Any] = chat._repr_mimebundle_()
    assert bundle["text/plain"] == "<ChatWidget scripted:scripted, 0 answers, idle>"
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "Workshop" in chat.header.value
    chat.send("hi")
    chat.close()
    await chat.wait()
    assert chat.turns[0].finish_reason in (None, "cancelled") and chat.view.comm is None
    assert Snapshot.of(chat.turns[0].stream).text == chat.turns[0].text


async def test_reasoning_is_open_while_thinking_folded_at_the_answer_then_left_to_the_reader() -> None:
    thinking = " ".join(f"r{i}" for i in range(30))
    chat = ChatWidget(ScriptedProvider("The answer.", ttft=0.0, tokens_per_s=60, reasoning=thinking))
    turn = chat.send("hi")
    assert turn is not None
    await until(lambda: "r3" in turn.reasoning.children[0].value)
    assert turn.reasoning.layout.display is None and turn.reasoning.selected_index == 0 and turn.text == ""
    await chat.wait()
    assert turn.reasoning.selected_index is None and turn.folded
    turn.reasoning.selected_index = 0  # the reader opens it again
    chat._paint(turn, final=True)
    assert turn.reasoning.selected_index == 0
    assert thinking in turn.reasoning.children[0].value and turn.text == "The answer."


async def test_stop_always_stops_even_when_it_lands_as_a_token_arrives() -> None:
    """On Python 3.11 asyncio.wait_for drops a cancellation that lands as its awaitable completes."""
    provider = ScriptedProvider(" ".join(["tok"] * 3000), ttft=0.0, tokens_per_s=1000)
    chat = ChatWidget(provider)
    for i in range(25):
        turn = chat.send(f"try {i}")
        assert turn is not None
        await asyncio.sleep(0.03 + 0.0037 * i)  # land at many points between tokens and frames
        chat.stop()
        await asyncio.wait_for(chat.wait(), 10)
        assert turn.finish_reason == "cancelled", f"attempt {i}: Stop did not stop ({turn.finish_reason})"
        assert turn.answer.value == HTMLRenderer().markdown(turn.text) and not chat.busy
