"""Latency plots with matplotlib: TTFT, inter-token gaps, token arrivals, tokens/s.

Each function takes the same ``runs`` as :mod:`.tables` (a list of finished
streams, or a mapping from a label to such a list) and returns the
:class:`~matplotlib.figure.Figure`, which a notebook shows once, as a PNG.
Pass ``ax=`` to draw into an axes of your own instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .tables import Measured, Runs, _quantile, measured

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_MS = 1000.0


def _canvas(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.get_figure(root=True), ax  # type: ignore[return-value]
    import matplotlib.pyplot as plt

    fig, new = plt.subplots(figsize=size, layout="constrained")
    # Closed from pyplot at once: the caller owns it, and a notebook shows it once (as the cell's value).
    plt.close(fig)
    return fig, new


def _groups(runs: Runs) -> Iterator[tuple[str, list[Measured], str]]:
    found = measured(runs)
    if not found:
        raise ConfigError("nothing to plot: give at least one finished stream")
    labels = list(dict.fromkeys(m.label for m in found))
    for i, label in enumerate(labels):
        yield label, [m for m in found if m.label == label], f"C{i}"


def _name(label: str) -> str:
    return label or "requests"


def plot_ttft(runs: Runs, *, ax: Axes | None = None) -> Figure:
    """Time to first token of every request (dots) with each group's median (line)."""
    fig, ax = _canvas(ax, (6.0, 3.2))
    names = []
    for x, (label, group, color) in enumerate(_groups(runs)):
        ttfts = [m.timings.ttft_s * _MS for m in group if m.timings.ttft_s is not None]
        spread = [x + 0.25 * (((i * 0.618) % 1.0) - 0.5) for i in range(len(ttfts))]
        ax.scatter(spread, ttfts, color=color, alpha=0.75, s=28, zorder=3)
        median = _quantile(ttfts, 0.5)
        if median is not None:
            ax.hlines(median, x - 0.3, x + 0.3, color=color, linewidth=2.5)
            ax.annotate(f"p50 {median:.0f} ms", (x + 0.32, median), va="center", fontsize=9, color=color)
        names.append(f"{_name(label)}\n(n={len(ttfts)})")
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.6, len(names) - 0.1)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("TTFT (ms)")
    ax.set_title("Time to first token")
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_gaps(runs: Runs, *, ax: Axes | None = None, bins: int = 40) -> Figure:
    """The gaps between consecutive output chunks (ITL), pooled per group, with p50 and p99."""
    fig, ax = _canvas(ax, (6.0, 3.2))
    drawn = False
    for label, group, color in _groups(runs):
        gaps = [g * _MS for m in group for g in m.timings.itl_s]
        if not gaps:
            continue
        drawn = True
        ax.hist(gaps, bins=bins, color=color, alpha=0.55, label=f"{_name(label)} ({len(gaps)} gaps)")
        for q, style in ((0.5, "-"), (0.99, ":")):
            value = _quantile(gaps, q)
            if value is not None:
                ax.axvline(value, color=color, linestyle=style, linewidth=1.5)
                ax.annotate(f"p{q * 100:g} {value:.1f} ms", (value, 1), xycoords=("data", "axes fraction"),
                            rotation=90, va="top", ha="right", fontsize=8, color=color)
    if not drawn:
        ax.text(0.5, 0.5, "no request had two output chunks", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8)
    ax.set_xlabel("gap between output chunks (ms)")
    ax.set_ylabel("chunks")
    ax.set_title("Inter-token latency")
    return fig


def plot_timeline(runs: Runs, *, ax: Axes | None = None, limit: int = 12) -> Figure:
    """One row per request: the wait for the first token (bar), then each chunk's arrival (ticks)."""
    rows = [(label, m, color) for label, group, color in _groups(runs) for m in group[:limit]]
    fig, ax = _canvas(ax, (7.0, 0.8 + 0.32 * len(rows)))
    names = []
    for y, (label, m, color) in enumerate(rows):
        t = m.timings
        if t.ttft_s is not None:
            ax.barh(y, t.ttft_s, height=0.5, color=color, alpha=0.25)
        ax.scatter(t.chunk_offsets_s, [y] * len(t.chunk_offsets_s), marker="|", s=60, color=color, linewidths=1)
        names.append(f"{_name(label)} #{m.request}")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since the request (bar: waiting for the first token; ticks: chunks)")
    ax.set_title("Token arrival per request")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_tokens_per_s(runs: Runs, *, ax: Axes | None = None) -> Figure:
    """Per request: tokens/s over the whole request (TTFT included) and decode speed (after it)."""
    fig, ax = _canvas(ax, (7.0, 3.2))
    x = 0
    ticks: list[float] = []
    names: list[str] = []
    for label, group, color in _groups(runs):
        xs = list(range(x, x + len(group)))
        overall = [m.timings.tokens_per_s or 0.0 for m in group]
        decode = [m.timings.decode_tokens_per_s or 0.0 for m in group]
        ax.bar([v - 0.2 for v in xs], overall, width=0.4, color=color, alpha=0.45)
        ax.bar([v + 0.2 for v in xs], decode, width=0.4, color=color)
        ticks.append(sum(xs) / len(xs) if xs else x)
        names.append(_name(label))
        x += len(group) + 1
    ax.set_xticks(ticks, names)
    ax.set_ylabel("tokens / s")
    ax.set_title("Speed per request: light = tokens / e2e, dark = 1 / TPOT")
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_overview(runs: Runs) -> Figure:
    """The four plots above in one figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12.0, 7.0), layout="constrained")
    plt.close(fig)
    plot_ttft(runs, ax=axes[0][0])
    plot_gaps(runs, ax=axes[0][1])
    plot_timeline(runs, ax=axes[1][0], limit=6)
    plot_tokens_per_s(runs, ax=axes[1][1])
    return fig
