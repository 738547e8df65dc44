"""The apps' API endpoints through gradio_client, against real servers on 127.0.0.1.

Each app is launched in this process on an ephemeral port; OpenAI-compatible
answers come from the loopback wire server, which records on its side when a
client hung up. Also: the API key never reaches a browser or a client, the
input and rate limits, login, and the apps as real processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from apps import arena, chat, latency_lab  # noqa: E402
from apps._shared import (  # noqa: E402
    Providers,
    ProviderSettings,
    auth_from_env,
    free_port,
    launch,
    parser,
    share_problem,
    start,
)
from streamchat import stream  # noqa: E402
from streamchat.errors import ConfigError  # noqa: E402
from streamchat.gradio import Limits  # noqa: E402
from streamchat.testing.wire_server import (  # noqa: E402
    Reply,
    Request,
    WireServer,
    chunk,
    data,
    drop,
    error_reply,
    text_reply,
)

gradio_client = pytest.importorskip("gradio_client")
# Gradio's queue statistics use pandas options that pandas 3 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning:gradio.queueing")
SECRET = "sk-test-" + "Zq8Vw3Lm5Np2Rt7Yb4Kc9Hd6"
SLOW_TOKENS = [f"w{i} " for i in range(600)]


def prompt_of(req: Request) -> str:
    return str(req.json()["messages"][-1]["content"])


def script(req: Request) -> Reply:
    """Replies chosen by the prompt's words, so one server serves every test."""
    prompt = prompt_of(req)
    if "slow" in prompt:
        return text_reply(SLOW_TOKENS, gap=0.02)
    if "leak" in prompt:
        return error_reply(401, f"Incorrect API key provided: {SECRET}", type_="invalid_request_error")
    if "busy" in prompt:
        # Retried (before the first token) after the 10 ms the server asks for, then reported.
        return error_reply(429, "Rate limit reached for requests", type_="requests", headers=(("retry-after-ms", "10"),))
    if "drop" in prompt:
        return Reply(steps=(data(chunk("", role="assistant")), data(chunk("partial ")), data(chunk("text")), drop()))
    return text_reply(["Hello", ",", " world", "!"])


@pytest.fixture(scope="module")
def server() -> Iterator[WireServer]:
    with WireServer(script) as srv:
        yield srv


@pytest.fixture(scope="module")
def providers(server: WireServer) -> Providers:
    return Providers(ProviderSettings(base_url=server.url, model="test-model", api_key=SECRET))


@pytest.fixture(scope="module")
def chat_url(providers: Providers) -> Iterator[str]:
    demo, url = serve(lambda: chat.build(providers, chat.ChatConfig(provider="openai", limits=Limits(max_input_chars=200))))
    yield url
    demo.close(verbose=False)


def serve(build: Callable[[], Any], **kw: Any) -> tuple[Any, str]:
    """Build and launch on a free port inside a running event loop (outside one, Gradio makes a
    new loop for every app object and leaks the one before), in a thread of its own (a
    Playwright session may keep a loop running in this one)."""
    done: list[tuple[Any, str]] = []

    async def go() -> None:
        demo = build()
        done.append((demo, demo.local_url if demo.is_running else start(demo, port=free_port(), **kw)[0]))

    worker = threading.Thread(target=asyncio.run, args=(go(),))
    worker.start()
    worker.join()
    return done[0]


def client(url: str, **kw: Any) -> Any:
    return gradio_client.Client(url, verbose=False, analytics_enabled=False, download_files=False, **kw)


def settings(kind: str = "openai", url: str = "", model: str = "test-model") -> dict[str, Any]:
    return {"kind": kind, "url": url, "model": model, "system": "", "temperature": 0.5, "max_tokens": 64}


def titles(messages: list[dict[str, Any]]) -> list[str]:
    return [(m.get("metadata") or {}).get("title") or "" for m in messages]


def text_of(messages: list[dict[str, Any]]) -> str:
    parts = []
    for m in messages:
        if (m.get("metadata") or {}).get("title"):
            continue
        c = m["content"]
        parts.append(c if isinstance(c, str) else "".join(p.get("text", "") for p in c))
    return "".join(parts)


