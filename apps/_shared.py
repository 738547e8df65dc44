"""What the apps share: the command line, the provider choice, and launching.

Launching is where the security options live: a login from the environment
(``STREAMCHAT_AUTH="alice:pw1,bob:pw2"``), no analytics, no share tunnel unless
``--share``, and a plain explanation when a share link cannot be made. API
keys stay in :class:`Providers`, on the server: no component holds one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from streamchat import ScriptedProvider
from streamchat.errors import ConfigError
from streamchat.gradio import Limits, Turns
from streamchat.options import Timeouts
from streamchat.providers.base import Provider

if TYPE_CHECKING:
    import gradio as gr

Kind = Literal["embedded", "openai", "scripted"]
KINDS: list[tuple[str, Kind]] = [
    ("Embedded model (SmolLM2-135M, offline)", "embedded"),
    ("OpenAI-compatible server", "openai"),
    ("Scripted (known text and timing)", "scripted"),
]
DEFAULT_URL = "http://127.0.0.1:8000/v1"
LOCAL_TIMEOUTS = Timeouts(first_token=600.0)
"""The embedded model queues requests: waiting for a turn is not a failure."""
SHARE_SERVER = "api.gradio.app:443"


def scripted_reply(prompt: str) -> str:
    """The scripted provider's answer: Markdown with a list and a code block, to see them stream."""
    asked = prompt.strip().splitlines()[0][:80] if prompt.strip() else "your question"
    return (
        f"You asked: *{asked}*. This is the **scripted provider**: known text, known timing.\n\n"
        "Streaming shows each token as soon as it exists:\n\n"
        "1. the first words arrive after the *time to first token* (TTFT);\n"
        "2. the rest follows at the model's decode speed;\n"
        "3. the total time barely changes, but you read while it writes.\n\n"
        "```python\nfrom streamchat import stream, ScriptedProvider\n\n"
        "with stream(ScriptedProvider(), \"hi\") as s:\n"
        "    for event in s:\n"
        "        print(event)\n```\n\n"
        "The line below the answer shows TTFT, tokens and tokens per second."
    )


@dataclass(frozen=True)
class ProviderSettings:
    """How the server may reach providers; read once at start-up, never sent to a browser."""

    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None
    """Sent only to ``base_url``: a URL typed in the UI gets no key."""
    allow_custom_url: bool = True
    model_path: str | None = None
    """A .gguf file for the embedded runner (default: SmolLM2-135M-Instruct)."""
    scripted_ttft: float = 0.4
    scripted_tokens_per_s: float = 40.0


class Providers:
    """Builds providers for what the UI asks, and keeps them (one embedded model, a few servers)."""

    MAX_SERVERS = 8

    def __init__(self, settings: ProviderSettings, *, local: Provider | None = None, local_threads: int | None = None) -> None:
        self.settings = settings
        self._local = local
        self._local_threads = local_threads
        self._local_turns = Turns()
        self._servers: OrderedDict[tuple[str, str, int], Provider] = OrderedDict()
        self._lock = threading.Lock()

    def local(self) -> Provider:
        """The embedded model, loaded on first use."""
        with self._lock:
            if self._local is None:
                from streamchat.providers.local import LocalProvider

                self._local = LocalProvider(self.settings.model_path, lazy=True, n_threads=self._local_threads)
            return self._local

    def get(self, kind: str, url: str | None = None, model: str | None = None) -> tuple[Provider, Turns | None]:
        """The provider for a UI choice, and its queue when it answers one request at a time."""
        if kind == "embedded":
            return self.local(), self._local_turns
        if kind == "scripted":
            return (
                ScriptedProvider(
                    lambda r: scripted_reply(r.messages[-1].content),
                    ttft=self.settings.scripted_ttft,
                    tokens_per_s=self.settings.scripted_tokens_per_s,
                ),
                None,
            )
        if kind == "openai":
            return self.server(url, model), None
        raise ConfigError(f"unknown provider {kind!r}: choose one of {', '.join(k for _, k in KINDS)}")

    def server(self, url: str | None, model: str | None) -> Provider:
        s = self.settings
        url = (url or "").strip() or s.base_url or DEFAULT_URL
        if not s.allow_custom_url:
            url = s.base_url or DEFAULT_URL
        model = (model or "").strip() or s.model
        if not model:
            raise ConfigError("give a model name for the OpenAI-compatible server (the name it lists at /v1/models)")
        key = s.api_key if url.rstrip("/") == (s.base_url or "").rstrip("/") else None
        # An async HTTP client belongs to the event loop that first used it: one provider per loop.
        where = (url, model, _loop_id())
        with self._lock:
            found = self._servers.get(where)
            if found is not None:
                self._servers.move_to_end(where)
                return found
        from streamchat.providers.openai import OpenAIProvider

        # "" rather than None: $OPENAI_API_KEY must never go to a URL typed in the UI.
        provider = OpenAIProvider(model, base_url=url, api_key=key or "")
        with self._lock:
            self._servers[where] = provider
            while len(self._servers) > self.MAX_SERVERS:
                self._servers.popitem(last=False)
        return provider

    def key_note(self) -> str:
        """What the UI may say about the key: whether there is one, never what it is."""
        s = self.settings
        if s.api_key and s.base_url:
            return f"API key: set on the server for {s.base_url} (never sent to the browser)."
        return "API key: none (set `OPENAI_API_KEY` and `--base-url` on the server to use one)."


def _loop_id() -> int:
    try:
        return id(asyncio.get_running_loop())
    except RuntimeError:
        return 0


def timeouts_for(kind: str, base: Timeouts | None = None) -> Timeouts:
    """``base`` (default :class:`Timeouts`), but the embedded model's first-token limit covers its queue."""
    base = base or Timeouts()
    return replace(base, first_token=LOCAL_TIMEOUTS.first_token) if kind == "embedded" else base


