"""Running a benchmark: warm-up, each load level, the blocking comparison; partial results on stop.

Every request is one :func:`streamchat.astream` read to its end inside
``aclosing``; its events are grouped into chunks exactly as the core groups
them for ``Timings.chunk_offsets_s``. While a level runs, a 10 ms timer
measures how late the event loop is, and the loop thread's CPU time is
taken: the client's own overhead, stated next to what it measured. The heap
is frozen for the collector during a level (see :func:`_freeze_heap`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from .._stream import AsyncStream, astream
from ..errors import StreamchatError
from ..options import Clock, SystemClock
from ..providers.base import Provider
from .blocking import Blocking, BlockingComparison, blocking_for, compare
from .config import BenchConfig
from .load import Concurrency, Load, drive
from .results import BenchResult, ChunkRecord, ChunkTokens, LevelResult, RequestResult
from .stats import split_tokens, summarize_level

LOOP_PROBE_S = 0.01
STOPPED = "stopped before the answer ended"
"""The message of a request cut short by ``stop()`` or Ctrl-C (its kind is ``cancelled``)."""

Tokenizer = Callable[[str], int]


@runtime_checkable
class Releasing(Protocol):
    """A provider holding connections that belong to the running event loop (``LeanHTTPProvider``, ``PooledOpenAIProvider``)."""

    async def release(self) -> None: ...


class BenchError(StreamchatError):
    """The benchmark could not run (its first request failed)."""


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a run stands; handed to ``on_progress`` after every request."""

    phase: Literal["warmup", "measure", "level_done"]
    level: str
    level_index: int
    levels: int
    done: int
    errors: int
    total: int | None
    """Requests planned for this level; None when only a duration bounds it."""
    elapsed_s: float
    limit_s: float | None
    ttft_s: float | None
    """The TTFT of the request that just ended."""


@dataclass
class _Level:
    load: Load
    index: int
    start_ns: int
    requests: list[RequestResult]
    lags: list[float]
    cpu_start: float
    errors: int = 0


