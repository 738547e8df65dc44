"""Many concurrent SSE streams through the relay vs reading the provider directly.

Goal: "500 concurrent SSE streams from the scripted provider through the relay on
two CPU cores: no errors, and p99 inter-token delay added by the relay under
10 ms compared with reading the provider directly; memory per open stream reported."

    python benchmarks/relay_load.py --rate 10 --workers 2   # full run (about 2 minutes)
    python benchmarks/relay_load.py --quick                 # smoke test (< 30 s)

Method
------
* The relay runs in its own process(es) (``--workers``: uvicorn processes
  sharing the port with SO_REUSEPORT, as ``uvicorn --workers`` would; the real
  app: anonymous on loopback, usage lines written to a file, limits that do
  not bind), serving a :class:`ScriptedProvider` that sends ``--tokens`` tokens
  at ``--rate`` tokens/s per stream after a 0.1 s TTFT, one token per chunk.
* The load client runs in another process: ``--streams`` concurrent
  ``GET /v1/events`` on one asyncio loop, each an ``asyncio.Protocol`` feeding
  streamchat's SSE decoder (a minimal client, so its own cost stays small),
  stamping each read with ``perf_counter_ns``. Streams start evenly over
  ``--ramp`` seconds (1 s), as a benchmark's request rate would, and are all
  open together.
* The baseline ("direct") reads the same provider, same settings, same number
  of concurrent streams, with ``streamchat.astream`` in the client process.
* Inter-token delay (ITL) = the gap between consecutive text events of one
  stream, as the client receives them; all streams of a round pooled. The
  provider's own gap is 1/rate, so every column sits near it; what matters is
  the tail.
* Memory per open stream = (relay RSS while all streams are open, after each
  got its first token) − (relay RSS idle after a warm-up round), / streams.
* A third column, "bare": the same events on the same schedule from a bare
  asyncio server in the relay's process (no Starlette, no core), read by the
  same client: what any relay pays for TCP and a second process on this
  machine, so the relay's own share can be told apart. Rounds rotate
  direct/bare/relay, then relay/bare/direct, and the added p99 is taken
  within each block of three neighbouring rounds, then its median.
* Errors: any non-200, a stream without ``done``/``stop``, wrong text, an exception.
* Context for the tails: each process's event-loop lag (how late a 10 ms sleep
  wakes: a starved or busy process shows here) and the machine's CPU pressure
  (Linux PSI "some": the share of time any task waited for a CPU) per round.
  On a shared machine, the p99 of both columns moves with these.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _bench

PACKAGES = ("streamchat", "starlette", "uvicorn", "h11")
WORDS = [" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", "."]


def _text(tokens: int) -> str:
    return "".join(WORDS[i % len(WORDS)] for i in range(tokens))


def _provider(cfg: dict[str, Any]) -> Any:
    from streamchat import ScriptedProvider

    return ScriptedProvider(_text(cfg["tokens"]), ttft=cfg["ttft_s"], tokens_per_s=cfg["rate"])


# -- event-loop lag: how late a 10 ms sleep wakes up, i.e. how busy or starved a process is --------
async def _watch_lag(lags: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(0.01)
        lags.append((loop.time() - t - 0.01) * 1000)


def _lag_summary(lags: list[float]) -> dict[str, float]:
    return {"p99_ms": _bench.quantile(lags, 0.99), "max_ms": max(lags, default=0.0)} if lags else {}


# -- the relay, in its own process -------------------------------------------------
def _listen(port: int) -> socket.socket:
    """A listening socket several relay processes can share: the kernel spreads connections (SO_REUSEPORT)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    return sock