# -- command line ---------------------------------------------------------------


def parser(description: str, *, providers: bool = True) -> argparse.ArgumentParser:
    """The options every app takes (``providers``: and the provider options)."""
    p = argparse.ArgumentParser(description=description)
    net = p.add_argument_group("serving")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    net.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    net.add_argument("--share", action="store_true", help="also make a public gradio.live link (needs internet)")
    net.add_argument("--concurrency", type=int, default=32, help="answers streaming at once across all users (default 32)")
    if not providers:
        return p
    who = p.add_argument_group("providers (the key is read on the server and never sent to the browser)")
    who.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL"), help="an OpenAI-compatible server")
    who.add_argument("--model", default=None, help="the model name on that server")
    who.add_argument("--api-key", default=None, help="default: $OPENAI_API_KEY; sent only to --base-url")
    who.add_argument("--lock-url", action="store_true", help="users may not type another server URL")
    who.add_argument("--model-path", default=None, help="a .gguf file for the embedded runner (default SmolLM2-135M)")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-input-chars", type=int, default=8000, help="longest message accepted (default 8000)")
    lim.add_argument("--rate-limit", type=int, default=None, metavar="N", help="at most N requests per minute per session")
    return p


def settings_from(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> ProviderSettings:
    return ProviderSettings(
        base_url=args.base_url,
        model=args.model,
        api_key=args.api_key or env.get("OPENAI_API_KEY") or None,
        allow_custom_url=not args.lock_url,
        model_path=args.model_path,
    )


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(max_input_chars=args.max_input_chars, max_requests=args.rate_limit, window_s=60.0)


def auth_from_env(env: Mapping[str, str] = os.environ) -> list[tuple[str, str]] | None:
    """``STREAMCHAT_AUTH="alice:pw1,bob:pw2"`` as Gradio's ``auth``; None when unset."""
    raw = env.get("STREAMCHAT_AUTH", "").strip()
    if not raw:
        return None
    pairs = []
    for i, item in enumerate(raw.split(","), 1):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            # Never echo the value: it holds passwords.
            raise ConfigError(f"STREAMCHAT_AUTH entry {i} is not user:password (expected the form 'name1:password1,name2:password2')")
        pairs.append((user, password))
    return pairs


def share_problem(address: str | None = None, timeout: float = 3.0) -> str | None:
    """Why Gradio cannot make a share link from here, or None when it may.

    ``address`` is ``host:port`` of the tunnel service: Gradio's own
    (``api.gradio.app``) unless ``GRADIO_SHARE_SERVER_ADDRESS`` names another.
    """
    host, _, port = (address or SHARE_SERVER).rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        return f"this machine cannot reach {host}:{port}, Gradio's share service ({exc.strerror or exc})"
    except ValueError:
        return f"GRADIO_SHARE_SERVER_ADDRESS must be host:port, not {address!r}"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (for tests and benchmarks)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start(
    demo: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None, concurrency: int = 32,
    auth: list[tuple[str, str]] | None = None, share: bool = False,
) -> tuple[str, str | None]:
    """Launch ``demo`` without blocking (no analytics, no server-side rendering); return its URLs."""
    demo.queue(default_concurrency_limit=concurrency)
    _, url, share_url = demo.launch(
        server_name=host, server_port=port, share=share, auth=auth, prevent_thread_lock=True,
        quiet=True, ssr_mode=False, show_error=True,
    )
    return str(url), share_url


def start_in_thread(build: Callable[[], gr.Blocks]) -> tuple[gr.Blocks, str]:
    """Build and start an app from code that keeps its own event loop busy (a test, a benchmark).

    The app is built inside a running loop of a thread of its own: built outside
    any loop, Gradio leaks event loops; Playwright's sync API keeps one running
    in the calling thread.
    """
    done: list[tuple[gr.Blocks, str]] = []

    async def go() -> None:
        demo = build()
        done.append((demo, start(demo, port=free_port())[0]))

    worker = threading.Thread(target=asyncio.run, args=(go(),))
    worker.start()
    worker.join()
    if not done:
        raise RuntimeError("the app did not start (see the error above)")
    return done[0]


def launch(
    demo: gr.Blocks, args: argparse.Namespace, *, what: str, env: Mapping[str, str] = os.environ, block: bool = True
) -> Any:
    """Start ``demo`` on ``--host``/``--port``, print where, and (``block``) serve until Ctrl-C."""
    auth = auth_from_env(env)
    share = False
    if args.share:
        problem = share_problem(env.get("GRADIO_SHARE_SERVER_ADDRESS"))
        if problem:
            print(f"No share link: {problem}. Share links need internet access; "
                  "the app runs on this machine only.", file=sys.stderr)
        else:
            share = True
    try:
        url, share_url = start(demo, host=args.host, port=args.port, concurrency=args.concurrency, auth=auth, share=share)
    except OSError as exc:
        where = f"{args.host}:{args.port}" if args.port else f"{args.host} (ports 7860 and up)"
        raise ConfigError(f"could not listen on {where}: {str(exc).rstrip('.')}. Choose another --port.") from None
    print(f"streamchat {what}: {url}" + (" (login required)" if auth else ""), flush=True)
    if share:
        if share_url:
            print(f"share link: {share_url}", flush=True)
        else:
            print("No share link: Gradio could not open its tunnel (see its message above); "
                  "the app runs on this machine only.", file=sys.stderr, flush=True)
    if block:
        try:
            demo.block_thread()
        except KeyboardInterrupt:
            pass
    return demo


def prepare_environment() -> None:
    """Before Gradio is imported: no analytics, no version check."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

