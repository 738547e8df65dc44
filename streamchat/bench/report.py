"""Showing and saving results: the terminal table, a progress bar, JSON (per chunk), CSV (per request)."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from .._coalesce import Coalescer
from .blocking import BlockingComparison
from .config import _load_dict
from .load import Load
from .results import BenchResult, LevelResult, RequestResult
from .runner import Progress
from .stats import ChunkMerging, Goodput, LevelSummary, Summary, percentile

FORMAT = "streamchat-bench/1"

# -- the terminal --------------------------------------------------------------------


def _ms(s: Summary | None, stat: str) -> str:
    return "—" if s is None else f"{getattr(s, stat) * 1e3:.1f}"


def _s(s: Summary | None, stat: str) -> str:
    return "—" if s is None else f"{getattr(s, stat):.2f}"


_COLUMNS = (
    ("load", 12), ("sent", 5), ("ok", 5), ("err", 4), ("req/s", 7), ("out tok/s", 9),
    ("TTFT p50", 9), ("p90", 7), ("p99", 7), ("TPOT p50", 9), ("p99", 7), ("ITL p50", 8), ("p99", 7),
    ("E2E p50", 8), ("tok/chunk", 9), ("goodput", 13),
)


def _row(level: LevelResult) -> list[str]:
    s = level.summary
    per_chunk = s.merging.tokens_per_chunk
    good = s.goodput
    label = level.load.label + ("*" if level.interrupted else "")
    return [
        label, str(s.sent), str(s.completed), str(s.sent - s.completed),
        f"{s.request_throughput:.2f}", f"{s.output_throughput:.1f}",
        _ms(s.ttft, "p50"), _ms(s.ttft, "p90"), _ms(s.ttft, "p99"),
        _ms(s.tpot, "p50"), _ms(s.tpot, "p99"), _ms(s.itl, "p50"), _ms(s.itl, "p99"),
        _s(s.e2e, "p50"),
        "—" if per_chunk is None else f"{per_chunk:.2f}",
        "—" if good is None else f"{good.per_s:.2f}/s {good.share:.0%}",
    ]


def format_report(result: BenchResult) -> str:
    """The whole report as text: a table (ms unless said), then what to know about each level."""
    config = result.config
    sources = sorted({p.source for p in config.prompts})
    head = (f"streamchat bench · {result.provider}:{result.model} · {len(config.prompts)} {'/'.join(sources)} prompts · "
            f"max_tokens {config.max_tokens or '—'} · {result.started}")
    lines = [head]
    if config.targets is not None:
        lines.append(f"goodput targets: {config.targets.label()}")
    lines.append("  ".join(f"{name:>{width}}" for name, width in _COLUMNS))
    for level in result.levels:
        lines.append("  ".join(f"{cell:>{width}}" for cell, (_, width) in zip(_row(level), _COLUMNS, strict=True)))
    lines.append("times in ms except E2E (s); ITL is per chunk, TPOT per token; latencies over completed requests")
    for level in result.levels:
        lines.extend(f"{level.load.label}: {note}" for note in level_notes(level, config.ui_rate))
    if result.blocking is not None:
        lines.append(result.blocking.sentence())
    if result.interrupted:
        lines.append("* interrupted: the table holds what was measured before the stop")
    return "\n".join(lines)


def level_notes(level: LevelResult, ui_rate: float) -> list[str]:
    """What a person should know about one level, beyond the table."""
    s = level.summary
    out = [_token_note(s)]
    out.extend(s.merging.notes())
    if s.errors:
        kinds = ", ".join(f"{kind} ×{n}" for kind, n in s.errors.items())
        first = next((r.error for r in level.requests if r.error), None)
        out.append(f"{s.sent - s.completed} not completed: {kinds}" + (f" (first: {first})" if first else ""))
    client = [f"scheduling delay p50 {_ms(s.lag, 'p50')} / p99 {_ms(s.lag, 'p99')} ms",
              f"event-loop timer lag p99 {_ms(s.loop_lag, 'p99')} ms", f"event-loop CPU {s.loop_cpu:.0%} of a core"]
    if s.queue is not None and s.queue.max > 0:
        client.insert(0, f"waited for a slot p50 {_ms(s.queue, 'p50')} / p99 {_ms(s.queue, 'p99')} ms")
    out.append("client: " + " · ".join(client))
    if s.client_saturated:
        out.append("warning: the client itself is busy (event loop late or near a full core): "
                   "latencies include its own delay; use fewer concurrent streams per process")
    if s.paint_lag is not None and ui_rate > 0:
        out.append(f"on screen (modelled, a UI repainting at most {ui_rate:g} times a second): a chunk waits "
                   f"p50 {_ms(s.paint_lag, 'p50')} / p99 {_ms(s.paint_lag, 'p99')} ms for its repaint")
    return out


def _token_note(s: LevelSummary) -> str:
    if not s.token_sources:
        return "no completed request"
    names = {"server": "server usage", "tokenizer": "local tokenizer", "chunks": "one per chunk (a lower bound)"}
    parts = [f"{names.get(k, k)} ×{n}" for k, n in sorted(s.token_sources.items())]
    return "token counts: " + ", ".join(parts)


class ProgressPrinter:
    """A progress line on a terminal, repainted at most ``rate`` times a second and always at the end of a level.

    Off a terminal (or with ``bar=False``) it prints one line per finished level.
    """

    def __init__(self, out: TextIO | None = None, *, rate: float = 10.0, bar: bool | None = None) -> None:
        self.out = out if out is not None else sys.stderr
        self.bar = self.out.isatty() if bar is None else bar
        self._gate = Coalescer(rate)
        self._ttfts: list[float] = []
        self._stage: tuple[int, str] = (-1, "")

    def __call__(self, p: Progress) -> None:
        stage = (p.level_index, "warmup" if p.phase == "warmup" else "measure")
        if stage != self._stage:
            self._stage = stage
            self._ttfts = []
        if p.phase == "measure" and p.ttft_s is not None:
            self._ttfts.append(p.ttft_s)
        if p.phase == "level_done":
            self.out.write(("\r\x1b[2K" if self.bar else "") + self.line(p) + "\n")
            self.out.flush()
        elif self.bar and self._gate.offer(time.perf_counter_ns()):
            self.out.write("\r\x1b[2K" + self.line(p))
            self.out.flush()

    def line(self, p: Progress) -> str:
        """One line: level, a bar, counts, the running TTFT median, elapsed time."""
        where = f"{p.level} [{p.level_index + 1}/{p.levels}]"
        if p.phase == "warmup":
            return f"{where} warming up {p.done}/{p.total}"
        share = None
        if p.total:
            share = p.done / p.total
        if p.limit_s:
            share = max(share or 0.0, min(1.0, p.elapsed_s / p.limit_s))
        bar = "" if share is None else "█" * round(20 * share) + "░" * (20 - round(20 * share)) + " "
        count = f"{p.done}/{p.total}" if p.total else f"{p.done}"
        errors = f" · {p.errors} error{'s' if p.errors != 1 else ''}" if p.errors else ""
        ttft = ""
        if self._ttfts:
            ttft = f" · TTFT p50 {percentile(sorted(self._ttfts), 50) * 1e3:.0f} ms"
        done = " done" if p.phase == "level_done" else ""
        return f"{where} {bar}{count}{errors}{ttft} · {p.elapsed_s:.1f} s{done}"


# -- JSON ---------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _summary_dict(s: Summary | None) -> dict[str, float] | None:
    return None if s is None else s.as_dict()


def _merging_dict(m: ChunkMerging) -> dict[str, Any]:
    return {
        "counted": m.counted, "tokens_per_chunk": m.tokens_per_chunk,
        "histogram": [{"tokens": k, "chunks": n} for k, n in m.histogram],
        "multi_token_share": m.multi_token_share, "burst_share": m.burst_share,
        "merged": m.merged, "bursty": m.bursty, "unstreamed": m.unstreamed, "notes": list(m.notes()),
    }


def _goodput_dict(g: Goodput | None) -> dict[str, Any] | None:
    if g is None:
        return None
    t = g.targets
    return {"targets": {"ttft_s": t.ttft_s, "tpot_s": t.tpot_s, "e2e_s": t.e2e_s}, "good": g.good, "share": g.share, "per_s": g.per_s}


_SUMMARIES = ("ttft", "ttfo", "headers", "e2e", "tpot", "itl", "tokens_per_s", "decode_tokens_per_s",
              "output_tokens", "queue", "lag", "loop_lag", "paint_lag")


def summary_dict(s: LevelSummary) -> dict[str, Any]:
    """A level's summary as JSON values."""
    return {
        "sent": s.sent, "completed": s.completed, "errors": dict(s.errors), "duration_s": s.duration_s,
        "request_throughput": s.request_throughput, "output_throughput": s.output_throughput,
        "token_sources": dict(s.token_sources),
        **{name: _summary_dict(getattr(s, name)) for name in _SUMMARIES},
        "loop_cpu": s.loop_cpu, "client_saturated": s.client_saturated,
        "merging": _merging_dict(s.merging), "goodput": _goodput_dict(s.goodput),
    }