def wait_until(check: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- /chat -----------------------------------------------------------------------


def test_chat_endpoint_streams_the_answer_with_its_latency_line(chat_url: str) -> None:
    job = client(chat_url).submit("hello", **settings(), api_name="/chat")
    final = job.result(timeout=30)
    assert text_of(final) == "Hello, world!"
    line = titles(final)[-1]
    assert line.startswith("TTFT ") and line.endswith("· stop") and "4 tokens" in line
    assert len(job.outputs()) >= 2  # a waiting frame, then the answer


def test_cancelled_job_closes_the_upstream_connection(chat_url: str, server: WireServer) -> None:
    before = len(server.requests)
    job = client(chat_url).submit("slow please", **settings(), api_name="/chat")
    wait_until(lambda: len(server.requests) > before and any("w5" in text_of(o) for o in job.outputs()),
               what="the answer to start streaming")
    cancelled_ns = time.perf_counter_ns()
    job.cancel()
    record = server.wait_closed(before, timeout=5)
    assert record.client_closed_ns is not None
    closed_after_s = (record.client_closed_ns - cancelled_ns) * 1e-9
    assert closed_after_s < 1.0, f"the server saw the hang-up {closed_after_s:.3f} s after the cancel"
    final = job.outputs()[-1]
    assert "w5" in text_of(final) and "w599" not in text_of(final)


def test_error_mid_stream_keeps_partial_text_and_says_why(chat_url: str) -> None:
    final = client(chat_url).submit("drop it", **settings(), api_name="/chat").result(timeout=30)
    assert text_of(final) == "partial text"
    assert any("Error: the answer above is cut short" in t for t in titles(final))
    assert titles(final)[-1].endswith("· error")


def test_rate_limited_upstream_is_reported_in_the_chat(chat_url: str) -> None:
    final = client(chat_url).submit("busy", **settings(), api_name="/chat").result(timeout=60)
    errors = [m for m in final if "Error: no answer" in (m.get("metadata") or {}).get("title", "")]
    assert errors and "429" in errors[0]["content"]


def test_too_long_input_is_refused_with_a_clear_message(chat_url: str, server: WireServer) -> None:
    before = len(server.requests)
    with pytest.raises(Exception, match=r"201 characters; this app takes at most 200"):
        client(chat_url).predict("x" * 201, **settings(), api_name="/chat")
    assert len(server.requests) == before  # nothing was sent


def test_bad_settings_are_answered_in_the_chat_not_sent(chat_url: str, server: WireServer) -> None:
    before = len(server.requests)
    final = client(chat_url).predict("hello", **settings(url="ftp://127.0.0.1/v1"), api_name="/chat")
    assert "base_url must start with http:// or https://" in final[0]["content"]
    assert titles(final) == ["⚠️ Not sent"]
    assert len(server.requests) == before


def test_rate_limit_per_session() -> None:
    fast = Providers(ProviderSettings(scripted_ttft=0.0, scripted_tokens_per_s=2000))
    demo, url = serve(lambda: chat.build(fast, chat.ChatConfig(provider="scripted", limits=Limits(max_requests=1))))
    try:
        c = client(url)
        assert text_of(c.predict("one", **settings("scripted"), api_name="/chat"))
        with pytest.raises(Exception, match=r"Too many requests: this app takes 1 per 60 s"):
            c.predict("two", **settings("scripted"), api_name="/chat")
        # Another session has its own allowance.
        assert text_of(client(url).predict("three", **settings("scripted"), api_name="/chat"))
    finally:
        demo.close(verbose=False)


# -- the key never leaves the server ---------------------------------------------


def test_api_key_is_in_no_page_config_api_info_or_error(chat_url: str, server: WireServer) -> None:
    pages = [httpx.get(chat_url + path, timeout=10).text for path in ("", "config", "gradio_api/info")]
    c = client(chat_url)
    pages.append(json.dumps(c.view_api(print_info=False, return_format="dict")))
    final = c.predict("leak", **settings(), api_name="/chat")
    pages.append(json.dumps(final))
    assert "Incorrect API key provided" in pages[-1]  # the error is shown...
    for page in pages:
        assert SECRET not in page  # ...and the key in it is not
        assert SECRET[8:20] not in page
    # The key did go to the server it is for.
    assert server.requests[-1].headers["authorization"] == f"Bearer {SECRET}"


def test_api_key_is_not_sent_to_a_url_typed_in_the_ui(chat_url: str) -> None:
    with WireServer(text_reply(["other"])) as other:
        final = client(chat_url).predict("hello", **settings(url=other.url), api_name="/chat")
        assert text_of(final) == "other"
        assert SECRET not in other.requests[0].headers.get("authorization", "")


def test_locked_url_ignores_the_url_sent(server: WireServer) -> None:
    locked = Providers(ProviderSettings(base_url=server.url, model="test-model", api_key=SECRET, allow_custom_url=False))
    before = len(server.requests)
    with stream(locked.server("http://127.0.0.1:9/v1", "test-model"), "hello") as s:
        assert s.until_done().text == "Hello, world!"
    assert len(server.requests) == before + 1


# -- arena and latency lab ---------------------------------------------------------


def test_arena_race_streams_both_sides(providers: Providers, server: WireServer) -> None:
    scripted = Providers(ProviderSettings(scripted_ttft=0.3, scripted_tokens_per_s=200))
    demo, url = serve(lambda: arena.build([providers, scripted], arena.ArenaConfig(left="openai", right="scripted")))
    try:
        job = client(url).submit(
            "hello", kind_a="openai", url_a="", model_a="test-model", kind_b="scripted", url_b="", model_b="",
            system="", temperature=0.5, max_tokens=256, api_name="/race",
        )
        a, b, stats = job.result(timeout=30)
        assert text_of(a) == "Hello, world!" and "scripted provider" in text_of(b)
        assert [s["side"] for s in stats] == ["A", "B"]
        assert all(s["status"] == "stop" and s["ttft_s"] > 0 for s in stats)
        assert stats[0]["ttft_s"] < stats[1]["ttft_s"]  # the wire server answers at once, the script after 0.3 s
    finally:
        demo.close(verbose=False)


def test_latency_lab_run_shows_streaming_is_sooner_and_faults(providers: Providers) -> None:
    demo, url = serve(latency_lab.build)
    try:
        c = client(url)
        knobs = {"ttft": 0.1, "tokens_per_s": 200, "chunk_tokens": 2, "words": 40, "fault_after": 10}
        blocking, streamed, facts = c.predict(**knobs, fault="none", api_name="/run")
        assert text_of(blocking) == text_of(streamed) == latency_lab.answer_text(40)
        assert facts["first_words_streamed_s"] < facts["first_words_blocking_s"]
        _, streamed, facts = c.predict(**knobs, fault="drop", api_name="/run")
        assert facts["finish_reason"] == "error" and "dropped" in facts["error"]
        assert 0 < len(text_of(streamed)) < len(latency_lab.answer_text(40))
        _, _, facts = c.predict(**knobs, fault="rate_limit", api_name="/run")
        assert facts["attempts"] == 2 and facts["finish_reason"] == "stop"
    finally:
        demo.close(verbose=False)


# -- launching ---------------------------------------------------------------------


def test_login_from_the_environment() -> None:
    auth = auth_from_env({"STREAMCHAT_AUTH": "alice:s3cret1, bob:s3cret2"})
    assert auth == [("alice", "s3cret1"), ("bob", "s3cret2")]
    assert auth_from_env({}) is None
    with pytest.raises(ConfigError, match="entry 2 is not user:password") as info:
        auth_from_env({"STREAMCHAT_AUTH": "alice:s3cret1,bobs3cret2"})
    assert "s3cret" not in str(info.value)
    demo, url = serve(latency_lab.build, auth=auth)
    try:
        assert httpx.get(url + "config", timeout=10).status_code == 401
        assert client(url, auth=("alice", "s3cret1")).view_api(print_info=False, return_format="dict")
    finally:
        demo.close(verbose=False)


def test_share_problem_names_the_unreachable_service() -> None:
    port = free_port()
    problem = share_problem(f"127.0.0.1:{port}", timeout=1)
    assert problem is not None and f"cannot reach 127.0.0.1:{port}" in problem


class App:
    """An app as its own process, as a user starts it; reads its output until a line appears."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args], cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )

    def wait_for(self, text: str, timeout: float = 60) -> tuple[str, str]:
        """Stdout up to the line holding ``text`` (or the end), and all of stderr once stopped."""
        out: list[str] = []
        try:
            deadline = time.monotonic() + timeout
            assert self.proc.stdout is not None
            while time.monotonic() < deadline:
                line = self.proc.stdout.readline()
                out.append(line)
                if not line or text in line:
                    break
        finally:
            self.proc.terminate()
            _, err = self.proc.communicate(timeout=20)
        return "".join(out), err


def space_layout(where: Path) -> Path:
    """The files apps/space/README.md lists, copied as a Space repository holds them."""
    for name in ("README.md", "app.py", "requirements.txt"):
        shutil.copy(ROOT / "apps" / "space" / name, where / name)
    (where / "apps").mkdir()
    for name in ("_shared.py", "chat.py"):
        shutil.copy(ROOT / "apps" / name, where / "apps" / name)
    shutil.copytree(ROOT / "streamchat", where / "streamchat", ignore=shutil.ignore_patterns("__pycache__"))
    return where / "app.py"


def test_the_chat_app_and_the_space_run_on_their_own_on_the_embedded_model(tmp_path: Path) -> None:
    chat_port, space_port = free_port(), free_port()
    # Both start at once: each spends most of its start-up importing Gradio.
    chat_app = App(["apps/chat.py", "--port", str(chat_port)], {})
    space = App([str(space_layout(tmp_path))], {"GRADIO_SERVER_PORT": str(space_port), "PYTHONPATH": ""},
                cwd=tmp_path)
    out, err = chat_app.wait_for("http://127.0.0.1")
    assert f"streamchat chat app, provider embedded: http://127.0.0.1:{chat_port}/" in out, err
    out, err = space.wait_for("Running on local URL")
    assert f"http://127.0.0.1:{space_port}" in out, err


def test_share_without_network_says_why_and_serves_locally(capsys: pytest.CaptureFixture[str]) -> None:
    port, dead = free_port(), free_port()
    args = parser("lab", providers=False).parse_args(["--port", str(port), "--share"])
    env = {"GRADIO_SHARE_SERVER_ADDRESS": f"127.0.0.1:{dead}"}
    demo, _ = serve(lambda: launch(latency_lab.build(), args, what="latency lab", env=env, block=False))
    try:
        out, err = capsys.readouterr()
        assert f"No share link: this machine cannot reach 127.0.0.1:{dead}" in err
        assert f"streamchat latency lab: http://127.0.0.1:{port}/" in out
        assert httpx.get(f"http://127.0.0.1:{port}/config", timeout=10).status_code == 200
    finally:
        demo.close(verbose=False)
