"""What a benchmark run does: loads, stop rule, prompts, request parameters, targets."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..options import RetryPolicy, Timeouts
from .load import Concurrency, Load, Rate
from .prompts import BenchPrompt, builtin_prompts
from .stats import Targets

NO_RETRY = RetryPolicy(max_retries=0)


@dataclass(frozen=True)
class BenchConfig:
    """Everything about a run except the provider; checked when made.

    ``requests`` and ``duration_s`` are per load level; a level stops at
    whichever comes first (at least one must be given). Retries are off by
    default: a retried request's TTFT includes the failed attempts.
    """

    loads: tuple[Load, ...] = (Concurrency(1),)
    requests: int | None = 16
    duration_s: float | None = None
    warmup: int = 1
    """Requests sent at once before each level and discarded, at most one per concurrent user.

    The run's first request goes alone before them and must succeed."""
    prompts: tuple[BenchPrompt, ...] = field(default_factory=builtin_prompts)
    max_tokens: int | None = 128
    temperature: float | None = None
    seed: int | None = 0
    """Seeds the Poisson arrivals (and is sent with each request when ``send_seed``)."""
    send_seed: bool = False
    targets: Targets | None = None
    compare_blocking: int = 0
    """How many prompts to also send without streaming, one at a time, after the sweep."""
    ui_rate: float = 20.0
    """The frame rate of the UI whose paint lag is modelled (streamchat's default)."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = NO_RETRY
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Passed with every request (e.g. ``{"extra_body": {"ignore_eos": True}}`` for vLLM)."""

    def __post_init__(self) -> None:
        loads: Any = self.loads
        # A single level, or a list, is accepted too: stored as a tuple.
        object.__setattr__(self, "loads", (loads,) if isinstance(loads, (Concurrency, Rate)) else tuple(loads))
        if not self.loads:
            raise ConfigError("give at least one load level, e.g. Concurrency(1)")
        if self.requests is None and self.duration_s is None:
            raise ConfigError("give a number of requests or a duration for each level")
        if self.requests is None and any(isinstance(x, Rate) and math.isinf(x.per_s) for x in self.loads):
            raise ConfigError("an infinite rate sends everything at once: give a number of requests")
        if self.requests is not None and (isinstance(self.requests, bool) or self.requests < 1):
            raise ConfigError(f"the number of requests must be at least 1, not {self.requests}")
        if self.duration_s is not None and not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            raise ConfigError(f"the duration must be a positive number of seconds, not {self.duration_s}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be 0 or more requests, not {self.warmup}")
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if not self.prompts:
            raise ConfigError("the prompt set is empty")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, not {self.max_tokens}")
        if self.compare_blocking < 0:
            raise ConfigError(f"compare_blocking must be 0 or more prompts, not {self.compare_blocking}")
        if self.ui_rate < 0:
            raise ConfigError(f"ui_rate must be 0 (paint every chunk) or more frames per second, not {self.ui_rate}")

    def params(self) -> dict[str, Any]:
        """Keyword arguments for :func:`streamchat.astream`."""
        out: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature, "extra": dict(self.extra)}
        if self.send_seed and self.seed is not None:
            out["seed"] = self.seed
        return out

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (prompts are listed separately)."""
        return {
            "loads": [_load_dict(load) for load in self.loads],
            "requests": self.requests,
            "duration_s": self.duration_s,
            "warmup": self.warmup,
            "prompts": len(self.prompts),
            "prompt_source": sorted({p.source for p in self.prompts}),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "send_seed": self.send_seed,
            "targets": None if self.targets is None else {
                "ttft_s": self.targets.ttft_s, "tpot_s": self.targets.tpot_s, "e2e_s": self.targets.e2e_s},
            "compare_blocking": self.compare_blocking,
            "ui_rate": self.ui_rate,
            "timeouts": {"connect": self.timeouts.connect, "first_token": self.timeouts.first_token,
                         "idle": self.timeouts.idle, "total": self.timeouts.total},
            "retries": self.retry.max_retries,
            "extra": sorted(self.extra),
        }


def _load_dict(load: Load) -> dict[str, Any]:
    if isinstance(load, Concurrency):
        return {"kind": "concurrency", "concurrency": load.n, "ramp_s": load.ramp_s, "label": load.label}
    rate = None if math.isinf(load.per_s) else load.per_s
    return {"kind": "rate", "per_s": rate, "max_concurrency": load.max_concurrency, "label": load.label}
