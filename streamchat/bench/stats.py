"""The arithmetic of a benchmark (pure): percentiles, goodput, chunk merging, paint lag.

Percentiles interpolate linearly between ranks, as ``numpy.percentile`` does
by default (and so vLLM's ``bench serve``). Latency metrics are taken over the
requests that completed (vLLM's rule); failed and cancelled requests are
counted by kind instead.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._coalesce import Coalescer
from ..errors import ConfigError
from ..timing import Timings

if TYPE_CHECKING:
    from .results import RequestResult

BURST_GAP_S = 0.001
"""Two chunks closer than this arrived together (in one read): a burst."""


@dataclass(frozen=True, slots=True)
class Summary:
    """A distribution in a few numbers (seconds, tokens, or whatever was summarised)."""

    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float

    def as_dict(self) -> dict[str, float]:
        return {"n": self.n, "mean": self.mean, "p50": self.p50, "p90": self.p90, "p99": self.p99,
                "min": self.min, "max": self.max}


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of already sorted values, interpolated linearly."""
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Iterable[float | int | None]) -> Summary | None:
    """Mean, p50, p90, p99, min and max of the values that exist; None if there are none."""
    xs = sorted(float(v) for v in values if v is not None)
    if not xs:
        return None
    return Summary(len(xs), math.fsum(xs) / len(xs), percentile(xs, 50), percentile(xs, 90), percentile(xs, 99),
                   xs[0], xs[-1])


# -- goodput -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Targets:
    """Service-level targets in seconds; a request is *good* when it completes and meets each one given."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_s", "tpot_s", "e2e_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"the {name[:-2].upper()} target must be a positive time, not {value}")
        if self.ttft_s is None and self.tpot_s is None and self.e2e_s is None:
            raise ConfigError("give at least one target: ttft, tpot or e2e")

    @classmethod
    def parse(cls, specs: Sequence[str]) -> Targets:
        """vLLM's ``--goodput`` syntax, milliseconds: ``ttft:500 tpot:50 e2e:3000``."""
        found: dict[str, float] = {}
        for spec in (s for item in specs for s in item.replace(",", " ").split()):
            name, sep, value = spec.partition(":")
            key = {"ttft": "ttft_s", "tpot": "tpot_s", "e2e": "e2e_s", "e2el": "e2e_s"}.get(name.strip().lower())
            try:
                ms = float(value)
            except ValueError:
                ms = math.nan
            if not sep or key is None or not ms > 0:
                raise ConfigError(f"bad goodput target {spec!r}: write NAME:MILLISECONDS with NAME ttft, tpot or e2e, e.g. ttft:500")
            found[key] = ms / 1000.0
        return cls(**found)

    def met(self, timings: Timings) -> bool:
        """Whether these timings meet every target (one token has no TPOT: that target is met)."""
        if self.ttft_s is not None and (timings.ttft_s is None or timings.ttft_s > self.ttft_s):
            return False
        tpot = timings.tpot_s
        if self.tpot_s is not None and tpot is not None and tpot > self.tpot_s:
            return False
        return not (self.e2e_s is not None and (timings.e2e_s is None or timings.e2e_s > self.e2e_s))

    def label(self) -> str:
        parts = [f"{n} ≤ {v * 1000:g} ms" for n, v in (("TTFT", self.ttft_s), ("TPOT", self.tpot_s), ("E2E", self.e2e_s))
                 if v is not None]
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Goodput:
    """Requests that completed within every target: how many, what share, and per second."""

    targets: Targets
    good: int
    share: float
    per_s: float


def goodput(requests: Sequence[RequestResult], targets: Targets, duration_s: float) -> Goodput:
    """DistServe's goodput, as vLLM computes it: good requests / the level's duration."""
    good = sum(1 for r in requests if r.ok and targets.met(r.timings))
    share = good / len(requests) if requests else 0.0
    return Goodput(targets, good, share, good / duration_s if duration_s > 0 else 0.0)


