"""The failure matrix: each drill, and what every surface does about it (data, no I/O).

One mechanism in the core decides the behaviour for every surface, because all
of them read the core's stream: retry only before the first token, keep the
partial text, end with one ``Error`` whose message says what happened. The
only per-surface difference is configuration: the benchmark never retries (a
retry would hide inside the TTFT it measures). ``docs/faults.md`` is rendered
from this table by :func:`markdown` (a test keeps them equal), and the
failure-matrix tests run every cell against the fault proxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["DRILLS", "LIMIT_S", "SURFACES", "Drill", "Expectation", "Surface", "expect", "markdown"]

Surface = Literal["terminal", "gradio", "notebook", "bench", "relay"]
SURFACES: tuple[Surface, ...] = ("terminal", "gradio", "notebook", "bench", "relay")
Partial = Literal["complete", "kept", "none"]

LIMIT_S = 1.0
"""The first-token and idle limits the drills run with; each must fire by ``LIMIT_S + 0.5``."""


@dataclass(frozen=True, slots=True)
class Drill:
    """One fault, how the drills cause it, and what the core does about it."""

    name: str
    fault: str
    how: str
    """A proxy spec (one request gets it), or what the rig does instead."""
    retried: bool
    partial: Partial
    """complete: the whole answer; kept: the text before the fault; none: nothing had streamed."""
    told: str
    """Part of the message every surface shows ("" when the answer completes)."""
    short: str = "—"
    """What the user is told, in two or three words."""

    @property
    def spec(self) -> str:
        """The proxy spec, or "" for drills the rig causes another way."""
        return "" if self.how.startswith("(") else self.how


DRILLS: tuple[Drill, ...] = (
    Drill("headers_delay", "delay before headers", "headers_delay=0.3", False, "complete", ""),
    Drill("ttft_delay", "delay before the first token", "ttft_delay=0.3", False, "complete", ""),
    Drill("throttle", "throttled tokens/s", "tps=40", False, "complete", ""),
    Drill("rate_limit", "429 with Retry-After, once", "status=429,retry_after=0.2", True, "complete", ""),
    Drill("rate_limited", "429 with Retry-After, every time", "status=429,retry_after=0.2;times=9", True, "none",
          "is rate limiting (HTTP 429)", short="rate limited"),
    Drill("server_error", "5xx, once", "status=503", True, "complete", ""),
    Drill("server_down", "5xx, every time", "status=503;times=9", True, "none", "failed (HTTP 503)", short="server failed"),
    Drill("disconnect", "disconnect after N chunks", "disconnect_after=4", False, "kept", "the connection broke mid-answer", short="broke mid-answer"),
    Drill("stall", "stall after N chunks", "stall_after=4,stall_s=30", False, "kept", "waiting for the next chunk", short="idle timeout"),
    Drill("slow_first_token", "no first token within the limit", "ttft_delay=30", False, "none",
          "waiting for the first token", short="first-token timeout"),
    Drill("malformed", "malformed chunk", "malformed_after=4", False, "kept", "malformed chunk, not JSON", short="malformed chunk"),
    Drill("error_event", "an `error` event mid-stream", "error_after=4", False, "kept",
          "the provider reported an error mid-stream", short="provider error"),
    Drill("wrong_key", "wrong key", "(the server refuses the key)", False, "none", "refused the API key (HTTP 401)", short="key refused"),
    Drill("unknown_model", "unknown model", "(the server drops the model)", False, "none", "answered 404 for model", short="unknown model"),
    Drill("unreachable", "unreachable host", "(nothing listens)", True, "none", "could not connect to", short="cannot connect"),
    Drill("stop_in_stall", "Stop during a stall", "stall_after=4,stall_s=30", False, "kept", "stopped", short="stopped"),
)


@dataclass(frozen=True, slots=True)
class Expectation:
    """One cell: what a surface must do for one drill."""

    retried: bool
    partial: Partial
    told: str
    short: str


def expect(drill: Drill, surface: Surface) -> Expectation:
    """The cell for ``drill`` on ``surface``."""
    retried = drill.retried and surface != "bench"  # the benchmark runs with retries=0
    if surface == "bench" and drill.name in ("rate_limit", "server_error"):
        # without a retry the one injected status is the answer
        return Expectation(False, "none", _ALWAYS[drill.name].told, _ALWAYS[drill.name].short)
    return Expectation(retried, drill.partial, drill.told, drill.short)


_WHERE: dict[Surface, str] = {
    "terminal": "`streamchat chat`: the text on stdout, `streamchat: error: …` on stderr, then the summary line "
    "(with `N attempts` after a retry); exit status 1, or 130 after Ctrl-C (`[stopped]` in interactive mode, "
    "where the partial answer stays in the conversation)",
    "gradio": "Gradio apps: the text stays in the answer bubble and the message follows it as a warning note; "
    "Stop marks the answer stopped",
    "notebook": "notebook widget and `show`/`ashow`: the text stays, a red `Error: …` line above the latency line; "
    "after Stop, `Stopped: the answer above is what had arrived.`",
    "bench": "`streamchat bench`: the request counts as not completed under its error kind (a table note gives the "
    "first message, the progress line counts errors); its partial text, chunks and tokens are kept in bench.json; "
    "Ctrl-C marks it cancelled and the run interrupted (exit 130)",
    "relay": "`streamchat serve`: before any output, chat completions answers with an HTTP status (429 → 503, "
    "other upstream failures 502, time limits 504) carrying the message and `x-should-retry`, and the event "
    "endpoints (SSE, WebSocket, NDJSON) send an `error` event with `streamed: false`; after output, an `error` "
    "event follows the partial text; the provider's key and text never reach the caller",
}

_PARTIAL = {"complete": "complete answer", "kept": "kept", "none": "nothing had streamed"}
_BY_NAME = {d.name: d for d in DRILLS}
_ALWAYS = {"rate_limit": _BY_NAME["rate_limited"], "server_error": _BY_NAME["server_down"]}  # the same fault, every time
_NAMES = {"terminal": "terminal chat", "gradio": "Gradio app", "notebook": "notebook widget", "bench": "benchmark",
          "relay": "relay server"}


def markdown() -> str:
    """The matrix as the Markdown table in docs/faults.md."""
    rows = ["| drill | how | retried? | partial text | what the user is told |", "|---|---|---|---|---|"]
    for d in DRILLS:
        told = f"\"… {d.told} …\"" if d.told else "nothing: the timings show it"
        if d.name == "stop_in_stall":
            told = "the answer is marked stopped; upstream closed within 200 ms"
        how = d.how if d.how.startswith("(") else f"`{d.how}`"
        retried = "yes" if d.retried else "no"
        if d.retried:
            retried += " (bench: no)"
        rows.append(f"| {d.fault} | {how} | {retried} | {_PARTIAL[d.partial]} | {told} |")
    rows += ["", "Each surface, in three words (retried? · partial text · what the user is told):", ""]
    rows.append("| drill | " + " | ".join(_NAMES[s] for s in SURFACES) + " |")
    rows.append("|---" * (len(SURFACES) + 1) + "|")
    for d in DRILLS:
        cells = []
        for surface in SURFACES:
            e = expect(d, surface)
            partial = {"complete": "all", "kept": "kept", "none": "none"}[e.partial]
            cells.append(f"{'retried' if e.retried else 'no retry'} · {partial} · {e.short}")
        rows.append(f"| {d.name} | " + " | ".join(cells) + " |")
    rows.append("")
    rows.append("Where each surface tells it:")
    rows.append("")
    rows.extend(f"- {text}." for text in _WHERE.values())
    return "\n".join(rows) + "\n"
