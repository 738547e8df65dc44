"""``streamchat bench``: latency under load, written as a table, JSON, CSV and plots."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, StreamchatError
from ..options import RetryPolicy, Timeouts
from ..providers.base import Provider

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` and its flags."""
    bench = commands.add_parser(
        "bench",
        help="measure TTFT, TPOT, ITL and throughput under load (embedded model by default)",
        description="Measure streamed latency under load: TTFT, TPOT, ITL, throughput, goodput, per chunk. "
        "Ctrl-C stops the run and still writes what was measured.",
    )
    bench.set_defaults(run=run)
    load = bench.add_argument_group("load (per level: --requests or --duration, whichever comes first)")
    how = load.add_mutually_exclusive_group()
    how.add_argument("--concurrency", metavar="LIST", help="concurrent users per level, e.g. 1,4,16,64 (default 1)")
    how.add_argument("--rate", metavar="LIST", help="Poisson arrivals, requests per second, e.g. 1,4,inf")
    load.add_argument("--max-concurrency", type=int, metavar="N", help="with --rate: at most N in flight")
    load.add_argument("--ramp", type=float, default=0.0, metavar="S",
                      help="with --concurrency: spread the users' first requests over S seconds (default 0)")
    load.add_argument("--requests", type=int, metavar="N", help="requests per level (default 16)")
    load.add_argument("--duration", type=float, metavar="S", help="seconds per level")
    load.add_argument("--warmup", type=int, metavar="N",
                      help="requests sent at once before each level, not measured, at most one per concurrent user; "
                      "the run's very first must succeed (default 1; with --calibrate, one per user)")
    load.add_argument("--seed", type=int, default=0, help="seeds Poisson arrivals and synthetic prompts (default 0)")
    ask = bench.add_argument_group("prompts and requests")
    ask.add_argument("--prompts", metavar="FILE", help=".txt (one per line), .jsonl or .json; default: a built-in set of 16")
    ask.add_argument("--synthetic", type=int, metavar="TOKENS", help="random-word prompts of about TOKENS tokens each")
    ask.add_argument("--synthetic-count", type=int, default=16, metavar="N", help="how many synthetic prompts (default 16)")
    ask.add_argument("--max-tokens", type=int, default=128, help="the longest answer, in tokens (default 128)")
    ask.add_argument("--temperature", type=float)
    ask.add_argument("--extra-body", metavar="JSON", help='sent as the request\'s extra_body, e.g. \'{"ignore_eos": true}\'')
    ask.add_argument("--tokenizer", choices=("none", "local"), default="none",
                     help="count tokens with the embedded model's tokenizer when the server reports no usage "
                     "(SmolLM2's vocabulary: approximate for other models)")
    where = bench.add_argument_group("provider (default: the embedded SmolLM2-135M-Instruct)")
    where.add_argument("--base-url", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    where.add_argument("--model", help="the model name on that server")
    where.add_argument("--api-key", help="the key (default: $OPENAI_API_KEY); never printed or saved")
    where.add_argument("--client", choices=("lean", "sdk"), default="lean",
                       help="with --base-url: streamchat's lean HTTP client (default: light enough for hundreds of "
                       "streams) or the openai SDK, as streamchat's chat apps use it")
    where.add_argument("--model-path", help="a .gguf file for the embedded runner")
    where.add_argument("--scripted", action="store_true", help="a scripted stand-in with known timing")
    where.add_argument("--ttft", type=float, default=0.2, help="scripted: seconds to the first token (default 0.2)")
    where.add_argument("--tokens-per-s", type=float, default=50.0, help="scripted: tokens a second (default 50)")
    where.add_argument("--jitter", type=float, default=0.0, help="scripted: ±share of each gap, random (default 0)")
    where.add_argument("--chunk-tokens", type=int, default=1, help="scripted: tokens per chunk (default 1)")
    look = bench.add_argument_group("analysis")
    look.add_argument("--goodput", nargs="+", metavar="NAME:MS", help="targets, vLLM style: ttft:500 tpot:50 e2e:3000")
    look.add_argument("--compare-blocking", type=int, default=0, metavar="N",
                      help="also send N prompts without streaming, one at a time, to compare")
    look.add_argument("--ui-rate", type=float, default=20.0, metavar="FPS",
                      help="frame rate of the UI whose paint lag is modelled (default 20)")
    check = bench.add_argument_group("calibration")
    check.add_argument("--calibrate", action="store_true",
                       help="measure a scripted source with known timing (--ttft, --tokens-per-s) and say how far off the "
                       "measurement is; default levels 1,64, each for 4 answers per user or 5 s")
    check.add_argument("--calibrate-tokens", type=int, default=32, metavar="N", help="tokens per answer (default 32)")
    check.add_argument("--http", action="store_true", help="calibrate through a loopback HTTP server in another process")
    out = bench.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="write DIR/bench.json, DIR/bench.csv and DIR/plots/*.png")
    out.add_argument("--json", metavar="FILE", help="everything, per chunk")
    out.add_argument("--csv", metavar="FILE", help="one row per request")
    out.add_argument("--plots", metavar="DIR", help="PNG plots")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    limits = bench.add_argument_group("time limits, in seconds")
    limits.add_argument("--connect-timeout", type=float, default=10.0)
    limits.add_argument("--first-token-timeout", type=float, default=60.0)
    limits.add_argument("--idle-timeout", type=float, default=30.0)
    limits.add_argument("--total-timeout", type=float, default=600.0)
    limits.add_argument("--retries", type=int, default=0, help="retries before the first token (default 0: a retry hides in TTFT)")