def _server_main(conn: Any, cfg: dict[str, Any], usage_path: str, port: int) -> None:
    from streamchat.relay import Limits, RelayConfig, create_app
    from streamchat.relay.server import RelayServer, bind, uvicorn_config

    class Server(RelayServer):
        """The relay's server, plus a lag watch the coordinator can read over the pipe."""

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            self.bare = await asyncio.start_server(lambda r, w: _bare_stream(r, w, cfg), sock=bare_sock)
            self.lags: list[float] = []
            self.watch = asyncio.create_task(_watch_lag(self.lags))
            self.answer = asyncio.create_task(self.answer_pipe())

        async def answer_pipe(self) -> None:
            while True:
                await asyncio.sleep(0.05)
                if conn.poll():
                    conn.recv()
                    conn.send(_lag_summary(self.lags))
                    self.lags.clear()

    limits = Limits(requests_per_minute=None, tokens_per_minute=None, streams_per_key=None, streams_total=None,
                    max_tokens=cfg["tokens"] + 10)
    config = RelayConfig(allow_anonymous=True, limits=limits, usage_log=usage_path, grace_s=1)
    app = create_app(_provider(cfg), config)
    sock, bare_sock = _listen(port), bind("127.0.0.1", 0)
    conn.send((sock.getsockname()[1], bare_sock.getsockname()[1], os.getpid()))
    gc.collect()
    gc.freeze()  # as streamchat.relay.run does
    Server(uvicorn_config(app), app.state.relay).run(sockets=[sock])


async def _bare_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cfg: dict[str, Any]) -> None:
    """The same events on the same schedule from a bare asyncio server: what any relay pays for TCP and a second process."""
    from streamchat.providers.scripted import schedule, tokenize

    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    words = tokenize(_text(cfg["tokens"]))
    for i, (word, due) in enumerate(zip(words, schedule(len(words), cfg["ttft_s"], cfg["rate"]), strict=True)):
        await asyncio.sleep(max(0.0, t0 + due - loop.time()))
        event = b"id: %d\nevent: text\ndata: %s\n\n" % (i + 1, json.dumps({"text": word}).encode())
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
    done = b'event: done\ndata: {"finish_reason":"stop"}\n\n'
    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
    await writer.drain()
    writer.close()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the load client, in its own process -----------------------------------------------
class _SSEClient(asyncio.Protocol):
    """A lean HTTP/1.1 client for one ``text/event-stream`` response.

    The relay writes each event as one HTTP chunk, so the chunked framing can go
    straight into the SSE decoder: a chunk-size line (hex digits) is, to SSE, a
    field with an unknown name, which the decoder ignores; ``\r\n`` is a blank line.
    """

    def __init__(self, stamps: list[int], opened: asyncio.Event) -> None:
        from streamchat._sse import SSEDecoder

        self.stamps, self.opened = stamps, opened
        self.decoder = SSEDecoder()
        self.head = b""
        self.status = 0
        self.text: list[str] = []
        self.finish: str | None = None
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self.head.split(b" ", 2)[1])
            data = self.head[end + 4 :]
        for sse in self.decoder.feed(data):
            if sse.event == "text":
                if not self.stamps:
                    self.opened.set()
                self.stamps.append(now)
                self.text.append(json.loads(sse.data)["text"])
            elif sse.event == "done":
                self.finish = json.loads(sse.data)["finish_reason"]
                if not self.done.done():
                    self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _via_relay(port: int, n: int, stamps: list[int], opened: asyncio.Event) -> str | None:
    """One stream through the relay; returns an error string, or None."""
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_connection(lambda: _SSEClient(stamps, opened), "127.0.0.1", port)
    transport.write(f"GET /v1/events?prompt=stream-{n} HTTP/1.1\r\nHost: relay\r\nAccept: text/event-stream\r\n\r\n".encode())
    try:
        await client.done
    finally:
        transport.close()
    if client.status != 200 or client.finish != "stop":
        return f"status {client.status}, finish {client.finish}"
    return None if "".join(client.text) == _EXPECTED else "wrong text"


async def _direct(provider: Any, n: int, stamps: list[int], opened: asyncio.Event) -> str | None:
    from streamchat import astream

    text = []
    async with astream(provider, f"stream-{n}") as s:
        async for event in s:
            if event.kind == "text":
                if not stamps:
                    opened.set()
                stamps.append(time.perf_counter_ns())
                text.append(event.text)
    if s.finish_reason != "stop":
        return f"finish {s.finish_reason}"
    return None if "".join(text) == _EXPECTED else "wrong text"


_EXPECTED = ""


