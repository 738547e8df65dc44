from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest

from streamchat import AsyncStream, Stream, astream, stream
from streamchat.providers.base import Provider


def pytest_configure(config: pytest.Config) -> None:
    # A shell's background job (`pytest ... &`) ignores SIGINT and its children inherit that, so a
    # Ctrl-C sent to them would do nothing; give them what a terminal gives (exec resets a handler
    # to the default, but keeps "ignored").
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


Run = Callable[..., Any]


class FakeClock:
    """A clock that only moves when something sleeps: timing maths becomes exact."""

    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def now_ns(self) -> int:
        return self.ns

    def sleep(self, seconds: float, wake: threading.Event | None = None) -> bool:
        self.ns += int(seconds * 1e9)
        return False

    async def asleep(self, seconds: float) -> None:
        self.ns += int(seconds * 1e9)
        await asyncio.sleep(0)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sync", "async"])
def run(request: pytest.FixtureRequest) -> Run:
    """Stream to the end, sync or async; returns (finished stream, events)."""

    def run_sync(provider: Provider, prompt: Any = "hi", **kw: Any) -> tuple[Stream, list[Any]]:
        with stream(provider, prompt, **kw) as s:
            return s, list(s)

    def run_async(provider: Provider, prompt: Any = "hi", **kw: Any) -> tuple[AsyncStream, list[Any]]:
        async def go() -> tuple[AsyncStream, list[Any]]:
            async with astream(provider, prompt, **kw) as s:
                return s, [e async for e in s]

        return asyncio.run(go())

    return run_sync if request.param == "sync" else run_async


class CountingLlama:
    """The real embedded model, counting the tokens it samples (to check that a stop stops)."""

    def __init__(self, **kwargs: Any) -> None:
        from llama_cpp import Llama

        self.llm = Llama(**kwargs)
        self.sampled = 0

    def create_chat_completion(self, **kwargs: Any) -> Any:
        processors = list(kwargs.pop("logits_processor", []))

        def count(ids: Any, logits: Any) -> Any:
            self.sampled += 1
            return logits

        return self.llm.create_chat_completion(logits_processor=[*processors, count], **kwargs)

    def tokenize(self, *args: Any, **kwargs: Any) -> Any:
        return self.llm.tokenize(*args, **kwargs)


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Any:
    """Debian's Chromium driven by Playwright (never a downloaded browser).

    Module-scoped: Playwright's sync API marks its loop as running in the main
    thread while it lives, which would break every later asyncio test.

    Skips with the reason when Chromium is missing, except where
    STREAMCHAT_REQUIRE_BROWSER=1 (CI), where a missing browser fails.
    """
    import os
    import shutil

    path = shutil.which("chromium")
    if path is None:
        message = "Debian's chromium is not installed (apt-get install chromium); browser tests need it"
        if os.environ.get("STREAMCHAT_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()
