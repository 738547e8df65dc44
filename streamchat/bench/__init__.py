"""``streamchat bench``: TTFT, inter-token latency, TPOT and throughput under load.

The headline numbers are those of vLLM's ``bench serve``, llmperf and
GenAI-Perf, with the same definitions (see ``docs/bench.md``); then what they
do not give: where each token count comes from, whether chunks were merged,
the client's own overhead, a calibration against known timing, a modelled
paint lag, and streamed versus blocking on the same prompts.

    from streamchat.bench import BenchConfig, Concurrency, run_bench
    result = run_bench(provider, BenchConfig(loads=(Concurrency(1), Concurrency(8)), requests=32))
    print(result.table())
    result.write_json("bench.json"); result.write_csv("bench.csv"); result.plot("plots/")

Nothing here imports matplotlib until a plot is drawn.
"""

from __future__ import annotations

from .blocking import BlockingComparison, BlockingPair, OpenAIBlocking
from .calibrate import Calibration, CalibrationLevel, calibrate, calibration_of
from .config import BenchConfig
from .lean_http import LeanHTTPProvider
from .load import Concurrency, Load, Rate, parse_loads
from .prompts import BenchPrompt, builtin_prompts, load_prompts, synthetic_prompts
from .results import BenchResult, ChunkRecord, LevelResult, RequestResult
from .runner import BenchError, BenchRun, Progress, arun_bench, run_bench
from .stats import ChunkMerging, Goodput, LevelSummary, Summary, Targets
from .wire import PooledOpenAIProvider, ScriptedServer

__all__ = [
    "BenchConfig",
    "BenchError",
    "BenchPrompt",
    "BenchResult",
    "BenchRun",
    "BlockingComparison",
    "BlockingPair",
    "Calibration",
    "CalibrationLevel",
    "ChunkMerging",
    "ChunkRecord",
    "Concurrency",
    "Goodput",
    "LeanHTTPProvider",
    "LevelResult",
    "LevelSummary",
    "Load",
    "OpenAIBlocking",
    "PooledOpenAIProvider",
    "Progress",
    "Rate",
    "RequestResult",
    "ScriptedServer",
    "Summary",
    "Targets",
    "arun_bench",
    "builtin_prompts",
    "calibrate",
    "calibration_of",
    "load_prompts",
    "parse_loads",
    "run_bench",
    "synthetic_prompts",
]