def _client_main(conn: Any, cfg: dict[str, Any], mode: str, port: int, streams: int) -> None:
    global _EXPECTED
    _EXPECTED = _text(cfg["tokens"])

    async def main() -> dict[str, Any]:
        provider = _provider(cfg)
        all_stamps: list[list[int]] = [[] for _ in range(streams)]
        firsts = [asyncio.Event() for _ in range(streams)]
        starts = [0] * streams

        async def one(i: int) -> str | None:
            await asyncio.sleep(cfg["ramp_s"] * i / streams)
            starts[i] = time.perf_counter_ns()
            try:
                if mode in ("relay", "bare"):
                    return await _via_relay(port, i, all_stamps[i], firsts[i])
                return await _direct(provider, i, all_stamps[i], firsts[i])
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"

        lags: list[float] = []
        watch = asyncio.create_task(_watch_lag(lags))
        t0 = time.perf_counter_ns()
        tasks = [asyncio.create_task(one(i)) for i in range(streams)]
        await asyncio.gather(*(f.wait() for f in firsts))
        conn.send("open")
        # The coordinator measures the relay's memory now; wait for it without blocking the loop.
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        errors = [e for e in await asyncio.gather(*tasks) if e]
        watch.cancel()
        return {"t0": t0, "starts": starts, "stamps": all_stamps, "errors": errors, "client_lag": _lag_summary(lags),
                "client_cpu_s": time.process_time(), "wall_s": (time.perf_counter_ns() - t0) / 1e9}

    try:
        conn.send(asyncio.run(main()))
    except Exception as exc:  # reported by the coordinator
        conn.send({"fatal": repr(exc)})


def _stats(result: dict[str, Any], rate: float) -> dict[str, Any]:
    gaps_ms = [(b - a) / 1e6 for s in result["stamps"] for a, b in itertools.pairwise(s)]
    ttft_ms = [(s[0] - start) / 1e6 for s, start in zip(result["stamps"], result["starts"], strict=True) if s]
    return {
        "itl_p50_ms": _bench.quantile(gaps_ms, 0.5),
        "itl_p99_ms": _bench.quantile(gaps_ms, 0.99),
        "itl_max_ms": max(gaps_ms),
        "itl_nominal_ms": 1000 / rate,
        "ttft_p50_ms": _bench.quantile(ttft_ms, 0.5),
        "ttft_p99_ms": _bench.quantile(ttft_ms, 0.99),
        "tokens": sum(len(s) for s in result["stamps"]),
        "errors": len(result["errors"]),
        "client_cpu_s": result["client_cpu_s"],
        "client_lag": result["client_lag"],
        "wall_s": result["wall_s"],
        "error_samples": result["errors"][:3],
    }


def _cpu_pressure_us() -> int | None:
    """The machine's total time with some task waiting for a CPU (Linux PSI), in µs."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(line.rsplit("total=", 1)[1])


def _lags(workers: list[Workers]) -> dict[str, float]:
    """Each worker's lag watch, read (and reset); the worst of them."""
    found = []
    for worker in workers:
        worker.conn.send("lag")
        found.append(worker.conn.recv())
    return {k: max(f.get(k, 0.0) for f in found) for k in ("p99_ms", "max_ms")}


class Workers:
    """One relay process: its pid and its pipe."""

    def __init__(self, pid: int, conn: Any) -> None:
        self.pid, self.conn = pid, conn


def run_round(
    ctx: Any, cfg: dict[str, Any], mode: str, port: int, workers: list[Workers], streams: int
) -> dict[str, Any]:
    parent, child = ctx.Pipe()
    client = ctx.Process(target=_client_main, args=(child, cfg, mode, port, streams), daemon=True)
    _lags(workers)  # resets the relay's lag watch
    pressure_before, wall_before = _cpu_pressure_us(), time.monotonic()
    cpu_before = sum(_cpu_s(w.pid) for w in workers)
    client.start()
    message = parent.recv()
    if isinstance(message, dict):
        raise RuntimeError(message.get("fatal"))
    rss_open = sum(_rss_kb(w.pid) for w in workers)
    parent.send("go")
    result = parent.recv()
    client.join(10)
    if "fatal" in result:
        raise RuntimeError(result["fatal"])
    stats = _stats(result, cfg["rate"])
    stats["relay_lag"] = _lags(workers)
    pressure_after = _cpu_pressure_us()
    if pressure_before is not None and pressure_after is not None:
        stats["cpu_pressure_pct"] = (pressure_after - pressure_before) / 1e4 / (time.monotonic() - wall_before)
    stats["mode"] = mode
    stats["streams"] = streams
    stats["relay_rss_open_kb"] = rss_open
    stats["relay_cpu_s"] = sum(_cpu_s(w.pid) for w in workers) - cpu_before
    return stats


