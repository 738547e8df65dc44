"""How fast a notebook shows a fast stream: show(), ashow() and ChatWidget against the usual loops.

Goal: "show() and the widget update the screen at most about 20 times per
second however fast tokens arrive, the final text is exact, and a 10,000-token
scripted stream at 5,000 tokens/s finishes displaying within 100 ms of its end."

    python benchmarks/notebook_display.py            # 5 rounds (about 4 minutes on 2 quiet cores)
    python benchmarks/notebook_display.py --quick    # smoke test (< 1 minute)

Method
------
* A real ipykernel (this very Python, whatever kernelspecs exist) is started with jupyter_client
  and driven over ZeroMQ the way a notebook front end drives it. Every IOPub
  message the kernel sends for a cell is received here and stamped with
  ``perf_counter_ns`` on arrival. ``perf_counter`` is CLOCK_MONOTONIC on Linux,
  one clock for every process, so kernel-side stamps (the stream's request
  start and its Finish event) and receipt stamps here are comparable.
* What counts as a screen update: for ``show``/``ashow`` and the naive display
  loop, a ``display_data`` or ``update_display_data`` message; for the widget
  and the ``Output`` loop, a ``comm_msg`` that changes the answer widget's
  value (or the Output widget's outputs). Exactly what a front end would redraw.
* The stream: ``ScriptedProvider`` with 10,000 one-token words, TTFT 0 and
  5,000 tokens/s, so it lasts 2.0 s when read on time.
* Variants, each in its own cell, in a rotated order every round:
  ``show`` (sync, painter + reader thread), ``ashow`` (``await``), ``widget``
  (``ChatWidget.send`` then ``await chat.wait()``), and two baselines a
  notebook user would write: ``naive display`` (``handle.update(Markdown(text))``
  per token) and ``naive Output`` (``Output.append_stdout(token)`` per token).
  Baselines run once per round and are cut off after ``--cutoff`` seconds.
* Reported per variant (median over rounds): screen updates, the most updates
  in any one-second window, bytes sent for them, the time from the stream's
  end (its Finish event, kernel clock) to the final update's arrival here, the
  time from the request to the final update, how far that is behind the end
  of a stream read on time ((tokens − 1) / rate: a loop that paints slowly also
  reads slowly, so its own stream ends late), and whether the final text is
  exactly the stream's text. Baselines run in the first ``--baseline-rounds``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _bench import fmt, machine, machine_line, table, write_json

SETUP = """
import time
from IPython.display import Markdown, display
from streamchat import ScriptedProvider, astream, stream
from streamchat.notebook import ChatWidget, ashow, show

N, TPS = {n}, {tps}
TEXT = " ".join(f"w{{i}}" for i in range(N))
def scripted():
    return ScriptedProvider(TEXT, ttft=0.0, tokens_per_s=TPS)
def report(s, target=""):
    end = s.request_start_ns + round(s.timings.duration_s * 1e9)
    print("RESULT", s.request_start_ns, end, s.finish_reason, s.timings.output_tokens, target)