def request_dict(r: RequestResult) -> dict[str, Any]:
    """One request, every chunk included (columns: arrival in s since the request, tokens, characters)."""
    return {
        "index": r.index, "prompt_index": r.prompt_index,
        "due_s": r.due_s, "queue_s": r.queue_s, "lag_s": r.lag_s, "sent_s": r.sent_s,
        **r.timings.as_dict(),
        "finish_reason": r.finish_reason, "error_kind": r.error_kind, "error": r.error,
        "prompt_tokens": r.prompt_tokens, "chunk_tokens": r.chunk_tokens, "text": r.text,
        "chunks": {"t_s": [c.offset_s for c in r.chunks], "tokens": [c.tokens for c in r.chunks],
                   "chars": [c.chars for c in r.chunks]},
    }


def _blocking_dict(b: BlockingComparison) -> dict[str, Any]:
    return {
        "sentence": b.sentence(),
        "streamed_ttft": _summary_dict(b.streamed_ttft), "streamed_total": _summary_dict(b.streamed_total),
        "blocking_total": _summary_dict(b.blocking_total), "extra_total": _summary_dict(b.extra_total),
        "ttft_saving": _summary_dict(b.ttft_saving),
        "pairs": [{
            "prompt_index": p.prompt_index,
            "streamed": None if p.streamed is None else p.streamed.as_dict(),
            "blocking_s": p.blocking_s, "blocking_tokens": p.blocking_tokens, "error": p.error,
        } for p in b.pairs],
    }


