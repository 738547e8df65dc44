"""Latency metrics, named and defined as vLLM's ``bench serve`` does.

All times are consumer-receipt times on a monotonic clock, measured from the
moment streamchat sent the request (retries included: that is what a user waits).

- ``ttft_s``: time to the first content token (text or tool call); a role-only
  or empty first chunk does not count. ``ttfo_s``: first output of any kind,
  reasoning included.
- ``e2e_s``: time to the last output chunk. ``duration_s``: time until the
  stream ended (usage chunk and ``[DONE]`` included).
- ``itl_s``: the gap between consecutive output chunks (vLLM's ITL; a chunk may
  carry several tokens). ``chunk_gaps_s``: the gap before every output chunk,
  the first measured from the request.
- ``tpot_s`` = (e2e − TTFT) / (output tokens − 1): time per output token after
  the first. ``decode_tokens_per_s`` = 1 / TPOT. ``tokens_per_s`` = output
  tokens / e2e (llmperf's per-request throughput).
- ``output_tokens`` comes from ``token_source``: ``server`` (usage), ``tokenizer``
  (counted locally) or ``chunks`` (one per output chunk: a lower bound when
  a server or proxy merges tokens into chunks).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from ._events import FinishReason, TokenSource

_NS = 1e-9


@dataclass(frozen=True, slots=True)
class Timings:
    """What one stream took; every duration is in seconds."""

    request_start_ns: int
    headers_s: float | None
    ttft_s: float | None
    ttfo_s: float | None
    e2e_s: float | None
    duration_s: float | None
    output_tokens: int
    token_source: TokenSource
    chunk_offsets_s: tuple[float, ...]
    """Arrival of every output chunk, measured from the request start."""
    attempts: int = 1

    @property
    def output_chunks(self) -> int:
        """How many chunks carried output."""
        return len(self.chunk_offsets_s)

    @property
    def chunk_gaps_s(self) -> tuple[float, ...]:
        """The gap before every output chunk; the first is measured from the request."""
        offsets = self.chunk_offsets_s
        return tuple(b - a for a, b in zip((0.0, *offsets), offsets, strict=False))

    @property
    def itl_s(self) -> tuple[float, ...]:
        """Gaps between consecutive output chunks (vLLM's inter-token latency)."""
        offsets = self.chunk_offsets_s
        return tuple(b - a for a, b in pairwise(offsets))

    @property
    def tpot_s(self) -> float | None:
        """(e2e − TTFT) / (output tokens − 1); None with fewer than two tokens."""
        if self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def decode_tokens_per_s(self) -> float | None:
        """1 / TPOT: the generation speed once the first token is out."""
        tpot = self.tpot_s
        return 1.0 / tpot if tpot else None

    @property
    def tokens_per_s(self) -> float | None:
        """Output tokens / e2e: per-request throughput, TTFT included."""
        if not self.e2e_s or not self.output_tokens:
            return None
        return self.output_tokens / self.e2e_s

    def summary(self, finish_reason: FinishReason | None = None) -> str:
        """One line for people: ``TTFT 0.21 s · 42 tokens · 130.5 tok/s · stop``."""
        parts = ["TTFT " + (f"{self.ttft_s:.2f} s" if self.ttft_s is not None else "—")]
        approx = "" if self.token_source != "chunks" else "~"
        parts.append(f"{approx}{self.output_tokens} tokens")
        speed = self.decode_tokens_per_s
        if speed is not None:
            parts.append(f"{speed:.1f} tok/s")
        if self.e2e_s is not None:
            parts.append(f"{self.e2e_s:.2f} s")
        if self.attempts > 1:
            parts.append(f"{self.attempts} attempts")
        if finish_reason:
            parts.append(finish_reason)
        return " · ".join(parts)

    def as_dict(self) -> dict[str, object]:
        """The flat metrics, for JSON lines and tables."""
        return {
            "ttft_s": self.ttft_s,
            "ttfo_s": self.ttfo_s,
            "headers_s": self.headers_s,
            "e2e_s": self.e2e_s,
            "duration_s": self.duration_s,
            "output_tokens": self.output_tokens,
            "token_source": self.token_source,
            "output_chunks": self.output_chunks,
            "tpot_s": self.tpot_s,
            "tokens_per_s": self.tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "attempts": self.attempts,
        }


def seconds(start_ns: int, end_ns: int | None) -> float | None:
    """``end − start`` in seconds, or None when ``end`` has not happened."""
    return None if end_ns is None else (end_ns - start_ns) * _NS
