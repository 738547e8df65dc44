"""PNG plots of a run, drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend).

- ``latency_vs_load.png``: TTFT and TPOT (p50, p90, p99) and output throughput per load level;
- ``gaps.png``: the distribution of inter-chunk gaps per level, and tokens per chunk;
- ``timeline.png``: when each request was due, sent, got its first token and its chunks.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .results import BenchResult, LevelResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TIMELINE_REQUESTS = 40
"""Requests drawn per level in the timeline (the first ones sent)."""


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'streamchat[bench]'") from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def write_plots(result: BenchResult, directory: str | os.PathLike[str]) -> list[Path]:
    """Draw every plot into ``directory``; returns the files written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    drawn = [(latency_vs_load(result), "latency_vs_load.png"), (gaps(result), "gaps.png"), (timeline(result), "timeline.png")]
    paths = []
    for figure, name in drawn:
        path = out / name
        figure.savefig(path, format="png")
        paths.append(path)
    return paths


def _title(result: BenchResult) -> str:
    return f"{result.provider}:{result.model}" + (" (interrupted)" if result.interrupted else "")


def latency_vs_load(result: BenchResult) -> Figure:
    """TTFT and TPOT percentiles, and output throughput, against the load levels."""
    fig = _figure(12, 4)
    fig.suptitle(f"Latency against load · {_title(result)}")
    levels = result.levels
    xs = list(range(len(levels)))
    labels = [level.load.label for level in levels]
    panels = fig.subplots(1, 3)
    for ax, name, title in ((panels[0], "ttft", "TTFT (ms)"), (panels[1], "tpot", "TPOT (ms)")):
        for stat, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
            ys = [_ms(getattr(level.summary, name), stat) for level in levels]
            ax.plot(xs, ys, style, label=stat)
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.legend()
    panels[2].bar(xs, [level.summary.output_throughput for level in levels], color="tab:green")
    panels[2].set_title("output tokens/s (all requests)")
    for ax in panels:
        ax.set_xticks(xs, labels)
        ax.set_xlabel("load")
        ax.grid(True, alpha=0.3)
    return fig


def _ms(summary: Any, stat: str) -> float:
    return math.nan if summary is None else float(getattr(summary, stat)) * 1e3


def gaps(result: BenchResult) -> Figure:
    """Inter-chunk gaps (ITL) per level, with TPOT p50 marked; tokens per chunk per level."""
    fig = _figure(12, 4)
    fig.suptitle(f"Gaps between chunks, and tokens per chunk · {_title(result)}")
    left, right = fig.subplots(1, 2)
    pooled = {level.load.label: [g * 1e3 for r in level.requests if r.ok for g in r.timings.itl_s] for level in result.levels}
    positive = [g for gs in pooled.values() for g in gs if g > 0]
    if positive:
        lo, hi = max(min(positive), 1e-3), max(positive)
        edges = [lo * (hi / lo) ** (k / 60) for k in range(61)] if hi > lo else [lo * 0.5, lo * 1.5]
        for k, (label, values) in enumerate(pooled.items()):
            color = f"C{k % 10}"
            left.hist([max(v, lo) for v in values], bins=edges, histtype="step", label=label, color=color)
            tpot = next(level.summary.tpot for level in result.levels if level.load.label == label)
            if tpot is not None:
                left.axvline(tpot.p50 * 1e3, color=color, linestyle=":", linewidth=1)
        left.set_xscale("log")
        left.legend(title="load (dotted: TPOT p50)")
    else:
        left.text(0.5, 0.5, "no gaps (no completed request with two chunks)", ha="center", transform=left.transAxes)
    left.set_xlabel("gap between consecutive chunks (ms, log scale)")
    left.set_ylabel("chunks")
    width = 0.8 / max(1, len(result.levels))
    for k, level in enumerate(result.levels):
        hist = level.summary.merging.histogram
        total = sum(n for _, n in hist) or 1
        right.bar([t + (k - (len(result.levels) - 1) / 2) * width for t, _ in hist], [n / total for _, n in hist],
                  width=width, label=level.load.label, color=f"C{k % 10}")
    sources = sorted({s for level in result.levels for s in level.summary.token_sources})
    right.set_xticks(sorted({t for level in result.levels for t, _ in level.summary.merging.histogram}))
    right.set_xlabel(f"tokens in a chunk (counts from: {', '.join(sources) or '—'})")
    right.set_ylabel("share of chunks")
    if result.levels:
        right.legend(title="load")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    return fig


def timeline(result: BenchResult) -> Figure:
    """One panel per level: each request's wait to be sent, its time to first token and its chunks."""
    levels = result.levels or ()
    fig = _figure(12, max(3.0, 2.6 * len(levels)))
    fig.suptitle(f"Token arrivals · {_title(result)} · first {TIMELINE_REQUESTS} requests of each level\n"
                 "red: due but not yet sent (queue and client delay) · grey: waiting for the first token · ticks: chunks")
    axes = fig.subplots(max(1, len(levels)), 1, squeeze=False)[:, 0]
    for ax, level in zip(axes, levels, strict=False):
        _timeline_panel(ax, level)
    axes[-1].set_xlabel("seconds since the level started")
    return fig


def _timeline_panel(ax: Any, level: LevelResult) -> None:
    shown = sorted(level.requests, key=lambda r: r.sent_s)[:TIMELINE_REQUESTS]
    for row, r in enumerate(shown):
        sent = r.sent_s
        if r.sent_s > r.due_s:
            ax.plot([r.due_s, sent], [row, row], color="tab:red", linewidth=2, solid_capstyle="butt")
        ttft = r.timings.ttft_s
        if ttft is not None:
            ax.plot([sent, sent + ttft], [row, row], color="0.75", linewidth=2, solid_capstyle="butt")
        ax.plot([sent, r.end_s], [row, row], color="0.85", linewidth=0.8)
        if r.chunks:
            ax.scatter([sent + c.offset_s for c in r.chunks], [row] * len(r.chunks),
                       s=[4 + 4 * min(c.tokens, 8) for c in r.chunks], color="tab:blue" if r.ok else "tab:orange",
                       marker="|", linewidths=1)
    ax.set_ylabel(f"{level.load.label}\nrequest")
    ax.invert_yaxis()
    ax.grid(True, axis="x", alpha=0.3)
