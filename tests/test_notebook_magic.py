"""``%load_ext streamchat`` and ``%%chat``: in a real Jupyter kernel, then the parsing rules alone.

The kernel is this environment's (``python -m ipykernel_launcher``), driven over
its real ZeroMQ channels the way a notebook front end drives it; upstream
servers are real loopback HTTP servers.
"""

from __future__ import annotations

import os
import queue
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from streamchat import ScriptedProvider
from streamchat.notebook.magic import ChatMagic, load_ipython_extension
from streamchat.providers.scripted import DEFAULT_TEXT, tokenize
from streamchat.testing.wire_server import Reply, WireServer, chunk, data, done, error_reply, sleep

KEY = "sk-test-" + "MagicK3yMustNeverApp3ar"


@dataclass
class Ran:
    """What one cell sent back: its IOPub messages (with receipt times) and its reply."""

    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    reply: dict[str, Any] = field(default_factory=dict)

    def of(self, *types: str) -> list[dict[str, Any]]:
        return [m for _, m in self.messages if m["msg_type"] in types]

    @property
    def displays(self) -> list[dict[str, Any]]:
        """Every display and update, in order."""
        return self.of("display_data", "update_display_data")

    @property
    def final(self) -> dict[str, str]:
        return dict(self.displays[-1]["content"]["data"])

    @property
    def stderr(self) -> str:
        return "".join(m["content"]["text"] for m in self.of("stream") if m["content"]["name"] == "stderr")

    @property
    def everything(self) -> str:
        """All the cell's output (not the echo of its own source)."""
        return repr([m["content"] for _, m in self.messages if m["msg_type"] != "execute_input"])


def start_kernel(env: dict[str, str]) -> tuple[Any, Any]:
    """An ipykernel running this very Python (whatever kernelspecs the machine has), and its client."""
    import ipykernel.kernelspec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> Any:
            return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES, **ipykernel.kernelspec.get_kernel_dict())

    km = KernelManager(kernel_name="this-python", kernel_spec_manager=ThisPython())
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
    except RuntimeError:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    return km, kc


