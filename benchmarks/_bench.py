"""Small helpers shared by the benchmark scripts: statistics, machine facts, output.

Not part of the library. Every script prints a Markdown table and writes the full
data (every round, not only the summary) to ``results/<name>.json`` at the repo root.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"


# -- statistics ----------------------------------------------------------------
def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default, 'inclusive')."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: Iterable[float]) -> dict[str, float]:
    """Median, p90, min, max and n of ``values``."""
    xs = list(values)
    return {
        "median": statistics.median(xs),
        "p90": quantile(xs, 0.9),
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


def fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def fmt_range(s: dict[str, float], digits: int = 1) -> str:
    return f"{fmt(s['min'], digits)}–{fmt(s['max'], digits)}"


# -- machine -------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git() -> dict[str, Any]:
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    import hashlib

    diff = subprocess.run(
        ["git", "diff", "HEAD", "--", "streamchat"], cwd=REPO, capture_output=True, check=False
    ).stdout
    untracked = run("ls-files", "--others", "--exclude-standard", "--", "streamchat")
    dirty = bool(diff or untracked)
    return {
        "commit": run("rev-parse", "--short", "HEAD"),
        "dirty": dirty,
        # Identifies the uncommitted state of streamchat/ the numbers were measured on.
        "diff_sha1": hashlib.sha1(
            diff + b"".join(n.encode() + (REPO / n).read_bytes() for n in untracked.split())
        ).hexdigest()[:10]
        if dirty
        else None,
        "untracked": untracked.split() if untracked else [],
    }


def machine(packages: Sequence[str]) -> dict[str, Any]:
    """Facts to print next to every result."""
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in packages},
        "git": _git(),
        "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def machine_line(m: dict[str, Any]) -> str:
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    git = m["git"]
    dirty = f" + uncommitted changes in streamchat/ (diff {git['diff_sha1']})" if git["dirty"] else ""
    return (
        f"{m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, {pk}; "
        f"git {git['commit']}{dirty}; load avg at start {m['loadavg_start'][0]:.2f}"
    )


# -- output --------------------------------------------------------------------
def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {**data, "loadavg_end": os.getloadavg(), "python_executable": sys.executable}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