def _med_lag(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key].get("p99_ms", 0.0) for r in rows)


def _order(rounds: int) -> list[str]:
    # ABC CBA ...: each mode comes first, middle and last as often as the others.
    blocks = [["direct", "bare", "relay"], ["relay", "bare", "direct"]]
    return [mode for i in range(rounds) for mode in blocks[i % 2]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test, < 30 s")
    ap.add_argument("--streams", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=None, help="tokens per stream")
    ap.add_argument("--rate", type=float, default=10.0, help="tokens/s per stream")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per mode")
    ap.add_argument("--ramp", type=float, default=1.0, help="seconds over which the streams start (0: all at once)")
    ap.add_argument("--workers", type=int, default=1, help="relay processes sharing the port (SO_REUSEPORT)")
    args = ap.parse_args()
    quick = args.quick
    cfg = {
        "streams": args.streams or (100 if quick else 500),
        "tokens": args.tokens or (40 if quick else 100),
        "rate": args.rate,
        "ttft_s": 0.1,
        "ramp_s": args.ramp,
        "workers": args.workers,
        "rounds": args.rounds or (1 if quick else 3),
        "quick": quick,
    }
    machine = _bench.machine(PACKAGES)
    print(f"machine: {_bench.machine_line(machine)}", file=sys.stderr)
    ctx = mp.get_context("spawn")
    fd, usage_name = tempfile.mkstemp(prefix="relay-usage-", suffix=".jsonl")
    os.close(fd)
    servers: list[Any] = []
    workers: list[Workers] = []
    t_start = time.perf_counter()
    rounds: list[dict[str, Any]] = []
    try:
        port = bare_port = 0
        for n in range(cfg["workers"]):
            parent, child = ctx.Pipe()
            server = ctx.Process(target=_server_main, args=(child, cfg, usage_name, port), name=f"relay-{n}", daemon=True)
            server.start()
            servers.append(server)
            port, bare, pid = parent.recv()
            bare_port = bare_port or bare
            workers.append(Workers(pid, parent))
        time.sleep(0.5)
        warm = run_round(ctx, cfg, "relay", port, workers, min(50, cfg["streams"]))
        time.sleep(0.5)
        rss_idle = sum(_rss_kb(w.pid) for w in workers)
        for i, mode in enumerate(_order(cfg["rounds"])):
            result = run_round(ctx, cfg, mode, bare_port if mode == "bare" else port, workers, cfg["streams"])
            rounds.append(result)
            print(f"round {i + 1} {mode}: ITL p50 {result['itl_p50_ms']:.1f} ms, p99 {result['itl_p99_ms']:.1f} ms, "
                  f"max {result['itl_max_ms']:.1f} ms, errors {result['errors']}; loop lag p99 client "
                  f"{result['client_lag'].get('p99_ms', 0):.0f} ms, relay {result['relay_lag'].get('p99_ms', 0):.0f} ms; "
                  f"CPU pressure {result.get('cpu_pressure_pct', float('nan')):.0f}%", file=sys.stderr)
    finally:
        for server in servers:
            if server.pid is not None and server.is_alive():
                os.kill(server.pid, signal.SIGTERM)
        for server in servers:
            server.join(15)
            if server.is_alive():
                server.terminate()
    usage_lines = Path(usage_name).read_text().splitlines()
    os.unlink(usage_name)
    elapsed = time.perf_counter() - t_start

    relay = [r for r in rounds if r["mode"] == "relay"]
    direct = [r for r in rounds if r["mode"] == "direct"]
    bare = [r for r in rounds if r["mode"] == "bare"]
    # Within each block of three neighbouring rounds.
    blocks = [{r["mode"]: r for r in rounds[i : i + 3]} for i in range(0, len(rounds), 3)]
    added = [b["relay"]["itl_p99_ms"] - b["direct"]["itl_p99_ms"] for b in blocks]
    added_over_bare = [b["relay"]["itl_p99_ms"] - b["bare"]["itl_p99_ms"] for b in blocks]
    per_stream_kb = [(r["relay_rss_open_kb"] - rss_idle) / cfg["streams"] for r in relay]
    cpu_us_per_token = [r["relay_cpu_s"] / r["tokens"] * 1e6 for r in relay]
    errors = sum(r["errors"] for r in rounds)
    expected_lines = warm["streams"] + len(relay) * cfg["streams"]

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    res = {
        "config": cfg, "machine": machine, "rounds": rounds, "warmup": warm, "relay_rss_idle_kb": rss_idle,
        "added_itl_p99_ms": added, "added_over_bare_itl_p99_ms": added_over_bare, "memory_per_stream_kb": per_stream_kb, "relay_cpu_us_per_token": cpu_us_per_token,
        "usage_lines": len(usage_lines), "usage_lines_expected": expected_lines, "elapsed_s": elapsed,
    }
    verdicts = [
        f"errors: {'MET' if errors == 0 else 'NOT MET'} — {errors} failed streams of {len(rounds) * cfg['streams']}",
        f"added p99 inter-token delay: {'MET' if statistics.median(added) < 10 else 'NOT MET'} — "
        f"{statistics.median(added):+.2f} ms vs direct (median of {len(added)} blocks of rounds; limit < 10 ms); "
        f"{statistics.median(added_over_bare):+.2f} ms vs a bare asyncio SSE server on the same schedule",
        f"usage lines: {len(usage_lines)} written for {expected_lines} relayed streams",
    ]
    res["verdicts"] = verdicts
    path = _bench.write_json("relay_load", res)

    print(f"## Relay under load{' (quick)' if quick else ''}\n")
    print(f"Machine: {_bench.machine_line(machine)}\n")
    print(f"{cfg['streams']} concurrent SSE streams per round, {cfg['tokens']} tokens each at {cfg['rate']:g} tokens/s "
          f"(one every {1000 / cfg['rate']:.0f} ms) after {cfg['ttft_s'] * 1000:.0f} ms; "
          f"{cfg['workers']} relay process(es); "
          f"{cfg['rounds']} rounds per mode, alternating; medians over rounds.\n")
    def cols(key: str, digits: int = 1) -> list[str]:
        return [f"{med(rows_, key):.{digits}f}" for rows_ in (direct, bare, relay)]

    rows = [
        ["ITL p50 (ms)", *cols("itl_p50_ms", 2), f"{med(relay, 'itl_p50_ms') - med(direct, 'itl_p50_ms'):+.2f}"],
        ["ITL p99 (ms)", *cols("itl_p99_ms", 2), f"{statistics.median(added):+.2f} (within blocks)"],
        ["ITL max (ms)", *cols("itl_max_ms"), ""],
        ["TTFT p50 (ms)", *cols("ttft_p50_ms"), ""],
        ["TTFT p99 (ms)", *cols("ttft_p99_ms"), ""],
        ["failed streams", *[str(sum(r["errors"] for r in rows_)) for rows_ in (direct, bare, relay)], ""],
        ["client loop lag p99 (ms)", *[f"{_med_lag(rows_, 'client_lag'):.1f}" for rows_ in (direct, bare, relay)], ""],
        ["server loop lag p99 (ms)", "", f"{_med_lag(bare, 'relay_lag'):.1f}", f"{_med_lag(relay, 'relay_lag'):.1f}", ""],
        ["machine CPU pressure (%)", *cols("cpu_pressure_pct", 0), ""],
    ]
    header = ["", "direct (astream in-process)", "bare asyncio SSE server", "through the relay", "relay − direct"]
    print(_bench.table(header, rows) + "\n")
    print(f"Relay memory: {rss_idle / 1024:.1f} MiB idle (all processes); {statistics.median(per_stream_kb):.1f} KiB "
          f"per open stream (range {min(per_stream_kb):.1f}–{max(per_stream_kb):.1f}). Relay CPU: "
          f"{statistics.median(cpu_us_per_token):.0f} µs per token relayed (relay processes, all threads).\n")
    for line in verdicts:
        print(f"- {line}")
    if quick:
        print("- (--quick is a smoke test: fewer streams and rounds than the goal asks for)")
    print(f"\n(wrote {path.relative_to(_bench.REPO)}; {elapsed:.1f} s)")


if __name__ == "__main__":
    main()
