"""Calibration: measure something whose timing is known, and say how far the measurement is off.

The scripted provider (in this process) or a scripted HTTP server (a
:class:`~streamchat.testing.wire_server.WireServer` in a *separate process*,
so its work does not compete with the client's event loop) sends a fixed
number of tokens: the first after ``ttft``, then one every ``1/tokens_per_s``.
Every chunk's due time is known, so the error of TTFT, TPOT and each arrival
is measured − due. In-process, asyncio's timers add up to about 1 ms (epoll
waits in whole milliseconds); over HTTP, the server's own sleeps add a little
per token, so per-chunk errors grow along an answer and TPOT shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError
from ..providers.scripted import ScriptedProvider
from .config import BenchConfig
from .lean_http import LeanHTTPProvider
from .load import Concurrency, Load
from .results import BenchResult
from .runner import BenchRun, Progress
from .stats import Summary, summarize
from .wire import PooledOpenAIProvider, ScriptedServer

Transport = Literal["in-process", "http"]


@dataclass(frozen=True, slots=True)
class CalibrationLevel:
    """Errors (measured − known) at one load level, in seconds."""

    load: Load
    requests: int
    ttft_error: Summary | None
    tpot_error: Summary | None
    chunk_error: Summary | None
    """Every chunk's arrival − its due time (only without jitter, when every due time is known)."""


@dataclass(frozen=True, slots=True)
class Calibration:
    """How far the measurement is off from the known timing, level by level."""

    ttft_s: float
    tokens_per_s: float
    tokens: int
    jitter: float
    transport: Transport
    levels: tuple[CalibrationLevel, ...]
    result: BenchResult
    tolerance_s: float = 0.005
    tolerance_rel: float = 0.05

    def tolerance(self, expected: float) -> float:
        """The allowed error for a value: 5 ms or 5% of it, whichever is larger."""
        return max(self.tolerance_s, self.tolerance_rel * expected)

    def failures(self, stats: tuple[str, ...] = ("mean", "p50", "p90", "p99")) -> tuple[str, ...]:
        """Every reported TTFT and TPOT figure among ``stats`` that is off by more than allowed."""
        out = []
        gap = 1.0 / self.tokens_per_s if self.tokens_per_s else 0.0
        for level in self.levels:
            if level.ttft_error is None:
                out.append(f"{level.load.label}: no request completed")
                continue
            for name, errors, expected in (("TTFT", level.ttft_error, self.ttft_s), ("TPOT", level.tpot_error, gap)):
                if errors is None:
                    continue
                limit = self.tolerance(expected)
                for stat in stats:
                    value = getattr(errors, stat)
                    if abs(value) > limit:
                        out.append(f"{level.load.label}: {name} {stat} off by {value * 1e3:+.2f} ms (allowed ±{limit * 1e3:.1f} ms)")
        return tuple(out)

    @property
    def ok(self) -> bool:
        return not self.failures()

    def report(self) -> str:
        """A table for people: errors in milliseconds, then the verdict."""
        gap = 1.0 / self.tokens_per_s if self.tokens_per_s else 0.0
        where = "the scripted provider, in-process" if self.transport == "in-process" else "a scripted HTTP server in another process"
        lines = [
            f"calibration against {where}: TTFT {self.ttft_s * 1e3:.1f} ms, then a token every {gap * 1e3:.2f} ms "
            f"({self.tokens_per_s:g} tok/s), {self.tokens} tokens, jitter {self.jitter:g}",
            f"{'load':>10}  {'n':>5}  {'TTFT error p50/p99/max (ms)':>28}  {'TPOT error p50/p99 (ms)':>24}  {'chunk error p50/p99 (ms)':>25}",
        ]
        for level in self.levels:
            lines.append(f"{level.load.label:>10}  {level.requests:>5}  {_ms(level.ttft_error, 'p50', 'p99', 'max'):>28}  "
                         f"{_ms(level.tpot_error, 'p50', 'p99'):>24}  {_ms(level.chunk_error, 'p50', 'p99'):>25}")
        failures = self.failures()
        rule = f"within {self.tolerance_s * 1e3:g} ms or {self.tolerance_rel:.0%}"
        lines.append(f"verdict: {rule} (TTFT and TPOT mean, p50, p90, p99): " + ("yes" if not failures else "NO"))
        lines.extend(f"  {f}" for f in failures)
        return "\n".join(lines)


