"""Serving the relay with uvicorn, with a shutdown that lets running answers finish.

On the first SIGTERM or Ctrl-C the relay stops listening (a load balancer
moves on), answers new requests on open connections with 503, and lets the
running streams, WebSocket ones included, go on for ``grace_s``; streams still
running then end with a ``server_shutdown`` error (and their usage lines).
A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections.abc import Mapping
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from .session import Relay


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Starlette, **overrides: Any) -> uvicorn.Config:
    """uvicorn settings for the relay: no access log (it would log prompts in URLs), sans-I/O WebSockets."""
    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "ws": "websockets-sansio",
        "lifespan": "on",
        "timeout_graceful_shutdown": 2,
        "server_header": False,
        "backlog": 2048,
        **overrides,
    }
    return uvicorn.Config(app, **options)


class RelayServer(uvicorn.Server):
    """uvicorn's server, with the relay's drain on the first shutdown signal."""

    def __init__(self, config: uvicorn.Config, relay: Relay) -> None:
        super().__init__(config)
        self.relay = relay
        self.loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is None and not self.should_exit and self.loop is not None:
            self.loop.call_soon_threadsafe(self.begin_shutdown)
        else:
            super().handle_exit(sig, frame)

    def begin_shutdown(self, grace_s: float | None = None) -> None:
        """Start the graceful drain (call on the server's loop); ``grace_s`` overrides the config's."""
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self.drain(grace_s))

    async def drain(self, grace_s: float | None = None) -> None:
        """Stop listening, let running streams go on for the grace period, stop the rest, exit."""
        relay = self.relay
        relay.draining = True
        for server in self.servers:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (relay.config.grace_s if grace_s is None else grace_s)
        while relay.sessions and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if relay.sessions:
            await relay.stop_all("server_shutdown")
            end = loop.time() + 2.0
            while relay.sessions and loop.time() < end:
                await asyncio.sleep(0.02)
        self.should_exit = True


def run(app: Starlette, sock: socket.socket, **uvicorn_options: Any) -> None:
    """Serve ``app`` (from :func:`~streamchat.relay.create_app`) on ``sock`` until a signal ends it.

    This process is now a server: the heap built so far (imports, the app, a
    loaded model) is frozen out of garbage collection, so the full collections
    that run while hundreds of streams are open pause every stream for less.
    """
    gc.collect()
    gc.freeze()
    server = RelayServer(uvicorn_config(app, **uvicorn_options), app.state.relay)
    server.run(sockets=[sock])


def app_from_env(environ: Mapping[str, str] | None = None) -> Starlette:
    """An app built from ``STREAMCHAT_RELAY_*`` variables, for ``uvicorn --factory --workers N``.

    The provider: ``STREAMCHAT_RELAY_PROVIDER`` = ``local`` (default), ``scripted``,
    or ``openai`` with ``STREAMCHAT_RELAY_BASE_URL`` and ``STREAMCHAT_RELAY_MODEL``
    (the key from ``OPENAI_API_KEY``).
    """
    from .app import create_app
    from .config import load_config

    env = os.environ if environ is None else environ
    return create_app(provider_from_env(env), load_config(environ=env, file=env.get("STREAMCHAT_RELAY_CONFIG") or None))


def provider_from_env(env: Mapping[str, str]) -> Any:
    from ..errors import ConfigError

    kind = env.get("STREAMCHAT_RELAY_PROVIDER", "local")
    if kind == "scripted":
        from ..providers.scripted import ScriptedProvider

        return ScriptedProvider()
    if kind == "openai":
        from ..providers.openai import OpenAIProvider

        model = env.get("STREAMCHAT_RELAY_MODEL", "")
        return OpenAIProvider(model, base_url=env.get("STREAMCHAT_RELAY_BASE_URL") or None)
    if kind == "local":
        from ..providers.local import LocalProvider

        return LocalProvider(env.get("STREAMCHAT_RELAY_MODEL_PATH") or None)
    raise ConfigError(f"$STREAMCHAT_RELAY_PROVIDER must be local, scripted or openai, not {kind!r}")
