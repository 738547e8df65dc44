"""What a run measured: per chunk, per request, per load level, and the whole run.

All frozen. Times of a request are seconds from its level's start
(``due_s``, ``sent_s``) or from its own request start (``Timings``, chunks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .._events import FinishReason
from ..timing import Timings
from .blocking import BlockingComparison
from .config import BenchConfig
from .load import Load
from .stats import LevelSummary

ChunkTokens = Literal["one_per_chunk", "split_by_characters", "split_by_tokenizer"]
"""How a request's token count was shared among its chunks:

- ``one_per_chunk``: the count *is* the chunk count (``token_source == "chunks"``);
- ``split_by_characters``: the server's (or model's) total, shared in proportion to each chunk's characters;
- ``split_by_tokenizer``: the total shared in proportion to a local tokenizer's count of each chunk.

Either way the per-request total and so the mean tokens per chunk are exact
for their source; the split of a total among chunks is an estimate.
"""


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One output chunk: when it arrived (since the request), its tokens, its characters."""

    offset_s: float
    tokens: int
    chars: int


@dataclass(frozen=True, slots=True)
class RequestResult:
    """One measured request."""

    index: int
    prompt_index: int
    due_s: float
    """When the load said to send it, since the level's start."""
    queue_s: float
    """Waiting for a free slot (``Rate(max_concurrency=...)``); 0 otherwise."""
    lag_s: float
    """The client's own scheduling delay: due and slotted, but not yet sent."""
    timings: Timings
    chunks: tuple[ChunkRecord, ...]
    chunk_tokens: ChunkTokens
    finish_reason: FinishReason
    error_kind: str | None = None
    """The exception's class (``ConnectError``, ``StreamTimeout`` …), or ``cancelled``."""
    error: str | None = None
    """Its message, with secrets removed."""
    prompt_tokens: int | None = None
    text: str = ""
    """The answer's text as received: all of it, or what arrived before a failure or a stop."""

    @property
    def ok(self) -> bool:
        """Completed: it ended with stop, length, tool_calls or content_filter."""
        return self.finish_reason not in ("error", "cancelled")

    @property
    def sent_s(self) -> float:
        """When it was sent, since the level's start."""
        return self.due_s + self.queue_s + self.lag_s

    @property
    def end_s(self) -> float:
        """When it ended, since the level's start."""
        t = self.timings
        return self.sent_s + (t.duration_s if t.duration_s is not None else (t.e2e_s or 0.0))


@dataclass(frozen=True, slots=True)
class LevelResult:
    """One load level: its requests and their summary."""

    load: Load
    requests: tuple[RequestResult, ...]
    summary: LevelSummary
    warmup: int
    """Warm-up requests sent before measuring (not in ``requests``)."""
    interrupted: bool = False


@dataclass(frozen=True, slots=True)
class BenchResult:
    """A whole run. ``interrupted`` when it was stopped early: what was measured is kept."""

    provider: str
    model: str
    config: BenchConfig
    levels: tuple[LevelResult, ...]
    started: str
    """Local time the run started, ISO 8601."""
    blocking: BlockingComparison | None = None
    interrupted: bool = False

    def table(self) -> str:
        """The terminal report."""
        from .report import format_report

        return format_report(self)

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Everything, per chunk."""
        from .report import write_json

        return write_json(self, path)

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """One row per request."""
        from .report import write_csv

        return write_csv(self, path)

    def plot(self, directory: str | os.PathLike[str]) -> list[Path]:
        """PNG plots into ``directory`` (needs matplotlib); returns their paths."""
        from .plots import write_plots

        return write_plots(self, directory)