def _provider(args: argparse.Namespace, width: int) -> Provider:
    chosen = [name for name in ("base_url", "scripted", "model_path") if getattr(args, name)]
    if len(chosen) > 1:
        raise ConfigError("choose one of --base-url, --scripted, --model-path")
    if args.base_url:
        if not args.model:
            raise ConfigError("--model is required with --base-url (the name the server lists at /v1/models)")
        if args.client == "lean":
            from ..bench.lean_http import LeanHTTPProvider

            return LeanHTTPProvider(args.model, base_url=args.base_url, api_key=args.api_key)
        from ..bench.wire import PooledOpenAIProvider

        return PooledOpenAIProvider(args.model, base_url=args.base_url, api_key=args.api_key, connections=width)
    if args.scripted:
        from ..providers.scripted import ScriptedProvider

        return ScriptedProvider(ttft=args.ttft, tokens_per_s=args.tokens_per_s, jitter=args.jitter,
                                chunk_tokens=args.chunk_tokens)
    from ..providers.local import LocalProvider

    return LocalProvider(args.model_path)


def _tokenizer(args: argparse.Namespace, provider: Provider) -> Any:
    """The local tokenizer asked for, or None."""
    if args.tokenizer != "local":
        return None
    from ..providers.local import LocalProvider

    if isinstance(provider, LocalProvider):
        return provider.count_tokens

    def vocab_only(**kwargs: Any) -> Any:
        from llama_cpp import Llama

        return Llama(**kwargs, vocab_only=True)

    return LocalProvider(args.model_path, lazy=True, model_factory=vocab_only).count_tokens


def _loads(args: argparse.Namespace) -> tuple[Any, ...]:
    from ..bench import parse_loads

    if args.rate:
        if args.ramp:
            raise ConfigError("--ramp goes with --concurrency (Poisson arrivals are already spread out)")
        return parse_loads(args.rate, rate=True, max_concurrency=args.max_concurrency)
    if args.max_concurrency is not None:
        raise ConfigError("--max-concurrency goes with --rate")
    return parse_loads(args.concurrency or ("1,64" if args.calibrate else "1"), ramp_s=args.ramp)


def _width(loads: tuple[Any, ...], requests: int | None) -> int:
    """The most streams that can be open at once: the HTTP pool must hold them all."""
    from ..bench import Concurrency

    return max(load.n if isinstance(load, Concurrency) else (load.max_concurrency or requests or 100) for load in loads)


def _config(args: argparse.Namespace, loads: tuple[Any, ...], provider: Provider, count: Any) -> Any:
    from ..bench import BenchConfig, Targets, load_prompts, synthetic_prompts
    from ..providers.local import LocalProvider

    if args.prompts and args.synthetic:
        raise ConfigError("choose one of --prompts and --synthetic")
    extra: dict[str, Any] = {}
    if args.extra_body:
        try:
            body = json.loads(args.extra_body)
        except ValueError:
            raise ConfigError(f"--extra-body is not JSON: {args.extra_body[:60]!r}") from None
        if not isinstance(body, dict):
            raise ConfigError("--extra-body must be a JSON object")
        extra["extra_body"] = body
    kwargs: dict[str, Any] = {}
    if args.prompts:
        kwargs["prompts"] = load_prompts(args.prompts)
    elif args.synthetic is not None:
        exact = count or (provider.count_tokens if isinstance(provider, LocalProvider) else None)
        kwargs["prompts"] = synthetic_prompts(args.synthetic_count, args.synthetic, seed=args.seed, count_tokens=exact)
    requests, duration = _requests(args), args.duration
    if args.calibrate and args.requests is None and args.duration is None:
        # Enough answers for a p99 at every level, without waiting minutes at concurrency 1.
        requests, duration = 4 * _width(loads, None), 5.0
    return BenchConfig(
        loads=loads,
        requests=requests,
        duration_s=duration,
        warmup=args.warmup if args.warmup is not None else (_width(loads, _requests(args)) if args.calibrate else 1),
        max_tokens=None if args.calibrate else args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        targets=Targets.parse(args.goodput) if args.goodput else None,
        compare_blocking=args.compare_blocking,
        ui_rate=args.ui_rate,
        timeouts=Timeouts(args.connect_timeout, args.first_token_timeout, args.idle_timeout, args.total_timeout),
        retry=RetryPolicy(max_retries=args.retries),
        extra=extra,
        **kwargs,
    )


def _requests(args: argparse.Namespace) -> int | None:
    if args.requests is not None:
        return int(args.requests)
    return None if args.duration is not None else 16