class BenchRun:
    """One benchmark run; ``run()``/``arun()`` start it, ``stop()`` ends it early, ``result()`` is what it measured.

    ``tokenizer`` counts tokens locally when a server reports no usage.
    ``blocking`` sends the comparison's non-streamed requests (by default
    derived from the provider); the run closes it when done. ``clock`` is
    injectable for tests.
    """

    def __init__(
        self,
        provider: Provider,
        config: BenchConfig | None = None,
        *,
        tokenizer: Tokenizer | None = None,
        blocking: Blocking | None = None,
        clock: Clock | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.provider = provider
        self.config = config or BenchConfig()
        self.tokenizer = tokenizer
        self.clock = clock or SystemClock()
        self.on_progress = on_progress
        self._blocking_call = blocking
        self._levels: list[LevelResult] = []
        self._comparison: BlockingComparison | None = None
        self._checked = False
        self._interrupted = False
        self._stop_requested = False
        self._started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[object] | None = None
        self._lock = threading.Lock()

    # -- running -----------------------------------------------------------------
    def run(self) -> BenchResult:
        """Run to the end in a worker thread (so it works inside Jupyter too).

        Ctrl-C stops the run and returns what was measured (``result.interrupted``).
        """
        outcome: list[BenchResult | BaseException] = []
        finished = threading.Event()

        def target() -> None:
            try:
                outcome.append(asyncio.run(self.arun()))
            except BaseException as exc:
                outcome.append(exc)
            finally:
                finished.set()

        threading.Thread(target=target, name="streamchat-bench", daemon=True).start()
        try:
            # Not Thread.join(): on CPython 3.11 a Ctrl-C inside it can leave the thread looking finished.
            while not finished.wait(0.1):
                pass
        except KeyboardInterrupt:
            self.stop()
            finished.wait()
            return self.result()
        found = outcome[0] if outcome else RuntimeError("the benchmark thread ended without a result")
        if isinstance(found, asyncio.CancelledError):
            return self.result()
        if isinstance(found, BaseException):
            raise found
        return found

    async def arun(self) -> BenchResult:
        """Run to the end; cancelling it stops the run (``result()`` then holds what was measured)."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            stop = self._stop_requested
        if stop:
            self._interrupted = True
            return self.result()
        config = self.config
        try:
            for index, load in enumerate(config.loads):
                warm = await self._warmup(index, load)
                await self._level(index, load, warm)
            if config.compare_blocking:
                await self._compare()
        except asyncio.CancelledError:
            self._interrupted = True
            raise
        finally:
            if isinstance(self.provider, Releasing):
                # Its pooled connections belong to this loop, which may be about to end.
                await asyncio.shield(self.provider.release())
        return self.result()

    def stop(self) -> None:
        """End the run soon: open streams are closed, what was measured is kept. Safe from any thread."""
        with self._lock:
            self._stop_requested = True
            loop, task = self._loop, self._task
        if loop is not None and task is not None and not task.done():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop has already closed
                pass

    def result(self) -> BenchResult:
        """What has been measured so far."""
        return BenchResult(
            provider=self.provider.name,
            model=self.provider.model,
            config=self.config,
            levels=tuple(self._levels),
            started=self._started,
            blocking=self._comparison,
            interrupted=self._interrupted,
        )

    # -- levels ------------------------------------------------------------------
    async def _warmup(self, index: int, load: Load) -> int:
        """Send the level's warm-up requests; return how many were sent."""
        width = load.n if isinstance(load, Concurrency) else (load.max_concurrency or self.config.warmup)
        count = min(self.config.warmup, width)
        if not count:
            return 0
        level = _Level(load, index, self.clock.now_ns(), [], [], 0.0)
        if not self._checked:
            # The run's first request goes alone and must succeed: a wrong URL, key or model stops here.
            await self._send(level, 0, level.start_ns, 0, "warmup")
            self._checked = True
            first = level.requests[0]
            if not first.ok:
                raise BenchError(f"the first request failed, so nothing was measured: {first.error or first.finish_reason}")
            if count == 1:
                return 1

        async def send(i: int, due_ns: int, slot: asyncio.Semaphore | None) -> None:
            await self._send(level, i, due_ns, 0, "warmup")

        # All at once, so that every concurrent stream has its connection open before measuring.
        await drive(Concurrency(count), send, self.clock, start_ns=self.clock.now_ns(), requests=count, duration_s=None)
        return len(level.requests)

    async def _level(self, index: int, load: Load, warm: int) -> None:
        config = self.config
        frozen = _freeze_heap()
        level = _Level(load, index, self.clock.now_ns(), [], [], time.thread_time())
        probe = asyncio.create_task(_watch_loop(level.lags))
        done = False

        async def send(i: int, due_ns: int, slot: asyncio.Semaphore | None) -> None:
            if slot is None:
                await self._send(level, i, due_ns, 0, "measure")
                return
            waited = self.clock.now_ns()
            async with slot:
                await self._send(level, i, due_ns, self.clock.now_ns() - waited, "measure")

        try:
            await drive(load, send, self.clock, start_ns=level.start_ns, requests=config.requests,
                        duration_s=config.duration_s, seed=config.seed)
            done = True
        finally:
            probe.cancel()
            if frozen:
                gc.unfreeze()
            self._levels.append(self._close_level(level, warm, interrupted=not done))
            self._report(level, "level_done", None)

    def _close_level(self, level: _Level, warm: int, *, interrupted: bool) -> LevelResult:
        cpu = time.thread_time() - level.cpu_start
        requests = tuple(sorted(level.requests, key=lambda r: r.index))
        end = max((r.end_s for r in requests), default=(self.clock.now_ns() - level.start_ns) * 1e-9)
        summary = summarize_level(requests, end, targets=self.config.targets, ui_rate=self.config.ui_rate,
                                  loop_lags=level.lags, loop_cpu_s=cpu)
        return LevelResult(level.load, requests, summary, warm, interrupted)

    async def _compare(self) -> None:
        call = self._blocking_call or blocking_for(self.provider, self.clock)
        try:
            self._comparison = await compare(self.provider, self.config.prompts, self.config, call, self.clock)
        finally:
            await call.aclose()

    # -- one request ---------------------------------------------------------------
    async def _send(self, level: _Level, i: int, due_ns: int, queue_ns: int, phase: Literal["warmup", "measure"]) -> None:
        prompts = self.config.prompts
        prompt_index = i % len(prompts)
        s = astream(self.provider, prompts[prompt_index].messages, timeouts=self.config.timeouts,
                    retry=self.config.retry, clock=self.clock, **self.config.params())
        chars: list[int] = []
        texts: list[list[str]] = []
        keep = self.tokenizer is not None  # the chunks' text is only needed to count their tokens
        last = -1
        try:
            async with aclosing(s):
                async for event in s:
                    if event.kind == "text" or event.kind == "reasoning":
                        piece = event.text
                    elif event.kind == "tool_call":
                        piece = (event.name or "") + event.arguments
                    else:
                        continue
                    if event.t_ns != last:  # the core's rule: one chunk per arrival time
                        last = event.t_ns
                        chars.append(0)
                        if keep:
                            texts.append([])
                    chars[-1] += len(piece)
                    if keep:
                        texts[-1].append(piece)
        finally:
            result = self._measure(s, i, prompt_index, level.start_ns, due_ns, queue_ns, chars, texts)
            level.requests.append(result)
            level.errors += not result.ok
            self._report(level, phase, result.timings.ttft_s)

    def _measure(self, s: AsyncStream, i: int, prompt_index: int, start_ns: int, due_ns: int, queue_ns: int,
                 chars: Sequence[int], texts: Sequence[Sequence[str]]) -> RequestResult:
        timings = s.timings
        count = self.tokenizer
        method: ChunkTokens
        if timings.token_source == "chunks" and count is None:
            tokens = tuple(1 for _ in chars)
            method = "one_per_chunk"
        else:
            if count is not None:
                weights = [count("".join(t)) for t in texts]
                method = "split_by_tokenizer"
                if timings.token_source == "chunks":
                    total = count("".join(p for t in texts for p in t))
                    timings = dataclasses.replace(timings, output_tokens=total, token_source="tokenizer")
            else:
                weights = list(chars)
                method = "split_by_characters"
            tokens = split_tokens(timings.output_tokens, weights)
        offsets = timings.chunk_offsets_s
        if len(offsets) != len(chars):  # cannot happen with the core's grouping; never misattribute if it does
            chars, tokens = [0] * len(offsets), tuple(1 for _ in offsets)
            method = "one_per_chunk"
        chunks = tuple(ChunkRecord(o, n, c) for o, n, c in zip(offsets, tokens, chars, strict=True))
        sent = s.request_start_ns or self.clock.now_ns()
        lag = max(0, sent - due_ns - queue_ns)
        error = s.error
        reason = s.finish_reason or "cancelled"
        kind = type(error.error).__name__ if error is not None else ("cancelled" if reason == "cancelled" else None)
        message = error.message if error is not None else (STOPPED if reason == "cancelled" else None)
        usage = s.usage
        return RequestResult(
            index=i,
            prompt_index=prompt_index,
            due_s=(due_ns - start_ns) * 1e-9,
            queue_s=queue_ns * 1e-9,
            lag_s=lag * 1e-9,
            timings=timings,
            chunks=chunks,
            chunk_tokens=method,
            finish_reason=reason,
            error_kind=kind,
            error=message,
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            text=s.text,
        )

    def _report(self, level: _Level, phase: Literal["warmup", "measure", "level_done"],
                ttft: float | None) -> None:
        if self.on_progress is None:
            return
        config = self.config
        self.on_progress(Progress(
            phase=phase,
            level=level.load.label,
            level_index=level.index,
            levels=len(config.loads),
            done=len(level.requests),
            errors=level.errors,
            total=config.warmup if phase == "warmup" else config.requests,
            elapsed_s=(self.clock.now_ns() - level.start_ns) * 1e-9,
            limit_s=None if phase == "warmup" else config.duration_s,
            ttft_s=ttft,
        ))


def _freeze_heap() -> bool:
    """Move every object alive now out of the collector's sight, as vLLM's benchmark does.

    A full collection walks every tracked object; with the openai SDK loaded
    that pauses the loop for tens of milliseconds, in the middle of someone's
    TTFT. Frozen, the objects that exist before a level are never walked. Not
    done if something else froze the heap already; undone after the level.
    """
    if gc.get_freeze_count():
        return False
    gc.collect()
    gc.freeze()
    return True


async def _watch_loop(lags: list[float]) -> None:
    """How late a 10 ms timer fires: the event loop's own scheduling delay."""
    now = time.perf_counter
    while True:
        t = now()
        await asyncio.sleep(LOOP_PROBE_S)
        lags.append(max(0.0, now() - t - LOOP_PROBE_S))


def run_bench(
    provider: Provider,
    config: BenchConfig | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    blocking: Blocking | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> BenchResult:
    """Run a benchmark and return its results; Ctrl-C returns what was measured so far."""
    return BenchRun(provider, config, tokenizer=tokenizer, blocking=blocking, on_progress=on_progress).run()


async def arun_bench(
    provider: Provider,
    config: BenchConfig | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    blocking: Blocking | None = None,
    clock: Clock | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> BenchResult:
    """The async twin of :func:`run_bench` (for notebooks: ``await arun_bench(...)``)."""
    run = BenchRun(provider, config, tokenizer=tokenizer, blocking=blocking, clock=clock, on_progress=on_progress)
    return await run.arun()