# -- tokens per chunk ------------------------------------------------------------
def split_tokens(total: int, weights: Sequence[int]) -> tuple[int, ...]:
    """Share ``total`` tokens among chunks in proportion to ``weights`` (largest remainder).

    When there are at least as many tokens as chunks, every chunk gets at
    least one (a chunk with output holds at least part of a token), so a
    server that sends one token per chunk comes out as exactly one per chunk.
    """
    n = len(weights)
    if n == 0:
        return ()
    w = [max(0, x) for x in weights]
    if not sum(w):
        w = [1] * n
    whole = sum(w)
    shares = [total * x / whole for x in w]
    counts = [int(s) for s in shares]
    for k in sorted(range(n), key=lambda k: (counts[k] - shares[k], k))[: total - sum(counts)]:
        counts[k] += 1
    if total >= n:
        for k in range(n):
            if counts[k] == 0:
                donor = max(range(n), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[k] = 1
    return tuple(counts)


@dataclass(frozen=True, slots=True)
class ChunkMerging:
    """How tokens were packed into chunks, and whether something merged them.

    ``merged``: the server puts several tokens in one chunk (a batching server,
    speculative decoding, a stream interval): ITL is per chunk, not per token.
    ``bursty``: chunks arrive in bursts (many gaps under 1 ms, a few long
    ones): something between server and client buffers, e.g. a proxy.
    ``unstreamed``: almost the whole answer came with the first token.
    """

    counted: bool
    """False when token counts come from chunks, so merging cannot show in them."""
    tokens_per_chunk: float | None
    histogram: tuple[tuple[int, int], ...]
    """``(tokens in a chunk, how many chunks)``, ascending."""
    multi_token_share: float
    burst_share: float
    merged: bool
    bursty: bool
    unstreamed: bool

    def notes(self) -> tuple[str, ...]:
        """What a person should know, in words."""
        out = []
        if self.merged:
            out.append(f"{self.tokens_per_chunk:.1f} tokens per chunk: the server merges tokens into chunks "
                       "(batching, speculative decoding or a stream interval); ITL is per chunk, read TPOT for per-token time")
        if self.bursty:
            out.append(f"{self.burst_share:.0%} of chunks arrive < 1 ms after the previous one: something buffers "
                       "the stream (a proxy?); ITL looks better and TTFT worse than what the server does")
        if self.unstreamed:
            out.append("the answer arrives almost all at once with the first token: the server or a proxy does not really stream")
        if not self.counted:
            out.append("token counts come from chunks (no usage, no tokenizer): merged chunks would not show")
        return tuple(out)


def chunk_merging(requests: Sequence[RequestResult]) -> ChunkMerging:
    """Judge chunk merging from the completed requests' chunks and gaps."""
    sizes: Counter[int] = Counter()
    counted = False
    gaps: list[float] = []
    late = 0
    streamed = 0
    for r in requests:
        if not r.ok:
            continue
        sizes.update(c.tokens for c in r.chunks)
        counted = counted or r.timings.token_source != "chunks"
        gaps.extend(r.timings.itl_s)
        t = r.timings
        if t.ttft_s is not None and t.e2e_s and t.output_chunks > 2:
            streamed += 1
            if t.ttft_s >= 0.9 * t.e2e_s and t.e2e_s > 0.05:
                late += 1
    chunks = sum(sizes.values())
    tokens = sum(k * v for k, v in sizes.items())
    per_chunk = tokens / chunks if chunks and counted else None
    multi = sum(v for k, v in sizes.items() if k > 1) / chunks if chunks else 0.0
    gaps.sort()
    bursts = sum(1 for g in gaps if g < BURST_GAP_S) / len(gaps) if gaps else 0.0
    mean_gap = math.fsum(gaps) / len(gaps) if gaps else 0.0
    bursty = len(gaps) >= 8 and bursts >= 0.3 and percentile(gaps, 50) < 0.25 * mean_gap
    return ChunkMerging(
        counted=counted,
        tokens_per_chunk=per_chunk,
        histogram=tuple(sorted(sizes.items())),
        multi_token_share=multi,
        burst_share=bursts,
        merged=per_chunk is not None and per_chunk >= 1.5,
        bursty=bursty,
        unstreamed=streamed > 0 and late / streamed >= 0.5,
    )


# -- what a screen would show ------------------------------------------------------
def paint_lags(offsets_s: Sequence[float], end_s: float | None, rate: float) -> list[float]:
    """How long each chunk waits to be painted by a UI refreshing at most ``rate`` times a second.

    The rule is streamchat's :class:`~streamchat._coalesce.Coalescer` as
    ``aframes`` applies it: an update is painted at once if the last paint is
    old enough, otherwise when its turn comes, or at the end of the stream.
    """
    if rate <= 0:
        return [0.0] * len(offsets_s)
    gate = Coalescer(rate)
    lags: list[float] = []
    waiting: list[int] = []
    for t in offsets_s:
        t_ns = round(t * 1e9)
        due = _due(gate, t_ns)
        if due is not None:
            gate.flush(due)
            lags.extend((due - w) * 1e-9 for w in waiting)
            waiting = []
        if gate.offer(t_ns):
            lags.append(0.0)
        else:
            waiting.append(t_ns)
    if waiting:
        end_ns = round((end_s if end_s is not None else offsets_s[-1]) * 1e9)
        last = gate.last_ns if gate.last_ns is not None else end_ns
        paint = min(max(end_ns, waiting[-1]), last + gate.interval_ns)
        lags.extend((paint - w) * 1e-9 for w in waiting)
    return lags


def _due(gate: Coalescer, now_ns: int) -> int | None:
    """When a waiting update was painted, if that happened before ``now_ns``."""
    if not gate.pending or gate.last_ns is None:
        return None
    due = gate.last_ns + gate.interval_ns
    return due if due <= now_ns else None


# -- one load level ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LevelSummary:
    """What one load level comes to. Latencies cover the completed requests only."""

    sent: int
    completed: int
    errors: Mapping[str, int]
    """Failed or cancelled requests by kind (``ConnectError``, ``StreamTimeout``, ``cancelled`` …)."""
    duration_s: float
    request_throughput: float
    """Completed requests per second of the level."""
    output_throughput: float
    """Output tokens of completed requests per second of the level."""
    token_sources: Mapping[str, int]
    ttft: Summary | None
    ttfo: Summary | None
    headers: Summary | None
    e2e: Summary | None
    tpot: Summary | None
    itl: Summary | None
    """Every gap between consecutive output chunks, pooled over requests (vLLM's ITL)."""
    tokens_per_s: Summary | None
    decode_tokens_per_s: Summary | None
    output_tokens: Summary | None
    queue: Summary | None
    """Waiting for a free slot under ``Rate(max_concurrency=...)``."""
    lag: Summary | None
    """The client's own scheduling delay: from due (and a free slot) to sent."""
    loop_lag: Summary | None
    """How late the event loop woke a 10 ms timer while the level ran."""
    loop_cpu: float
    """CPU time of the event-loop thread / the level's duration (1.0 = one core, saturated)."""
    paint_lag: Summary | None
    """Modelled: how long a chunk waits for a UI repaint at the configured frame rate."""
    merging: ChunkMerging
    goodput: Goodput | None

    @property
    def client_saturated(self) -> bool:
        """Whether the client itself may have slowed the numbers down."""
        late = self.loop_lag is not None and self.loop_lag.p99 > 0.005
        return self.loop_cpu > 0.8 or late


def summarize_level(
    requests: Sequence[RequestResult],
    duration_s: float,
    *,
    targets: Targets | None = None,
    ui_rate: float = 20.0,
    loop_lags: Sequence[float] = (),
    loop_cpu_s: float = 0.0,
) -> LevelSummary:
    """Every number of one level, from its requests and the client's own measurements."""
    ok = [r for r in requests if r.ok]
    errors = Counter(r.error_kind or "error" for r in requests if not r.ok)
    timings = [r.timings for r in ok]
    tokens = sum(t.output_tokens for t in timings)
    paints: list[float] = []
    for t in timings:
        paints.extend(paint_lags(t.chunk_offsets_s, t.duration_s, ui_rate))
    span = duration_s if duration_s > 0 else math.inf
    return LevelSummary(
        sent=len(requests),
        completed=len(ok),
        errors=dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        duration_s=duration_s,
        request_throughput=len(ok) / span,
        output_throughput=tokens / span,
        token_sources=dict(Counter(t.token_source for t in timings)),
        ttft=summarize(t.ttft_s for t in timings),
        ttfo=summarize(t.ttfo_s for t in timings),
        headers=summarize(t.headers_s for t in timings),
        e2e=summarize(t.e2e_s for t in timings),
        tpot=summarize(t.tpot_s for t in timings),
        itl=summarize(g for t in timings for g in t.itl_s),
        tokens_per_s=summarize(t.tokens_per_s for t in timings),
        decode_tokens_per_s=summarize(t.decode_tokens_per_s for t in timings),
        output_tokens=summarize(t.output_tokens for t in timings),
        queue=summarize(r.queue_s for r in requests),
        lag=summarize(r.lag_s for r in requests),
        loop_lag=summarize(loop_lags),
        loop_cpu=loop_cpu_s / duration_s if duration_s > 0 else 0.0,
        paint_lag=summarize(paints),
        merging=chunk_merging(ok),
        goodput=goodput(requests, targets, duration_s) if targets is not None else None,
    )