def _version() -> str | None:
    try:
        return metadata.version("streamchat")
    except metadata.PackageNotFoundError:
        return None


def to_json(result: BenchResult) -> dict[str, Any]:
    """Everything a run measured, as JSON values."""
    config = result.config
    data: dict[str, Any] = _clean({
        "format": FORMAT,
        "streamchat": _version(),
        "started": result.started,
        "provider": result.provider,
        "model": result.model,
        "interrupted": result.interrupted,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": config.as_dict(),
        "prompts": [{"index": i, "source": p.source, "tokens": p.tokens, "tokens_exact": p.tokens_exact,
                     "messages": [m.to_dict() for m in p.messages]} for i, p in enumerate(config.prompts)],
        "levels": [{
            "load": _load_dict(level.load), "warmup": level.warmup, "interrupted": level.interrupted,
            "notes": level_notes(level, config.ui_rate),
            "summary": summary_dict(level.summary),
            "requests": [request_dict(r) for r in level.requests],
        } for level in result.levels],
        "blocking": None if result.blocking is None else _blocking_dict(result.blocking),
    })
    return data


def write_json(result: BenchResult, path: str | os.PathLike[str]) -> Path:
    """Write :func:`to_json` to ``path`` (strict JSON: no NaN)."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(to_json(result), ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    return file


# -- CSV ----------------------------------------------------------------------------------

CSV_COLUMNS = (
    "level", "concurrency", "rate_per_s", "index", "prompt_index", "due_s", "queue_s", "lag_s", "sent_s",
    "headers_s", "ttft_s", "ttfo_s", "e2e_s", "duration_s", "output_tokens", "token_source", "output_chunks",
    "tpot_s", "tokens_per_s", "decode_tokens_per_s", "itl_p50_s", "itl_max_s", "max_tokens_per_chunk",
    "chunk_tokens", "attempts", "prompt_tokens", "finish_reason", "error_kind", "error",
)


def _load_cells(load: Load) -> tuple[Any, Any]:
    d = _load_dict(load)
    return d.get("concurrency"), d.get("per_s")


def csv_rows(result: BenchResult) -> Iterable[dict[str, Any]]:
    """One row per measured request, in :data:`CSV_COLUMNS`."""
    for level in result.levels:
        concurrency, rate = _load_cells(level.load)
        for r in level.requests:
            itl = sorted(r.timings.itl_s)
            yield {
                "level": level.load.label, "concurrency": concurrency, "rate_per_s": rate,
                **{k: v for k, v in request_dict(r).items() if k in CSV_COLUMNS},
                "itl_p50_s": percentile(itl, 50) if itl else None,
                "itl_max_s": itl[-1] if itl else None,
                "max_tokens_per_chunk": max((c.tokens for c in r.chunks), default=None),
            }


def write_csv(result: BenchResult, path: str | os.PathLike[str]) -> Path:
    """Write :func:`csv_rows` to ``path``."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in csv_rows(result):
            writer.writerow(row)
    return file