"""

CELLS = {
    "show": 's = show(stream(scripted(), "go"))\nreport(s)',
    "ashow": 's = await ashow(astream(scripted(), "go"))\nreport(s)',
    "widget": (
        'chat = ChatWidget(scripted())\ndisplay(chat)\nturn = chat.send("go")\nprint("TARGET", turn.answer.model_id)\n'
        "await chat.wait()\n"
        "report(turn.stream, turn.answer.model_id)\nchat.close()"
    ),
    "naive display": (
        'handle = display(Markdown(""), display_id=True)\ntext = ""\n'
        'with stream(scripted(), "go") as s:\n'
        "    for event in s:\n"
        '        if event.kind == "text":\n'
        "            text += event.text\n"
        "            handle.update(Markdown(text))\n"
        "report(s)"
    ),
    "naive Output": (
        "import ipywidgets as widgets\nout = widgets.Output()\ndisplay(out)\nprint('TARGET', out.model_id)\n"
        'with stream(scripted(), "go") as s:\n'
        "    for event in s:\n"
        '        if event.kind == "text":\n'
        "            out.append_stdout(event.text)\n"
        "report(s, out.model_id)"
    ),
}
OURS = ("show", "ashow", "widget")
BASELINES = ("naive display", "naive Output")


class Kernel:
    def __init__(self) -> None:
        import ipykernel.kernelspec
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager

        class ThisPython(KernelSpecManager):  # this very Python, whatever kernelspecs the machine has
            def get_kernel_spec(self, kernel_name: str) -> Any:
                return self.kernel_spec_class(
                    resource_dir=ipykernel.kernelspec.RESOURCES, **ipykernel.kernelspec.get_kernel_dict()
                )

        self.km = KernelManager(kernel_name="this-python", kernel_spec_manager=ThisPython())
        self.km.start_kernel()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    def run(self, code: str, cutoff: float) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, Any], bool]:
        """Run ``code``; every IOPub message with its arrival time, the reply, and whether it was cut off."""
        msg_id = self.kc.execute(code)
        got: list[tuple[int, dict[str, Any]]] = []
        deadline = time.monotonic() + cutoff
        interrupted = False
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=1.0)
            except queue.Empty:
                msg = None
            now = time.perf_counter_ns()
            if msg is not None and msg["parent_header"].get("msg_id") == msg_id:
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
                got.append((now, msg))
            if not interrupted and time.monotonic() > deadline:
                self.km.interrupt_kernel()
                interrupted = True
        reply = self.kc.get_shell_msg(timeout=60)["content"]
        return got, reply, interrupted

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def _size(msg: dict[str, Any]) -> int:
    return len(json.dumps(msg["content"], default=str))


def _updates(name: str, got: list[tuple[int, dict[str, Any]]], target: str) -> list[tuple[int, dict[str, Any]]]:
    """The messages that redraw the answer, with their arrival times."""
    if name in ("widget", "naive Output"):
        return [
            (t, m) for t, m in got
            if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == target
            and m["content"]["data"].get("method") == "update"
            and {"value", "outputs"} & set(m["content"]["data"].get("state", {}))
        ]
    return [(t, m) for t, m in got if m["msg_type"] in ("display_data", "update_display_data")]


def _shown(name: str, last: dict[str, Any]) -> str:
    """What the final update shows (HTML for the widget, text or Markdown for the others)."""
    if name == "widget":
        return str(last["data"]["state"]["value"])
    if name == "naive Output":
        return "".join(o.get("text", "") for o in last["data"]["state"]["outputs"])
    if name == "naive display":
        return str(last["data"]["text/markdown"])
    return str(last["data"]["text/plain"])


def _exact(name: str, shown: str, text: str) -> bool:
    if name == "widget":
        from streamchat.notebook.render import HTMLRenderer

        return shown == HTMLRenderer().markdown(text)
    if name in ("show", "ashow"):
        return shown.startswith(text + "\n")
    return shown == text


def analyse(name: str, got: list[tuple[int, dict[str, Any]]], text: str, cut: bool, on_time_s: float) -> dict[str, Any]:
    out = "".join(m["content"].get("text", "") for _, m in got if m["msg_type"] == "stream")
    target = re.search(r"TARGET (\S+)", out)
    updates = _updates(name, got, target[1] if target else "")
    times = [t for t, _ in updates]
    # The most updates that arrived within any one second ([t, t + 1 s)).
    peak, j = 0, 0
    for i in range(len(times)):
        while times[i] - times[j] >= 1_000_000_000:
            j += 1
        peak = max(peak, i - j + 1)
    row: dict[str, Any] = {
        "variant": name,
        "cut_off": cut,
        "updates": len(updates),
        "peak_updates_per_s": peak,
        "bytes": sum(_size(m) for _, m in updates),
    }
    found = re.search(r"RESULT (\d+) (\d+) (\w+) (\d+)", out)
    if found is None or not updates:
        shown = _shown(name, updates[-1][1]["content"]) if updates else ""
        row["shown_fraction"] = len(shown) / len(text)
        return row
    start_ns, end_ns = int(found[1]), int(found[2])
    return {
        **row,
        "finish_reason": found[3],
        "tokens": int(found[4]),
        "end_to_display_ms": (times[-1] - end_ns) / 1e6,
        "request_to_display_s": (times[-1] - start_ns) / 1e9,
        "behind_on_time_end_ms": ((times[-1] - start_ns) / 1e9 - on_time_s) * 1e3,
        "stream_s": (end_ns - start_ns) / 1e9,
        "exact": _exact(name, _shown(name, updates[-1][1]["content"]), text),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=10_000)
    ap.add_argument("--tps", type=float, default=5_000.0)
    ap.add_argument("--cutoff", type=float, default=60.0, help="seconds after which a baseline cell is interrupted")
    ap.add_argument("--baseline-rounds", type=int, default=2, help="rounds that also run the (slow) baselines")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 2,000 tokens")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.tokens = 2, 2_000
    text = " ".join(f"w{i}" for i in range(args.tokens))
    info = machine(["ipykernel", "ipywidgets", "jupyter_client", "pyzmq", "markdown-it-py"])
    info["perf_counter"] = str(time.get_clock_info("perf_counter"))
    print(machine_line(info), flush=True)
    kernel = Kernel()
    runs: list[dict[str, Any]] = []
    try:
        _, reply, _ = kernel.run(SETUP.format(n=args.tokens, tps=args.tps), 120)
        assert reply["status"] == "ok", reply
        kernel.run("show(stream(scripted(), 'warm up'))", 120)  # imports and first-call costs, not measured
        for r in range(args.rounds):
            names = [*OURS, *BASELINES] if r < args.baseline_rounds else list(OURS)
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                got, reply, cut = kernel.run(CELLS[name], args.cutoff if name in BASELINES else 300)
                row = {"round": r, **analyse(name, got, text, cut, (args.tokens - 1) / args.tps)}
                runs.append(row)
                print(json.dumps(row), flush=True)
    finally:
        kernel.close()

    rows = []
    summary: dict[str, Any] = {}
    for name in [*OURS, *BASELINES]:
        mine = [x for x in runs if x["variant"] == name]
        done = [x for x in mine if "exact" in x]
        if not mine:
            continue
        if not done:
            # Never finished within the cut-off: say how far it got.
            shown = statistics.median(x.get("shown_fraction", 0.0) for x in mine)
            summary[name] = {"n": len(mine), "cut_off": len(mine), "shown_fraction": shown,
                             "updates": statistics.median(x["updates"] for x in mine),
                             "bytes": statistics.median(x["bytes"] for x in mine)}
            rows.append([name, str(len(mine)), fmt(summary[name]["updates"], 0), "", fmt(summary[name]["bytes"] / 1e6, 2),
                         "", f"not done after {args.cutoff:.0f} s ({shown:.0%} of the text shown)", f"> {args.cutoff:.0f}", "—"])
            continue
        med: dict[str, Any] = {k: statistics.median(x[k] for x in done) for k in
               ("updates", "peak_updates_per_s", "bytes", "end_to_display_ms", "behind_on_time_end_ms",
                "request_to_display_s", "stream_s")}
        med["exact"] = all(x["exact"] for x in done)
        med["cut_off"] = len(mine) - len(done)
        med["n"] = len(done)
        summary[name] = med
        cut = f" ({med['cut_off']} of {len(mine)} cut off)" if med["cut_off"] else ""
        rows.append([
            name, str(len(mine)), fmt(med["updates"], 0), fmt(med["peak_updates_per_s"], 0),
            fmt(med["bytes"] / 1e6, 2), fmt(med["end_to_display_ms"], 1),
            fmt(med["behind_on_time_end_ms"], 0) + cut, fmt(med["request_to_display_s"], 2),
            "yes" if med["exact"] else "NO",
        ])
    header = ["variant", "rounds", "updates", "most updates in 1 s", "MB sent", "stream end → final update (ms)",
              "final update after the on-time end (ms)", "request → final update (s)", "final text exact"]
    print()
    print(f"{args.tokens:,} tokens at {args.tps:,.0f} tokens/s (stream lasts {(args.tokens - 1) / args.tps:.2f} s when read on time); medians")
    print(table(header, rows))
    if "show" in summary and "naive display" in summary:
        ratio = summary["naive display"]["request_to_display_s"] / summary["show"]["request_to_display_s"]
        print(f"\nnaive display loop / show(), request → final update: {ratio:.1f}×")
    path = write_json("notebook_display", {"machine": info, "args": vars(args), "runs": runs, "summary": summary})
    print(f"\nfull data: {path.relative_to(Path(__file__).resolve().parent.parent)}")


if __name__ == "__main__":
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    main()
