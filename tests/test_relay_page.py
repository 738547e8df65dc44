"""The page at ``/`` in Debian's Chromium: EventSource streaming, TTFT and tokens/s, and a Stop that stops upstream."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from streamchat import ScriptedProvider
from streamchat.providers.openai import OpenAIProvider
from streamchat.providers.scripted import DEFAULT_TEXT
from streamchat.relay import ClientKey, RelayConfig, UsageLog, create_app
from streamchat.relay.testing import ServedRelay
from streamchat.testing.wire_server import Reply, WireServer, chunk, data, done, sleep

KEY = "page-test-key-0123456789"
SLOW = Reply(steps=(data(chunk("", role="assistant")), data(chunk("Hel")), data(chunk("lo")), sleep(15.0),
                    data(chunk(" never")), data(chunk(finish_reason="stop")), done()))


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.problems = []  # console errors, failed or foreign requests
    page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    yield page
    context.close()


def watch_requests(page: Any, origin: str) -> list[str]:
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    return urls


def test_the_page_streams_an_answer_and_shows_its_numbers(page: Any) -> None:
    usage = io.StringIO()
    provider = ScriptedProvider(ttft=0.3, tokens_per_s=60.0)
    config = RelayConfig(allow_anonymous=True)
    with ServedRelay(create_app(provider, config, usage_log=UsageLog(usage))) as relay:
        urls = watch_requests(page, relay.url)
        page.goto(relay.url + "/")
        assert page.locator("#key-row").is_hidden(), "no key is asked for when the relay needs none"
        page.fill("#prompt", "Why stream?")
        page.click("#send")
        expect(page.locator("#status")).to_have_text("streaming", timeout=10_000)
        assert page.locator("#stop").is_enabled() and page.locator("#send").is_disabled()
        expect(page.locator("#status")).to_have_text(re.compile("^done"), timeout=20_000)
        assert page.text_content("#status") == "done: stop"
        assert page.text_content("#answer") == DEFAULT_TEXT
        ttft = page.text_content("#ttft") or ""
        assert re.fullmatch(r"\d+\.\d\d s", ttft) and 0.3 <= float(ttft[:-2]) < 5, ttft
        tps = float(page.text_content("#tps") or "nan")
        assert 10 < tps < 200, tps  # the provider sends 60 tokens/s
        assert int(page.text_content("#tokens") or 0) == 49
        assert "at the relay: 49 tokens" in (page.text_content("#relay-metrics") or "")
        assert page.locator("#send").is_enabled() and page.locator("#stop").is_disabled()
    assert all(u.startswith(relay.url) for u in urls), f"the page reached outside the relay: {urls}"
    assert not page.problems, page.problems
    line = json.loads(usage.getvalue().splitlines()[-1])
    assert (line["endpoint"], line["finish_reason"], line["key_id"]) == ("events", "stop", "anonymous")


def test_stop_in_the_browser_closes_the_upstream(page: Any) -> None:
    usage = io.StringIO()
    with WireServer(SLOW) as wire:
        provider = OpenAIProvider("test-model", base_url=wire.url, api_key="sk-upstream-page-0123456789")
        config = RelayConfig(keys=(ClientKey("alice", KEY),))
        with ServedRelay(create_app(provider, config, usage_log=UsageLog(usage))) as relay:
            page.goto(relay.url + "/")
            page.fill("#key", KEY)
            page.fill("#prompt", "hi")
            page.click("#send")
            expect(page.locator("#answer")).to_have_text("Hello", timeout=10_000)
            clicked_ns = time.perf_counter_ns()
            page.click("#stop")
            record = wire.wait_closed(0, timeout=3.0)
            assert record.client_closed_ns is not None and record.finished_body_ns is None
            assert (record.client_closed_ns - clicked_ns) / 1e6 < 1000, "the upstream was not closed promptly"
            assert page.text_content("#status") == "stopped" and page.text_content("#answer") == "Hello"
            assert page.text_content("#ttft") != "\u2014"
            deadline = time.monotonic() + 5
            while not usage.getvalue() and time.monotonic() < deadline:
                time.sleep(0.01)
        provider.close()
    line = json.loads(usage.getvalue().splitlines()[-1])
    assert (line["key_id"], line["finish_reason"], line["completion_tokens"]) == ("alice", "client_disconnected", 2)
    assert KEY not in usage.getvalue()
    assert not page.problems, page.problems


def test_a_wrong_key_is_explained_on_the_page(page: Any) -> None:
    config = RelayConfig(keys=(ClientKey("alice", KEY),), usage_log=None)
    with ServedRelay(create_app(ScriptedProvider(), config)) as relay:
        page.goto(relay.url + "/")
        page.fill("#key", "not-the-right-key-000")
        page.click("#send")
        expect(page.locator("#error")).to_be_visible(timeout=10_000)
        assert page.text_content("#error") == "the API key is not valid for this relay"
        assert page.locator("#send").is_enabled()
        problems = [p for p in page.problems if "401" not in p]  # the browser logs the refused fetch
        assert not problems, problems