class Kernel:
    """A real ipykernel in a subprocess, and a client on its channels."""

    def __init__(self, env: dict[str, str]) -> None:
        self.km, self.kc = start_kernel(env)

    def run(self, code: str, *, timeout: float = 60.0, on_message: Any = None) -> Ran:
        ran = Ran()
        msg_id = self.kc.execute(code)
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no idle status within {timeout} s for: {code[:60]!r}") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
            ran.messages.append((time.perf_counter(), msg))
            if on_message is not None:
                on_message(msg)
        ran.reply = self.kc.get_shell_msg(timeout=timeout)["content"]
        return ran

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    k = Kernel({**os.environ, "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    try:
        loaded = k.run("%load_ext streamchat")
        assert loaded.reply["status"] == "ok", loaded.everything
        yield k
    finally:
        k.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- in a real kernel ---------------------------------------------------------------


def test_the_answer_grows_in_place_then_ends_exact_with_its_latency_line(kernel: Kernel) -> None:
    ran = kernel.run("%%chat --scripted --save answer\nWhat does streaming change?")
    assert ran.reply["status"] == "ok" and not ran.of("error")
    first, *updates = ran.displays
    assert first["msg_type"] == "display_data" and updates, "the answer was not updated in place"
    display_id = first["content"]["transient"]["display_id"]
    assert all(u["msg_type"] == "update_display_data" and u["content"]["transient"]["display_id"] == display_id for u in updates)
    assert "waiting for the first token" in first["content"]["data"]["text/markdown"]
    # The scripted answer: 49 tokens at 50/s, so about a second of streaming.
    received = [t for t, m in ran.messages if m["msg_type"] == "update_display_data"]
    spread = received[-1] - received[0]
    assert len(updates) <= (spread + 0.1) * 20 + 3
    check = kernel.run(
        "from streamchat.providers.scripted import DEFAULT_TEXT\n"
        "print(answer.finish_reason, answer.text == DEFAULT_TEXT)\nprint(answer.timings.summary('stop'))")
    out = "".join(m["content"]["text"] for m in check.of("stream"))
    status, summary = out.strip().split("\n")
    assert status == "stop True"
    assert ran.final["text/plain"] == f"{DEFAULT_TEXT}\n{summary}"
    assert ran.final["text/markdown"].startswith(DEFAULT_TEXT + "\n\n*TTFT ")
    assert len(tokenize(DEFAULT_TEXT)) == 49


def test_continue_sends_the_conversation(kernel: Kernel) -> None:
    with WireServer(lambda req: _echo_count(req)) as srv:
        kernel.run(f"%%chat --base-url {srv.url} --model test-model\nfirst")
        ran = kernel.run(f"%%chat -c --base-url {srv.url} --model test-model\nsecond")
        fresh = kernel.run(f"%%chat --base-url {srv.url} --model test-model\nthird")
        sent = [[m["content"] for m in r.json()["messages"]] for r in srv.requests]
    assert sent == [["first"], ["first", "1 messages", "second"], ["third"]]
    assert ran.final["text/plain"].startswith("3 messages") and fresh.final["text/plain"].startswith("1 messages")


def _echo_count(req: Any) -> Reply:
    n = len(req.json()["messages"])
    return Reply(steps=(data(chunk(f"{n} messages", role="assistant")), data(chunk(finish_reason="stop")), done()))


STALLED = Reply(steps=(data(chunk("", role="assistant")), data(chunk("Hel")), data(chunk("lo")), sleep(30),
                       data(chunk(" never")), data(chunk(finish_reason="stop")), done()))


def test_interrupting_the_kernel_stops_the_answer_and_closes_the_connection(kernel: Kernel) -> None:
    with WireServer(STALLED) as srv:
        interrupted: list[float] = []

        def watch(msg: dict[str, Any]) -> None:
            shown = msg["msg_type"] in ("display_data", "update_display_data")
            if shown and not interrupted and msg["content"]["data"]["text/plain"].startswith("Hello"):
                interrupted.append(time.perf_counter())
                kernel.km.interrupt_kernel()

        ran = kernel.run(f"%%chat --base-url {srv.url} --model test-model\nSay hello", on_message=watch)
        record = srv.wait_closed(0, timeout=5.0)
    assert interrupted, "the partial answer never reached the screen"
    assert record.client_closed_ns is not None, "the server never saw the client hang up"
    assert ran.reply["status"] == "ok" and not ran.of("error"), "the stop should not be a traceback"
    assert ran.final["text/plain"].startswith("Hello\nTTFT ") and ran.final["text/plain"].endswith("cancelled")
    assert KEY not in ran.everything


def test_bad_input_gives_one_line_not_a_traceback(kernel: Kernel) -> None:
    cases = {
        "%%chat --bogus\nhi": "UsageError: %%chat: unrecognized arguments: --bogus (see %%chat --help)",
        "%%chat\n   \n": "UsageError: %%chat: the cell is empty: write the prompt on the lines below %%chat",
        f"%%chat --api-key {KEY}\nhi": "UsageError: %%chat: keys are not taken in a cell",
        "%%chat --base-url http://127.0.0.1:1/v1\nhi": "UsageError: %%chat: --base-url needs --model",
        "%%chat --provider nothing_here\nhi": "UsageError: %%chat: no variable named 'nothing_here' in this notebook",
        "%%chat --temperature 7\nhi": "UsageError: %%chat: temperature must be between 0 and 2, not 7.0",
    }
    for cell, message in cases.items():
        ran = kernel.run(cell)
        assert ran.stderr.startswith(message), (cell, ran.stderr)
        assert ran.stderr.count("\n") == 1 and "Traceback" not in ran.everything
        assert not ran.of("error") and not ran.displays
        assert KEY not in ran.everything


def test_unreachable_url_is_one_clear_message_in_the_output(kernel: Kernel) -> None:
    port = closed_port()
    ran = kernel.run(f"%%chat --base-url http://127.0.0.1:{port}/v1 --model m\nhello?")
    assert ran.reply["status"] == "ok" and not ran.of("error") and not ran.stderr
    md = ran.final["text/markdown"]
    assert md.startswith(f"**Error:** could not connect to 127.0.0.1:{port}")
    assert md.count("Error") == 1 and md.endswith("error*")


def test_wrong_key_is_one_clear_message_and_the_key_never_shows(kernel: Kernel) -> None:
    refusal = error_reply(401, f"Incorrect API key provided: {KEY}", code="invalid_api_key")
    with WireServer(refusal) as srv:
        ran = kernel.run(f"%%chat --base-url {srv.url} --model test-model\nhi")
        assert srv.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert ran.reply["status"] == "ok" and not ran.of("error")
    assert "refused the API key (HTTP 401)" in ran.final["text/plain"]
    assert KEY not in ran.everything


# -- the rules alone (no kernel) ---------------------------------------------------------


class Screen:
    def __init__(self) -> None:
        self.bundles: list[dict[str, str]] = []

    def update(self, bundle: Any, *, final: bool) -> None:
        self.bundles.append(dict(bundle))


def magic(**user_ns: Any) -> ChatMagic:
    return ChatMagic(SimpleNamespace(user_ns=dict(user_ns)), surface=Screen)


def test_provider_choice_and_save() -> None:
    scripted = ScriptedProvider("from the notebook", ttft=0.0, tokens_per_s=0)
    m = magic(mine=scripted, text="not a provider")
    m("--provider mine --save out", "hi")
    assert m.shell.user_ns["out"].text == "from the notebook" and m.shell.user_ns["out"].provider is scripted
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="'text' is a str, not a provider"):
        m("--provider text", "hi")
    with pytest.raises(UsageError, match="choose one of --provider and --scripted"):
        m("--provider mine --scripted", "hi")
    with pytest.raises(UsageError, match="No closing quotation"):
        m("--system 'unbalanced", "hi")


def test_the_same_provider_is_reused_between_cells() -> None:
    m = magic()
    first = m._provider(m_args("--model gpt-x --base-url http://127.0.0.1:9/v1"))
    assert m._provider(m_args("--model gpt-x --base-url http://127.0.0.1:9/v1")) is first
    assert m._provider(m_args("--model gpt-y --base-url http://127.0.0.1:9/v1")) is not first
    assert m._provider(m_args("--scripted")) is m._provider(m_args("--scripted"))


def m_args(line: str) -> Any:
    from streamchat.notebook.magic import _parser

    return _parser().parse_args(line.split())


def test_help_is_printed_not_raised(capsys: pytest.CaptureFixture[str]) -> None:
    magic()("--help", "")
    out = capsys.readouterr().out
    assert out.startswith("usage: %%chat") and "$OPENAI_API_KEY" in out and "--api-key" not in out


def test_load_ipython_extension_registers_the_cell_magic() -> None:
    registered: dict[str, Any] = {}

    class Shell:
        def register_magic_function(self, func: Any, magic_kind: str, magic_name: str) -> None:
            registered[magic_kind, magic_name] = func

    load_ipython_extension(Shell())
    assert isinstance(registered["cell", "chat"], ChatMagic)


def test_settings_cell_choices_and_the_key_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamchat.errors import ConfigError
    from streamchat.notebook import choose_provider
    from streamchat.providers.local import LocalProvider
    from streamchat.providers.openai import OpenAIProvider

    assert isinstance(choose_provider("", ""), LocalProvider)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    asked: list[str] = []

    def ask(question: str) -> str:
        asked.append(question)
        return KEY

    hosted = choose_provider("http://127.0.0.1:9/v1", "gpt-x", ask=ask)
    assert isinstance(hosted, OpenAIProvider) and hosted.model == "gpt-x"
    assert asked == ["API key for 127.0.0.1:9 (input hidden; leave empty if the server needs none): "]
    assert KEY not in repr(hosted) and hosted.redact(f"echo {KEY}") == "echo ***"
    hosted.close()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    from_env = choose_provider("http://127.0.0.1:9/v1", "gpt-x", ask=lambda q: pytest.fail("asked although the key is set"))
    from_env.close()
    with pytest.raises(ConfigError, match="MODEL is empty"):
        choose_provider("http://127.0.0.1:9/v1", "")
    with pytest.raises(ConfigError, match="BASE_URL must start with http"):
        choose_provider("127.0.0.1:9/v1", "m")
