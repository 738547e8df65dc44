"""What the fault proxy injects, and when: pure values and rules, no I/O.

A spec is written the same way in a config file, on the command line and in
the per-request header ``X-Streamchat-Fault``::

    stall_after=3,stall_s=10
    status=429,retry_after=2
    disconnect_after=5;every=3          # every third request
    malformed_after=2;probability=0.5;seed=1
    stall                               # a drill's name from the failure matrix

Comma-separated settings say what happens; after a ``;`` come the schedule
settings (``every``, ``probability``, ``seed``, ``times``).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, fields

from ..errors import ConfigError


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One fault, or several at once (a delay and a stall, say)."""

    headers_delay_s: float = 0.0
    """Wait before sending the response headers."""
    ttft_delay_s: float = 0.0
    """Wait before the first content chunk."""
    tokens_per_s: float = 0.0
    """Throttle: at most this many chunks a second (0: as fast as upstream)."""
    status: int = 0
    """Answer with this HTTP status instead (429, 500, 503 …), without asking upstream."""
    retry_after: float | None = None
    disconnect_after: int = -1
    """Cut the connection after this many chunks (no terminating chunk)."""
    stall_after: int = -1
    """Stop sending after this many chunks, for ``stall_s`` seconds."""
    stall_s: float = 3600.0
    malformed_after: int = -1
    """Send a chunk that is not JSON after this many chunks."""
    error_after: int = -1
    """Send an ``error`` payload after this many chunks, then end."""
    message: str = "injected by streamchat faults"

    @property
    def touches_body(self) -> bool:
        return any(n >= 0 for n in (self.disconnect_after, self.stall_after, self.malformed_after, self.error_after))

    def describe(self) -> str:
        """The settings that differ from 'no fault', as written in a spec."""
        default = FaultSpec()
        parts = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)]
        return ",".join(parts) or "none"


@dataclass(frozen=True, slots=True)
class Schedule:
    """Which requests a fault hits: every Nth, with a probability, at most ``times``."""

    every: int = 1
    probability: float = 1.0
    seed: int | None = None
    times: int | None = None


_NAMES = {f.name: f.type for f in fields(FaultSpec)}
_ALIASES = {"headers_delay": "headers_delay_s", "ttft_delay": "ttft_delay_s", "tps": "tokens_per_s", "stall": "stall_s"}


def parse(text: str) -> tuple[FaultSpec, Schedule]:
    """Read a spec such as ``stall_after=3,stall_s=10;every=2``; a clear error names the bad part."""
    what, _, when = text.partition(";")
    if what.strip() and "=" not in what and "," not in what:
        what, when = _named(what.strip(), when)
    spec: dict[str, object] = {}
    for name, value in _pairs(what):
        name = _ALIASES.get(name, name)
        kind = _NAMES.get(name)
        if kind is None:
            raise ConfigError(f"unknown fault setting {name!r}: use one of {', '.join(sorted(_NAMES))}")
        spec[name] = _convert(name, value, str(kind))
    schedule: dict[str, object] = {}
    for name, value in _pairs(when):
        if name not in ("every", "probability", "seed", "times"):
            raise ConfigError(f"unknown schedule setting {name!r}: use every, probability, seed or times")
        schedule[name] = _convert(name, value, "float" if name == "probability" else "int")
    try:
        result = FaultSpec(**spec), Schedule(**schedule)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(f"bad fault spec {text!r}: {exc}") from None
    if result[1].every < 1 or not 0 <= result[1].probability <= 1:
        raise ConfigError(f"bad schedule in {text!r}: every >= 1 and 0 <= probability <= 1")
    return result


def _named(name: str, when: str) -> tuple[str, str]:
    """A drill's name from the failure matrix stands for its spec (``stall``, ``disconnect`` …)."""
    from .matrix import DRILLS

    drill = next((d for d in DRILLS if d.name == name), None)
    if drill is None:
        if _ALIASES.get(name, name) in _NAMES:
            return name, when  # _pairs explains that a setting needs a value
        names = ", ".join(d.name for d in DRILLS if d.spec)
        raise ConfigError(f"unknown fault {name!r}: write setting=value pairs, or a drill's name: {names}")
    if not drill.spec:
        raise ConfigError(f"the {name!r} drill is not a proxy fault: {drill.how.strip('()')}")
    what, _, own = drill.spec.partition(";")
    return what, when or own


def _pairs(text: str) -> list[tuple[str, str]]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        if not eq:
            raise ConfigError(f"fault setting {part!r} needs a value, like {part}=1")
        out.append((name.strip(), value.strip()))
    return out


def _convert(name: str, value: str, kind: str) -> object:
    try:
        if "int" in kind and "float" not in kind:
            return int(value)
        if "float" in kind:
            return float(value)
    except ValueError:
        raise ConfigError(f"fault setting {name}={value!r} is not a number") from None
    return value


class Injector:
    """Decides, request by request, which fault applies; thread-safe, seeded, counted."""

    def __init__(self, spec: FaultSpec, schedule: Schedule = Schedule()) -> None:
        self.spec = spec
        self.schedule = schedule
        self._rng = random.Random(schedule.seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.injected = 0

    def next(self) -> FaultSpec | None:
        """The fault for the next request, or None to pass it through untouched."""
        with self._lock:
            self.requests += 1
            s = self.schedule
            if (self.requests - 1) % s.every:
                return None
            if s.times is not None and self.injected >= s.times:
                return None
            if s.probability < 1 and self._rng.random() >= s.probability:
                return None
            self.injected += 1
            return self.spec
