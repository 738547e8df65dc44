"""Streams' timings as pandas tables: one row per request, per chunk, or per metric.

Every function takes ``runs``: finished streams (or their :class:`Timings`),
either as one list or as a mapping from a label ("local", "hosted" …) to a list,
which is how two providers are compared side by side.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from .._stream import AsyncStream, Stream
from ..errors import ConfigError
from ..timing import Timings

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]

Run: TypeAlias = Stream | AsyncStream | Timings
Runs: TypeAlias = Iterable[Run] | Mapping[str, Iterable[Run]]

SUMMARY_METRICS = ("ttft_s", "itl_s", "tpot_s", "e2e_s", "tokens_per_s", "decode_tokens_per_s")
"""What :func:`summary_table` describes by default; ``itl_s`` pools every inter-chunk gap, as vLLM does."""


@dataclass(frozen=True, slots=True)
class Measured:
    """One request's timings with what is known about it."""

    label: str
    request: int
    timings: Timings
    finish_reason: str | None
    provider: str | None
    model: str | None


def measured(runs: Runs, label: str = "") -> list[Measured]:
    """``runs`` flattened to one :class:`Measured` per request; a clear error for anything else."""
    if isinstance(runs, (Stream, AsyncStream, Timings)):
        runs = [runs]
    groups: list[tuple[str, Iterable[Run]]] = (
        [(str(k), v) for k, v in runs.items()] if isinstance(runs, Mapping) else [(label, runs)]
    )
    out: list[Measured] = []
    for name, items in groups:
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise ConfigError(f"runs for {name!r} must be a list of streams or Timings, not {type(items).__name__}")
        for i, item in enumerate(items):
            if isinstance(item, Timings):
                out.append(Measured(name, i, item, None, None, None))
            elif isinstance(item, (Stream, AsyncStream)):
                if item.finish_reason is None:
                    raise ConfigError(f"request {i} of {name or 'runs'!r} has not finished: read it to the end first")
                out.append(Measured(name, i, item.timings, item.finish_reason, item.provider.name, item.request.model))
            else:
                raise ConfigError(f"request {i} of {name or 'runs'!r}: expected a Stream, AsyncStream or Timings, not {type(item).__name__}")
    return out


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def timings_table(runs: Runs, *, label: str = "") -> pd.DataFrame:
    """One row per request: every metric of :class:`Timings`, plus the inter-chunk gaps' p50/p90/max."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for m in measured(runs, label):
        t = m.timings
        itl = t.itl_s
        rows.append(
            {
                "label": m.label,
                "request": m.request,
                "provider": m.provider,
                "model": m.model,
                "finish_reason": m.finish_reason,
                **t.as_dict(),
                "itl_p50_s": _quantile(itl, 0.5),
                "itl_p90_s": _quantile(itl, 0.9),
                "itl_max_s": max(itl) if itl else None,
            }
        )
    table = pd.DataFrame(rows)
    if rows and not any(r["label"] for r in rows):
        table = table.drop(columns="label")
    return table


def arrivals_table(runs: Runs, *, label: str = "") -> pd.DataFrame:
    """One row per output chunk: when it arrived after its request, and the gap before it."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for m in measured(runs, label):
        offsets = m.timings.chunk_offsets_s
        gaps = m.timings.chunk_gaps_s
        for i, (t, gap) in enumerate(zip(offsets, gaps, strict=True)):
            rows.append({"label": m.label, "request": m.request, "chunk": i, "t_s": t, "gap_s": gap})
    return pd.DataFrame(rows, columns=["label", "request", "chunk", "t_s", "gap_s"])


def summary_table(
    runs: Runs,
    *,
    metrics: Sequence[str] = SUMMARY_METRICS,
    percentiles: Sequence[float] = (0.5, 0.9, 0.99),
    label: str = "",
) -> pd.DataFrame:
    """Per label and metric: n, mean, the percentiles, min and max (seconds or tokens/s)."""
    import pandas as pd

    known = {*Timings.__dataclass_fields__, "itl_s", "tpot_s", "tokens_per_s", "decode_tokens_per_s", "chunk_gaps_s"}
    unknown = [name for name in metrics if name not in known]
    if unknown:
        raise ConfigError(f"unknown metric {unknown[0]!r}; choose from {', '.join(sorted(known))}")
    if any(not 0 <= q <= 1 for q in percentiles):
        raise ConfigError("percentiles are fractions between 0 and 1, e.g. (0.5, 0.9, 0.99)")
    values: dict[tuple[str, str], list[float]] = {}
    for m in measured(runs, label):
        for name in metrics:
            value = getattr(m.timings, name)
            bucket = values.setdefault((m.label, name), [])
            if isinstance(value, tuple):
                bucket.extend(value)
            elif isinstance(value, (int, float)):
                bucket.append(float(value))
    rows = []
    for (group, name), xs in values.items():
        row: dict[str, Any] = {"label": group, "metric": name, "n": len(xs), "mean": sum(xs) / len(xs) if xs else None}
        for q in percentiles:
            row[f"p{q * 100:g}"] = _quantile(xs, q)
        row["min"] = min(xs) if xs else None
        row["max"] = max(xs) if xs else None
        rows.append(row)
    table = pd.DataFrame(rows)
    if rows and not any(r["label"] for r in rows):
        return table.drop(columns="label").set_index("metric")
    return table.set_index(["label", "metric"]) if rows else table
