"""streamchat's OpenAI provider vs the raw ``openai`` SDK stream, against one local server.

Goal: "against the same local server, streamchat's OpenAI provider costs at most 10%
more CPU per chunk than iterating the raw openai SDK stream, and adds under 1 ms to TTFT."

    python benchmarks/openai_overhead.py            # full run (about 1–2 minutes)
    python benchmarks/openai_overhead.py --quick    # smoke test (< 30 s)

Method
------
* One :class:`streamchat.testing.WireServer` runs in a separate *process*, so
  ``time.process_time_ns()`` in this process counts only client CPU (all client
  threads, e.g. streamchat's watchdog). Its replies are pre-encoded once: the
  bytes on the wire are exactly what ``text_reply`` produces.
* CPU per chunk: four variants, (A) raw SDK sync, (B) ``streamchat.stream``,
  (C) raw SDK async, (D) ``streamchat.astream``; each reads a whole reply and
  touches every content string. Rounds are interleaved (ABCD, then BADC, …) and
  the ratios B/A and D/C are taken *within* a round, then their median reported.
  Two workloads: ``burst`` (no gaps: the server writes as fast as it can, so reads
  may carry several chunks) and ``paced`` (1 ms between tokens: one chunk per read,
  as with a real model).
* TTFT: ``perf_counter_ns`` from just before the call (``create(...)`` /
  ``stream(...)``) to the first non-empty content. Pairs raw/streamchat alternate
  order. Two connection policies: ``keep-alive`` (each client pools as it does by
  itself) and ``fresh`` (the server answers ``Connection: close``, so both clients
  connect anew for every request: the same policy for both).
* Clients are created once, outside the timed region, and warmed up first.
  The server counts requests and TCP connections per variant (the request's
  ``model`` field carries the variant's tag) so connection reuse is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import multiprocessing as mp
import sys
import time
from collections.abc import Callable
from typing import Any

import _bench

PROMPT = "Tell me a story."
MESSAGES = [{"role": "user", "content": PROMPT}]
WORDS = [" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ".", " And", " then"]
PACKAGES = ("streamchat", "openai", "httpx2", "httpcore2", "h11", "pydantic", "pydantic_core", "anyio", "jiter")


# -- the server, in its own process ------------------------------------------------
def _prebake(reply: Any) -> Any:
    """Same bytes on the wire, but JSON-encoded once instead of per request."""
    from streamchat.testing.wire_server import raw

    le = reply.line_ending
    steps = []
    for step in reply.steps:
        if step.kind == "data":
            text = json.dumps(step.value, ensure_ascii=False, separators=(",", ":"))
            steps.append(raw(f"data: {text}{le}{le}".encode()))
        else:
            steps.append(step)
    return dataclasses.replace(reply, steps=tuple(steps))


def _server_main(conn: Any, cfg: dict[str, Any]) -> None:
    from streamchat.testing.wire_server import WireServer, text_reply

    def tokens(n: int) -> list[str]:
        return [WORDS[i % len(WORDS)] for i in range(n)]

    ttft = text_reply(tokens(cfg["ttft_tokens"]), ttft=cfg["ttft_s"])
    replies = {
        "burst": _prebake(text_reply(tokens(cfg["burst_tokens"]))),
        "paced": _prebake(text_reply(tokens(cfg["paced_tokens"]), gap=cfg["paced_gap_s"])),
        "ttft": _prebake(ttft),
        "ttftclose": _prebake(dataclasses.replace(ttft, headers=(("Connection", "close"),))),
    }

    def script(req: Any) -> Any:
        return replies[req.json()["model"].split(":")[0]]

    srv = WireServer(script).start()
    conn.send(srv.url)
    try:
        while True:
            cmd = conn.recv()
            if cmd == "stats":
                conn.send(_stats(srv))
            elif cmd == "stop":
                break
    finally:
        srv.stop()


def _stats(srv: Any) -> dict[str, dict[str, int]]:
    conn_of = {i: c for c, rec in enumerate(srv.connections) for i in rec.request_indexes}
    out: dict[str, dict[str, Any]] = {}
    for req in srv.requests:
        if not req.path.endswith("/chat/completions"):
            continue
        tag = req.json()["model"]
        entry = out.setdefault(tag, {"requests": 0, "connections": set()})
        entry["requests"] += 1
        entry["connections"].add(conn_of.get(req.index))
    return {k: {"requests": v["requests"], "connections": len(v["connections"])} for k, v in out.items()}


# -- the four clients ----------------------------------------------------------------
class Clients:
    """Everything created once, outside every timed region."""

    def __init__(self, url: str) -> None:
        import openai

        from streamchat.providers.openai import OpenAIProvider

        # Same settings for the raw clients as streamchat gives its own (no SDK retries).
        self.raw = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        self.araw = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0)
        self.provider = OpenAIProvider("test-model", base_url=url, api_key="none")


def _raw_kwargs(model: str) -> dict[str, Any]:
    # streamchat asks for usage by default; ask the same here so both requests match.
    return {"model": model, "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}


def read_raw_sync(c: Clients, model: str) -> int:
    n = 0
    for chunk in c.raw.chat.completions.create(**_raw_kwargs(model)):
        if chunk.choices:
            text = chunk.choices[0].delta.content
            if text:
                n += 1
    return n


def read_sc_sync(c: Clients, model: str) -> int:
    from streamchat import stream

    n = 0
    for event in stream(c.provider, PROMPT, model=model):
        if event.kind == "text":
            text = event.text
            if text:
                n += 1
    return n


async def read_raw_async(c: Clients, model: str) -> int:
    n = 0
    async for chunk in await c.araw.chat.completions.create(**_raw_kwargs(model)):
        if chunk.choices:
            text = chunk.choices[0].delta.content
            if text:
                n += 1
    return n


async def read_sc_async(c: Clients, model: str) -> int:
    from streamchat import astream

    n = 0
    async for event in astream(c.provider, PROMPT, model=model):
        if event.kind == "text":
            text = event.text
            if text:
                n += 1
    return n


def ttft_raw_sync(c: Clients, model: str) -> int:
    first = None
    t0 = time.perf_counter_ns()
    for chunk in c.raw.chat.completions.create(**_raw_kwargs(model)):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter_ns()
    assert first is not None
    return first - t0


def ttft_sc_sync(c: Clients, model: str) -> int:
    from streamchat import stream

    first = None
    t0 = time.perf_counter_ns()
    for event in stream(c.provider, PROMPT, model=model):
        if first is None and event.kind == "text" and event.text:
            first = time.perf_counter_ns()
    assert first is not None
    return first - t0


async def ttft_raw_async(c: Clients, model: str) -> int:
    first = None
    t0 = time.perf_counter_ns()
    async for chunk in await c.araw.chat.completions.create(**_raw_kwargs(model)):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter_ns()
    assert first is not None
    return first - t0


async def ttft_sc_async(c: Clients, model: str) -> int:
    from streamchat import astream

    first = None
    t0 = time.perf_counter_ns()
    async for event in astream(c.provider, PROMPT, model=model):
        if first is None and event.kind == "text" and event.text:
            first = time.perf_counter_ns()
    assert first is not None
    return first - t0


VARIANTS = {
    "A": ("raw SDK, sync", read_raw_sync, ttft_raw_sync, False),
    "B": ("streamchat, sync", read_sc_sync, ttft_sc_sync, False),
    "C": ("raw SDK, async", read_raw_async, ttft_raw_async, True),
    "D": ("streamchat, async", read_sc_async, ttft_sc_async, True),
}
PAIRS = (("B", "A"), ("D", "C"))  # (streamchat, raw)


class Runner:
    """Runs sync and async variants alike; one event loop for the whole run."""

    def __init__(self, clients: Clients) -> None:
        self.clients = clients
        self.loop = asyncio.Runner()

    def call(self, fn: Callable[..., Any], is_async: bool, model: str) -> Any:
        if is_async:
            return self.loop.run(fn(self.clients, model))
        return fn(self.clients, model)

    def cpu_sample(self, key: str, scenario: str, streams: int, expect: int) -> dict[str, float]:
        """CPU and wall time of ``streams`` whole replies; per content chunk."""
        _, fn, _, is_async = VARIANTS[key]
        gc.collect()
        model = f"{scenario}:{key}"
        if is_async:

            async def many() -> int:
                return sum([await fn(self.clients, model) for _ in range(streams)])

            c0, w0 = time.process_time_ns(), time.perf_counter_ns()
            chunks = self.loop.run(many())
        else:
            c0, w0 = time.process_time_ns(), time.perf_counter_ns()
            chunks = sum(fn(self.clients, model) for _ in range(streams))
        cpu, wall = time.process_time_ns() - c0, time.perf_counter_ns() - w0
        if chunks != expect * streams:
            raise RuntimeError(f"{key}: got {chunks} content chunks, expected {expect * streams}")
        return {"cpu_us_per_chunk": cpu / chunks / 1e3, "wall_us_per_chunk": wall / chunks / 1e3}

    def close(self) -> None:
        self.loop.close()


def _order(round_no: int) -> list[str]:
    return ["A", "B", "C", "D"] if round_no % 2 == 0 else ["B", "A", "D", "C"]


def run_cpu(r: Runner, scenario: str, rounds: int, streams: int, expect: int) -> dict[str, Any]:
    per_round: list[dict[str, Any]] = []
    for i in range(rounds):
        row: dict[str, Any] = {"order": "".join(_order(i))}
        for key in _order(i):
            row[key] = r.cpu_sample(key, scenario, streams, expect)
        for sc, raw in PAIRS:
            row[f"{sc}/{raw}"] = row[sc]["cpu_us_per_chunk"] / row[raw]["cpu_us_per_chunk"]
        per_round.append(row)
        print(
            f"  {scenario} round {i + 1}/{rounds}: "
            + "  ".join(f"{k} {row[k]['cpu_us_per_chunk']:.1f}" for k in "ABCD")
            + "  µs/chunk",
            file=sys.stderr,
        )
    out: dict[str, Any] = {"rounds": per_round}
    for key in VARIANTS:
        out[key] = _bench.summary(row[key]["cpu_us_per_chunk"] for row in per_round)
        out[key + "_wall"] = _bench.summary(row[key]["wall_us_per_chunk"] for row in per_round)
    for sc, raw in PAIRS:
        out[f"{sc}/{raw}"] = _bench.summary(row[f"{sc}/{raw}"] for row in per_round)
    return out


def run_ttft(r: Runner, scenario: str, pairs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sc, raw in PAIRS:
        samples: dict[str, list[float]] = {sc: [], raw: []}
        diffs: list[float] = []
        for i in range(pairs):
            got = {}
            for key in (raw, sc) if i % 2 == 0 else (sc, raw):
                _, _, fn, is_async = VARIANTS[key]
                gc.collect()
                got[key] = r.call(fn, is_async, f"{scenario}:{key}") / 1e6
                samples[key].append(got[key])
            diffs.append(got[sc] - got[raw])
        pair = f"{sc}-{raw}"
        out[pair] = {
            raw: _bench.summary(samples[raw]),
            sc: _bench.summary(samples[sc]),
            "diff": _bench.summary(diffs),
            "diff_of_medians": _bench.summary(samples[sc])["median"] - _bench.summary(samples[raw])["median"],
            "samples_ms": samples,
        }
        print(
            f"  TTFT {scenario} {pair}: median {raw} {out[pair][raw]['median']:.2f} ms, "
            f"{sc} {out[pair][sc]['median']:.2f} ms, paired diff {out[pair]['diff']['median']:+.3f} ms",
            file=sys.stderr,
        )
    return out


def warm_up(r: Runner, times: int) -> None:
    for key, (_, read, ttft, is_async) in VARIANTS.items():
        for _ in range(times):
            r.call(read, is_async, f"ttft:{key}:warm")
            r.call(ttft, is_async, f"ttftclose:{key}:warm")
            r.call(read, is_async, f"paced:{key}:warm")
            r.call(read, is_async, f"burst:{key}:warm")


# -- report ----------------------------------------------------------------------------
def _cpu_table(res: dict[str, Any]) -> str:
    rows = []
    for scenario, label in (("burst", "burst"), ("paced", "paced")):
        s = res["cpu"][scenario]
        for sc, raw in PAIRS:
            ratio = s[f"{sc}/{raw}"]
            for key in (raw, sc):
                is_sc = key == sc
                rows.append(
                    [
                        label,
                        f"{key}: {VARIANTS[key][0]}",
                        _bench.fmt(s[key]["median"]),
                        _bench.fmt_range(s[key]),
                        f"**{ratio['median']:.3f}** ({ratio['min']:.3f}–{ratio['max']:.3f})" if is_sc else "",
                    ]
                )
    return _bench.table(
        [
            "workload",
            "client",
            "CPU µs/chunk (median)",
            "min–max",
            "ratio streamchat/raw, median of per-round (min–max)",
        ],
        rows,
    )


def _ttft_table(res: dict[str, Any]) -> str:
    rows = []
    for scenario, label in (("ttft", "keep-alive"), ("ttftclose", "fresh")):
        t = res["ttft"][scenario]
        for sc, raw in PAIRS:
            d = t[f"{sc}-{raw}"]
            conns = res["connections"]
            for key in (raw, sc):
                st = conns.get(f"{scenario}:{key}", {})
                rows.append(
                    [
                        label,
                        f"{key}: {VARIANTS[key][0]}",
                        f"{d[key]['median']:.2f}",
                        f"{d[key]['p90']:.2f}",
                        _bench.fmt_range(d[key], 2),
                        f"{st.get('connections', '?')}/{st.get('requests', '?')}",
                        f"**{d['diff']['median']:+.3f}** (p90 {d['diff']['p90']:+.3f})" if key == sc else "",
                    ]
                )
    return _bench.table(
        [
            "connections",
            "client",
            "TTFT median ms",
            "p90 ms",
            "min–max ms",
            "TCP conns/requests",
            "streamchat − raw, median of paired diffs ms",
        ],
        rows,
    )


def _verdicts(res: dict[str, Any]) -> list[str]:
    lines = []
    for sc, raw in PAIRS:
        kind = "sync" if sc == "B" else "async"
        for scenario in ("burst", "paced"):
            ratio = res["cpu"][scenario][f"{sc}/{raw}"]["median"]
            ok = ratio <= 1.10
            lines.append(
                f"CPU/chunk {kind} {scenario}: {'MET' if ok else 'NOT MET'} — streamchat costs "
                f"{(ratio - 1) * 100:+.1f}% vs raw SDK (limit +10%)"
            )
        for scenario, label in (("ttft", "keep-alive"), ("ttftclose", "fresh")):
            d = res["ttft"][scenario][f"{sc}-{raw}"]["diff"]["median"]
            ok = d < 1.0
            lines.append(
                f"TTFT {kind} {label}: {'MET' if ok else 'NOT MET'} — streamchat adds {d:+.3f} ms "
                f"(median paired difference; limit < 1 ms)"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test, < 30 s")
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()

    quick = args.quick
    cfg = {
        "burst_tokens": 500 if quick else 2000,
        "paced_tokens": 100 if quick else 300,
        "paced_gap_s": 0.001,
        "ttft_tokens": 8,
        "ttft_s": 0.020,
        "rounds": args.rounds or (3 if quick else 11),
        "streams_per_sample_burst": 1 if quick else 3,
        "streams_per_sample_paced": 1,
        "ttft_pairs": 8 if quick else 30,
        "warmup_per_variant": 1 if quick else 3,
        "quick": quick,
    }
    machine = _bench.machine(PACKAGES)
    print(f"machine: {_bench.machine_line(machine)}", file=sys.stderr)

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_server_main, args=(child, cfg), name="wire-server", daemon=True)
    server.start()
    t_start = time.perf_counter()
    runner = None
    try:
        url = parent.recv()
        clients = Clients(url)
        runner = Runner(clients)
        warm_up(runner, cfg["warmup_per_variant"])
        res: dict[str, Any] = {"config": cfg, "machine": machine, "cpu": {}, "ttft": {}}
        res["cpu"]["burst"] = run_cpu(
            runner, "burst", cfg["rounds"], cfg["streams_per_sample_burst"], cfg["burst_tokens"]
        )
        res["cpu"]["paced"] = run_cpu(
            runner, "paced", cfg["rounds"], cfg["streams_per_sample_paced"], cfg["paced_tokens"]
        )
        res["ttft"]["ttft"] = run_ttft(runner, "ttft", cfg["ttft_pairs"])
        res["ttft"]["ttftclose"] = run_ttft(runner, "ttftclose", cfg["ttft_pairs"])
        parent.send("stats")
        res["connections"] = parent.recv()
    finally:
        if runner is not None:
            runner.close()
        try:
            parent.send("stop")
        except OSError:
            pass
        server.join(5)
        if server.is_alive():
            server.terminate()
    res["elapsed_s"] = time.perf_counter() - t_start
    res["verdicts"] = _verdicts(res)
    path = _bench.write_json("openai_overhead", res)

    print(f"## OpenAI provider overhead{' (quick)' if quick else ''}\n")
    print(f"Machine: {_bench.machine_line(machine)}\n")
    print(
        f"CPU per content chunk (client process only; server in another process). "
        f"burst = {cfg['burst_tokens']} tokens, no gaps, {cfg['streams_per_sample_burst']} stream(s) per sample; "
        f"paced = {cfg['paced_tokens']} tokens, {cfg['paced_gap_s'] * 1e3:g} ms apart; "
        f"{cfg['rounds']} interleaved rounds.\n"
    )
    print(_cpu_table(res) + "\n")
    print(
        f"TTFT: request to first content; server waits {cfg['ttft_s'] * 1e3:g} ms before the first token; "
        f"{cfg['ttft_pairs']} interleaved pairs per row pair.\n"
    )
    print(_ttft_table(res) + "\n")
    for line in res["verdicts"]:
        print(f"- {line}")
    if quick:
        print("- (--quick is a smoke test: too few rounds and tokens for these verdicts to mean anything)")
    print(f"\n(wrote {path.relative_to(_bench.REPO)}; {res['elapsed_s']:.1f} s)")


if __name__ == "__main__":
    main()
