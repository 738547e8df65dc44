"""Streamed versus blocking: the same prompts sent with and without ``stream``.

Streaming moves the first words from the end of the answer to its start; it
may also cost some total time (per-chunk work on the server, the network and
the client). The pairs run one at a time, alternating which goes first.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .._stream import astream
from ..errors import ConfigError, ProviderError, redact
from ..messages import ChatRequest
from ..options import Clock, Timeouts
from ..providers.base import Provider
from ..timing import Timings
from .prompts import BenchPrompt
from .stats import Summary, summarize

if TYPE_CHECKING:
    from .config import BenchConfig


class Blocking(Protocol):
    """Sends one request without streaming; returns the completion tokens if known."""

    async def complete(self, request: ChatRequest, timeouts: Timeouts) -> int | None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BlockingPair:
    """One prompt, streamed and blocking."""

    prompt_index: int
    streamed: Timings | None
    blocking_s: float | None
    blocking_tokens: int | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class BlockingComparison:
    """What streaming costs in total time and saves in time to the first words (paired medians)."""

    pairs: tuple[BlockingPair, ...]

    def _ok(self) -> list[BlockingPair]:
        return [p for p in self.pairs if p.streamed is not None and p.blocking_s is not None and p.streamed.ttft_s is not None]

    @property
    def streamed_ttft(self) -> Summary | None:
        return summarize(p.streamed.ttft_s for p in self._ok() if p.streamed)

    @property
    def streamed_total(self) -> Summary | None:
        """Until the streamed answer ended (``duration_s``)."""
        return summarize(p.streamed.duration_s for p in self._ok() if p.streamed)

    @property
    def blocking_total(self) -> Summary | None:
        return summarize(p.blocking_s for p in self._ok())

    @property
    def extra_total(self) -> Summary | None:
        """Streamed total − blocking total, per prompt: what streaming costs."""
        return summarize((p.streamed.duration_s or 0) - (p.blocking_s or 0) for p in self._ok() if p.streamed)

    @property
    def ttft_saving(self) -> Summary | None:
        """Blocking total − streamed TTFT, per prompt: how much sooner the first words appear."""
        return summarize((p.blocking_s or 0) - (p.streamed.ttft_s or 0) for p in self._ok() if p.streamed)

    @property
    def tokens(self) -> tuple[Summary | None, Summary | None]:
        """Output tokens, streamed and blocking: if they differ, so do the totals (use temperature 0)."""
        ok = self._ok()
        return summarize(p.streamed.output_tokens for p in ok if p.streamed), summarize(p.blocking_tokens for p in ok)

    def sentence(self) -> str:
        """The comparison in one line, with medians."""
        ttft, blocking, streamed = self.streamed_ttft, self.blocking_total, self.streamed_total
        extra, saving = self.extra_total, self.ttft_saving
        if not (ttft and blocking and streamed and extra and saving):
            failed = next((p.error for p in self.pairs if p.error), "no pair completed")
            return f"streamed vs blocking: no comparison ({failed})"
        share = extra.p50 / blocking.p50 if blocking.p50 else 0.0
        line = (f"streamed vs blocking ({ttft.n} prompts, medians): first words after {ttft.p50:.3f} s instead of "
                f"{blocking.p50:.3f} s (saves {saving.p50:.3f} s); whole answer {streamed.p50:.3f} s vs "
                f"{blocking.p50:.3f} s ({extra.p50:+.3f} s, {share:+.1%})")
        s_tokens, b_tokens = self.tokens
        if s_tokens and b_tokens and abs(s_tokens.p50 - b_tokens.p50) > 0.1 * max(b_tokens.p50, 1):
            line += f"; answers differ in length ({s_tokens.p50:.0f} vs {b_tokens.p50:.0f} tokens): use temperature 0"
        return line


class OpenAIBlocking:
    """``stream=False`` through its own ``openai.AsyncOpenAI`` client (the key is never shown)."""

    def __init__(self, base_url: str, api_key: str | None = None, model: str | None = None) -> None:
        self._base_url = base_url
        self._key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._model = model
        self._client: Any = None

    async def complete(self, request: ChatRequest, timeouts: Timeouts) -> int | None:
        import openai

        if self._client is None:  # made here, in the loop that uses it
            self._client = openai.AsyncOpenAI(base_url=self._base_url, api_key=self._key or "none", max_retries=0)

        timeout = openai.Timeout(connect=timeouts.connect, read=timeouts.total, write=30.0, pool=30.0)
        try:
            raw = await self._client.chat.completions.with_raw_response.create(
                model=request.model or self._model or "",
                messages=[m.to_dict() for m in request.messages],
                stream=False,
                timeout=timeout,
                **request.sampling(),
                **request.extra,
            )
            usage = getattr(raw.parse(), "usage", None)
        except openai.OpenAIError as exc:
            raise ProviderError(redact(f"{type(exc).__name__}: {exc}", (self._key,))) from None
        return usage.completion_tokens if usage is not None else None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


class LocalBlocking:
    """The embedded model's ``create_chat_completion(stream=False)``, always on one thread of its own.

    One thread, because llama.cpp keeps its OpenMP team per thread. The
    comparison sends one request at a time, so the model is never used by
    two threads at once.
    """

    def __init__(self, provider: Any) -> None:
        self._provider = provider
        self._thread: ThreadPoolExecutor | None = None

    async def complete(self, request: ChatRequest, timeouts: Timeouts) -> int | None:
        llm = self._provider.load()
        kwargs: dict[str, Any] = {"messages": [m.to_dict() for m in request.messages], "stream": False,
                                  **request.sampling(), **request.extra}
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="streamchat-blocking")
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(self._thread, lambda: llm.create_chat_completion(**kwargs))
        tokens = reply.get("usage", {}).get("completion_tokens")
        return tokens if isinstance(tokens, int) else None

    async def aclose(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=False)


class ScriptedBlocking:
    """The scripted answer delivered whole, when its last token is due."""

    def __init__(self, provider: Any, clock: Clock) -> None:
        self._provider = provider
        self._clock = clock

    async def complete(self, request: ChatRequest, timeouts: Timeouts) -> int | None:
        plan = self._provider.plan(request)
        plan.raise_early()
        await self._clock.asleep(plan.times[-1] if plan.times else 0.0)
        return len(plan.pieces)

    async def aclose(self) -> None:
        return None


def blocking_for(provider: Provider, clock: Clock, *, api_key: str | None = None) -> Blocking:
    """The non-streaming twin of ``provider``; a clear error if there is none."""
    from ..providers.local import LocalProvider
    from ..providers.openai import OpenAIProvider
    from ..providers.scripted import ScriptedProvider
    from .lean_http import LeanHTTPProvider

    if isinstance(provider, LeanHTTPProvider):
        return provider.blocking()
    if isinstance(provider, OpenAIProvider):
        return OpenAIBlocking(provider.base_url, api_key, provider.model)
    if isinstance(provider, LocalProvider):
        return LocalBlocking(provider)
    if isinstance(provider, ScriptedProvider):
        return ScriptedBlocking(provider, clock)
    raise ConfigError(
        f"the streamed-vs-blocking comparison needs an OpenAI-compatible, embedded or scripted provider, not {provider.name!r}"
    )


async def compare(
    provider: Provider,
    prompts: Sequence[BenchPrompt],
    config: BenchConfig,
    blocking: Blocking,
    clock: Clock,
) -> BlockingComparison:
    """Send each prompt streamed and blocking, one at a time, alternating which goes first."""
    pairs = []
    for i in range(config.compare_blocking):
        index = i % len(prompts)
        messages = prompts[index].messages
        streamed: Timings | None = None
        seconds: float | None = None
        tokens: int | None = None
        error: str | None = None
        for step in ("stream", "block") if i % 2 == 0 else ("block", "stream"):
            if step == "stream":
                async with aclosing(astream(provider, messages, timeouts=config.timeouts, retry=config.retry,
                                            clock=clock, **config.params())) as s:
                    async for _ in s:
                        pass
                if s.error is None:
                    streamed = s.timings
                else:
                    error = s.error.message
            else:
                request = ChatRequest(messages, model=provider.model, **_sampling(config))
                start = clock.now_ns()
                try:
                    tokens = await blocking.complete(request, config.timeouts)
                    seconds = (clock.now_ns() - start) * 1e-9
                except (ProviderError, ConfigError) as exc:
                    error = provider.redact(str(exc))
                except Exception as exc:
                    error = provider.redact(f"{type(exc).__name__}: {exc}")
        pairs.append(BlockingPair(index, streamed, seconds, tokens, error))
    return BlockingComparison(tuple(pairs))


def _sampling(config: BenchConfig) -> dict[str, Any]:
    params = config.params()
    return {k: params[k] for k in ("max_tokens", "temperature", "seed", "extra") if k in params}