def _outputs(args: argparse.Namespace) -> tuple[Path | None, Path | None, Path | None]:
    base = Path(args.out) if args.out else None
    json_path = Path(args.json) if args.json else (base / "bench.json" if base else None)
    csv_path = Path(args.csv) if args.csv else (base / "bench.csv" if base else None)
    plots = Path(args.plots) if args.plots else (base / "plots" if base else None)
    for path in (json_path, csv_path):
        if path is not None and path.is_dir():
            raise ConfigError(f"{path} is a directory: give a file name")
    return json_path, csv_path, plots


def _measure(args: argparse.Namespace) -> Any:
    """Build the provider and the run from the flags, and run it."""
    from ..bench import BenchRun
    from ..bench.blocking import OpenAIBlocking
    from ..bench.lean_http import LeanHTTPProvider
    from ..bench.report import ProgressPrinter
    from ..bench.wire import PooledOpenAIProvider, ScriptedServer
    from ..providers.scripted import ScriptedProvider

    loads = _loads(args)
    width = _width(loads, _requests(args))
    with contextlib.ExitStack() as stack:
        provider: Provider
        if args.calibrate:
            if args.base_url or args.model_path or args.scripted:
                raise ConfigError("--calibrate measures its own scripted source: leave out --base-url, --model-path, --scripted")
            if not args.tokens_per_s > 0 or args.ttft < 0 or args.calibrate_tokens < 2:
                raise ConfigError("--calibrate needs --tokens-per-s > 0, --ttft >= 0 and --calibrate-tokens >= 2")
            if args.http:
                if args.jitter:
                    raise ConfigError("the HTTP calibration server has no jitter: leave out --jitter with --http")
                server = stack.enter_context(ScriptedServer(args.calibrate_tokens, args.ttft, 1.0 / args.tokens_per_s))
                provider = (LeanHTTPProvider("scripted", base_url=server.url) if args.client == "lean"
                            else PooledOpenAIProvider("scripted", base_url=server.url, connections=width))
            else:
                provider = ScriptedProvider(" tok" * args.calibrate_tokens, ttft=args.ttft,
                                            tokens_per_s=args.tokens_per_s, jitter=args.jitter)
        else:
            provider = _provider(args, width)
        count = _tokenizer(args, provider)
        config = _config(args, loads, provider, count)
        blocking = None
        if args.base_url and config.compare_blocking and args.client == "sdk":
            blocking = OpenAIBlocking(args.base_url, args.api_key, args.model)
        printer = None if args.no_progress else ProgressPrinter(sys.stderr)
        return BenchRun(provider, config, tokenizer=count, blocking=blocking, on_progress=printer).run()


def run(args: argparse.Namespace) -> int:
    """Run ``bench``; returns the exit status."""
    from ..bench import BenchError, calibration_of

    try:
        json_path, csv_path, plots = _outputs(args)
        result = _measure(args)
    except BenchError as exc:
        print(f"streamchat: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except StreamchatError as exc:
        print(f"streamchat: error: {exc}", file=sys.stderr)
        return EXIT_ERROR if hasattr(exc, "retryable") else EXIT_USAGE
    except KeyboardInterrupt:
        print("streamchat: interrupted before anything was measured", file=sys.stderr)
        return EXIT_INTERRUPTED

    print(result.table())
    status = EXIT_OK
    if args.calibrate:
        calibration = calibration_of(result, ttft_s=args.ttft, tokens_per_s=args.tokens_per_s,
                                     tokens=args.calibrate_tokens, jitter=args.jitter,
                                     transport="http" if args.http else "in-process")
        print(calibration.report())
        status = EXIT_OK if calibration.ok else EXIT_ERROR
    try:
        written = _write(result, json_path, csv_path, plots)
    except KeyboardInterrupt:
        print("streamchat: interrupted while writing the results", file=sys.stderr)
        return EXIT_INTERRUPTED
    if written:
        print("written: " + ", ".join(str(p) for p in written), file=sys.stderr)
    elif not result.interrupted:
        print("(add --out DIR to save JSON per chunk, CSV per request and PNG plots)", file=sys.stderr)
    if result.interrupted:
        measured = sum(len(level.requests) for level in result.levels)
        print(f"streamchat: interrupted: {measured} request{'' if measured == 1 else 's'} measured" + (" and saved" if written else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    failed = [level.load.label for level in result.levels if level.summary.completed == 0]
    if failed:
        print(f"streamchat: error: no request completed at {', '.join(failed)}", file=sys.stderr)
        return EXIT_ERROR
    return status


def _write(result: Any, json_path: Path | None, csv_path: Path | None, plots: Path | None) -> list[Path]:
    written = []
    if json_path is not None:
        written.append(result.write_json(json_path))
    if csv_path is not None:
        written.append(result.write_csv(csv_path))
    if plots is not None:
        try:
            written.extend(result.plot(plots))
        except ConfigError as exc:
            print(f"streamchat: no plots: {exc}", file=sys.stderr)
    return written