def _ms(s: Summary | None, *stats: str) -> str:
    if s is None:
        return "—"
    return " / ".join(f"{getattr(s, k) * 1e3:+.2f}" for k in stats)


def calibration_of(result: BenchResult, *, ttft_s: float, tokens_per_s: float, tokens: int, jitter: float = 0.0,
                   transport: Transport = "in-process") -> Calibration:
    """Compare a finished run with the timing its scripted source was known to have."""
    gap = 1.0 / tokens_per_s if tokens_per_s else 0.0
    levels = []
    for level in result.levels:
        ok = [r for r in level.requests if r.ok]
        chunk_errors: list[float] = []
        if jitter == 0:
            for r in ok:
                chunk_errors.extend(o - (ttft_s + k * gap) for k, o in enumerate(r.timings.chunk_offsets_s))
        levels.append(CalibrationLevel(
            level.load,
            len(ok),
            summarize(r.timings.ttft_s - ttft_s for r in ok if r.timings.ttft_s is not None),
            summarize(r.timings.tpot_s - gap for r in ok if r.timings.tpot_s is not None),
            summarize(chunk_errors),
        ))
    return Calibration(ttft_s, tokens_per_s, tokens, jitter, transport, tuple(levels), result)


def calibrate(
    loads: Sequence[Load] = (Concurrency(1), Concurrency(64)),
    *,
    ttft_s: float = 0.2,
    tokens_per_s: float = 50.0,
    tokens: int = 32,
    jitter: float = 0.0,
    requests: int = 256,
    duration_s: float | None = 5.0,
    http: bool = False,
    client: Literal["lean", "sdk"] = "lean",
    on_progress: Callable[[Progress], None] | None = None,
) -> Calibration:
    """Run the benchmark against a scripted source with known timing; see the module docstring.

    With ``http``, ``client`` picks the HTTP client measured: ``lean`` (the
    benchmark's own, :class:`LeanHTTPProvider`) or ``sdk`` (the core's
    :class:`~streamchat.providers.openai.OpenAIProvider`, through the openai SDK).
    """
    if tokens < 2:
        raise ConfigError(f"calibration needs at least 2 tokens per answer, not {tokens}")
    if not tokens_per_s > 0 or ttft_s < 0 or jitter < 0:
        raise ConfigError("calibration needs tokens_per_s > 0, ttft >= 0 and jitter >= 0")
    # One warm-up request per concurrent stream: connection set-up is not what calibration measures.
    width = max(_width(load, requests) for load in loads)
    config = BenchConfig(loads=tuple(loads), requests=requests, duration_s=duration_s, warmup=width, max_tokens=None)
    text = " tok" * tokens
    if not http:
        scripted = ScriptedProvider(text, ttft=ttft_s, tokens_per_s=tokens_per_s, jitter=jitter, seed=0)
        result = BenchRun(scripted, config, on_progress=on_progress).run()
        return calibration_of(result, ttft_s=ttft_s, tokens_per_s=tokens_per_s, tokens=tokens, jitter=jitter)
    if jitter:
        raise ConfigError("the HTTP calibration server has no jitter: use jitter 0 with http")
    with ScriptedServer(tokens, ttft_s, 1.0 / tokens_per_s) as server:
        provider = (LeanHTTPProvider("scripted", base_url=server.url) if client == "lean"
                    else PooledOpenAIProvider("scripted", base_url=server.url, connections=width))
        result = BenchRun(provider, config, on_progress=on_progress).run()
    return calibration_of(result, ttft_s=ttft_s, tokens_per_s=tokens_per_s, tokens=tokens, transport="http")


def _width(load: Load, requests: int) -> int:
    if isinstance(load, Concurrency):
        return load.n
    return load.max_concurrency or requests
