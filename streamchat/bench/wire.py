"""Benchmarking over the OpenAI wire: a provider whose pool fits the load, and a scripted server in its own process."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
from types import TracebackType

from ..providers.openai import OpenAIProvider


class PooledOpenAIProvider(OpenAIProvider):
    """An :class:`OpenAIProvider` for benchmarks: its pool holds ``connections`` streams, and it can be emptied.

    The SDK keeps 100 connections alive, so at higher concurrency every
    request would pay for a new one. Pooled connections belong to the event
    loop that opened them; a run empties the pool as its loop ends
    (:meth:`release`), so the next run, in a new loop, starts clean.
    """

    def __init__(self, model: str, *, base_url: str, api_key: str | None = None, connections: int = 100) -> None:
        import httpx2
        import openai

        size = max(connections, 100) + 16
        self._transport = httpx2.AsyncHTTPTransport(
            limits=httpx2.Limits(max_connections=size, max_keepalive_connections=size)
        )
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        client = openai.AsyncOpenAI(base_url=base_url, api_key=key or "none", max_retries=0,
                                    http_client=openai.DefaultAsyncHttpxClient(transport=self._transport))
        super().__init__(model, base_url=base_url, api_key=api_key, async_client=client)

    async def release(self) -> None:
        """Close the pooled async connections; the pool stays usable and reconnects when needed."""
        await self._transport.aclose()


class ScriptedServer:
    """A WireServer in its own process answering every request with ``tokens`` tokens at known times.

    The process is ``python -m streamchat.bench.scripted_server``: it prints
    its URL and serves until its standard input closes.
    """

    def __init__(self, tokens: int, ttft_s: float, gap_s: float, *, start_timeout_s: float = 60.0) -> None:
        self.tokens, self.ttft_s, self.gap_s = tokens, ttft_s, gap_s
        self._timeout = start_timeout_s
        self._url: str | None = None
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the scripted server has not started")
        return self._url

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs (to read its CPU time)."""
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> ScriptedServer:
        command = [sys.executable, "-m", "streamchat.bench.scripted_server", str(self.tokens), repr(self.ttft_s), repr(self.gap_s)]
        self._process = process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        ready = selectors.DefaultSelector()
        ready.register(process.stdout, selectors.EVENT_READ)
        line = process.stdout.readline() if ready.select(self._timeout) else ""
        ready.close()
        if not line.startswith("http://"):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the scripted server did not start (it said {line.strip()!r})")
        self._url = line.strip()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.communicate(timeout=5)  # closing its input tells it to stop
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
