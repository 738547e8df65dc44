"""How load is applied: a closed loop of N concurrent users, or Poisson arrivals at a rate.

A level ends when its number of requests has been sent or its duration has
passed (whichever comes first); requests already sent are always finished.
The drivers only decide *when* to send; ``send`` does the work and measures.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import re
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..options import Clock


@dataclass(frozen=True, slots=True)
class Concurrency:
    """``n`` users, each sending its next request as soon as its last answer ended (llmperf, vLLM ``--max-concurrency``).

    ``ramp_s`` spreads the users' first requests evenly over that many
    seconds, so that ``n`` equal answers do not start, and end, all together.
    """

    n: int
    ramp_s: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"concurrency must be a whole number of at least 1, not {self.n!r}")
        if not self.ramp_s >= 0:
            raise ConfigError(f"the ramp-up must be 0 or more seconds, not {self.ramp_s}")

    @property
    def label(self) -> str:
        return f"c={self.n}"

    @property
    def x(self) -> float:
        """The load as one number, for plots."""
        return float(self.n)


@dataclass(frozen=True, slots=True)
class Rate:
    """Requests arriving at ``per_s`` a second on average, with exponential gaps (Poisson, vLLM's default).

    ``per_s=math.inf`` sends every request at once. ``max_concurrency`` caps
    how many are in flight; the wait for a slot is reported as queueing.
    """

    per_s: float
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.per_s, (int, float)) or math.isnan(self.per_s) or self.per_s <= 0:
            raise ConfigError(f"rate must be a positive number of requests per second, not {self.per_s:g}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be at least 1, not {self.max_concurrency}")

    @property
    def label(self) -> str:
        rate = "inf" if math.isinf(self.per_s) else f"{self.per_s:g}"
        cap = f" (≤{self.max_concurrency})" if self.max_concurrency else ""
        return f"{rate}/s{cap}"

    @property
    def x(self) -> float:
        return self.per_s


Load = Concurrency | Rate

_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+|inf)\s*$", re.IGNORECASE)


def parse_loads(
    text: str, *, rate: bool = False, max_concurrency: int | None = None, ramp_s: float = 0.0
) -> tuple[Load, ...]:
    """``"1,4,16,64"`` as concurrency levels, or as rates with ``rate=True`` (``inf`` allowed)."""
    loads: list[Load] = []
    for part in text.split(","):
        if not part.strip():
            continue
        if not _NUMBER.match(part):
            what = "rates (requests per second)" if rate else "concurrency levels"
            raise ConfigError(f"bad load {part.strip()!r}: give {what} separated by commas, e.g. 1,4,16")
        value = float(part)
        if rate:
            loads.append(Rate(value, max_concurrency))
        elif math.isinf(value) or value != int(value):
            raise ConfigError(f"concurrency must be a whole number of at least 1, not {part.strip()}")
        else:
            loads.append(Concurrency(int(value), ramp_s))
    if not loads:
        raise ConfigError("no load given: e.g. --concurrency 1,4,16 or --rate 2,8")
    return tuple(loads)


def arrivals(per_s: float, rng: random.Random) -> Iterator[float]:
    """Seconds after the start at which requests arrive: a Poisson process (all at 0 for ``inf``)."""
    t = 0.0
    while True:
        yield t
        if not math.isinf(per_s):
            t += rng.expovariate(per_s)


Send = Callable[[int, int, asyncio.Semaphore | None], Coroutine[Any, Any, None]]
"""``send(index, due_ns, slot)``: send request ``index``, due at ``due_ns``; it acquires ``slot`` if given."""


async def drive(
    load: Load,
    send: Send,
    clock: Clock,
    *,
    start_ns: int,
    requests: int | None,
    duration_s: float | None,
    seed: int | None = 0,
) -> None:
    """Apply ``load`` from ``start_ns`` until the count or the duration is reached; wait for every request."""
    end_ns = start_ns + int(duration_s * 1e9) if duration_s is not None else None
    counter = itertools.count()

    def more(i: int, at_ns: int) -> bool:
        if requests is not None and i >= requests:
            return False
        return end_ns is None or at_ns < end_ns

    async with asyncio.TaskGroup() as group:
        if isinstance(load, Concurrency):

            async def user(k: int) -> None:
                due = start_ns + int(load.ramp_s * 1e9 * k / load.n)
                wait = (due - clock.now_ns()) * 1e-9
                if wait > 0:
                    await clock.asleep(wait)
                while more(i := next(counter), due):
                    await send(i, due, None)
                    due = clock.now_ns()

            for k in range(load.n):
                group.create_task(user(k))
        else:
            slot = asyncio.Semaphore(load.max_concurrency) if load.max_concurrency else None
            for i, offset in zip(counter, arrivals(load.per_s, random.Random(seed)), strict=False):
                due = start_ns + int(offset * 1e9)
                if not more(i, due):
                    break
                wait = (due - clock.now_ns()) * 1e-9
                if wait > 0:
                    await clock.asleep(wait)
                group.create_task(send(i, due, slot))
