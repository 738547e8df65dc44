"""How one streamed answer looks in a ``gr.Chatbot``: pure, no Gradio import.

An answer is drawn as consecutive assistant messages (Gradio groups them in one
bubble): a collapsible thought for the reasoning, the answer's text, one
collapsible per tool call, an error note, and the latency line. Everything but
the text is an *annotation* (it has ``metadata.title``): :func:`~.history.to_prompt`
leaves annotations out of the next request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Literal, NotRequired, Protocol, TypedDict

from .._events import Error, FinishReason, StreamEvent, ToolCall
from ..errors import ProviderError
from ..timing import Timings

WARNING = "⚠️"

REASONS: dict[FinishReason, str] = {
    "stop": "stop",
    "length": "length (max tokens reached)",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "cancelled": "stopped",
    "error": "error",
}
"""The finish reason as the latency line says it."""

STALL_S = 1.0
"""A gap longer than this between chunks is shown as a wait on the latency line."""


class Metadata(TypedDict, total=False):
    """Gradio's ``MetadataDict``: a message with a ``title`` is drawn as a collapsible thought."""

    title: str
    id: str
    log: str
    duration: float
    status: Literal["pending", "done"]


class MessageDict(TypedDict):
    """One message in Gradio's messages format."""

    role: Literal["user", "assistant"]
    content: str
    metadata: NotRequired[Metadata]


class Answer(Protocol):
    """What a view reads from a stream: ``Stream`` and ``AsyncStream`` both qualify."""

    @property
    def text(self) -> str: ...
    @property
    def reasoning(self) -> str: ...
    @property
    def tool_calls(self) -> tuple[ToolCall, ...]: ...
    @property
    def error(self) -> Error | None: ...
    @property
    def finish_reason(self) -> FinishReason | None: ...
    @property
    def timings(self) -> Timings: ...
    @property
    def request_start_ns(self) -> int: ...


class AnswerView:
    """Draws one answer from its stream at each frame; remembers what only events tell.

    ``feed`` the events of each frame, then call :meth:`messages`. ``queue_ahead``
    (set by the adapter) is how many answers wait before this one on a provider
    that answers one request at a time.
    """

    def __init__(self, *, reasoning: bool = True, latency: bool = True, tidy: bool = True) -> None:
        self.show_reasoning = reasoning
        self.show_latency = latency
        self.tidy = tidy
        self.queue_ahead = 0
        self.frames = 0
        self.saw_finish = False
        self._reasoning_ns: tuple[int, int] | None = None
        self._answer_ns: int | None = None

    def feed(self, events: Iterable[StreamEvent]) -> None:
        """Take a frame's events into account (the stream holds the rest)."""
        for event in events:
            if event.kind == "reasoning":
                first = self._reasoning_ns[0] if self._reasoning_ns else event.t_ns
                self._reasoning_ns = (first, event.t_ns)
            elif event.kind in ("text", "tool_call") and self._answer_ns is None:
                self._answer_ns = event.t_ns
            elif event.kind == "finish":
                self.saw_finish = True

    def messages(self, answer: Answer, now_ns: int) -> list[MessageDict]:
        """The answer as Chatbot messages, as it stands at ``now_ns``."""
        self.frames += 1
        finished = answer.finish_reason is not None
        out: list[MessageDict] = []
        if self.show_reasoning and answer.reasoning:
            out.append(self._thought(answer, finished, now_ns))
        if answer.text:
            text = answer.text if finished or not self.tidy else tidy_markdown(answer.text)
            out.append({"role": "assistant", "content": text})
        out.extend(_tool_call(call, finished) for call in answer.tool_calls)
        if answer.error is not None:
            out.append(_error(answer.error))
        if self.show_latency:
            out.append(self._latency(answer, now_ns))
        return out

    def _thought(self, answer: Answer, finished: bool, now_ns: int) -> MessageDict:
        done = finished or bool(answer.text) or bool(answer.tool_calls)
        meta: Metadata = {"title": "Thought" if done else "Thinking…", "status": "done" if done else "pending"}
        if self._reasoning_ns is not None:
            start, last = self._reasoning_ns
            end = now_ns if not done else (self._answer_ns if self._answer_ns and self._answer_ns > start else last)
            meta["duration"] = round(max(0, end - start) * 1e-9, 2)
        return {"role": "assistant", "content": answer.reasoning, "metadata": meta}

    def _latency(self, answer: Answer, now_ns: int) -> MessageDict:
        t = answer.timings
        reason = answer.finish_reason
        start = answer.request_start_ns
        waited = (now_ns - start) * 1e-9 if start else 0.0
        if reason is None and t.ttfo_s is None:
            if self.queue_ahead:
                ahead = "1 answer" if self.queue_ahead == 1 else f"{self.queue_ahead} answers"
                title = f"Queued: {ahead} ahead (this model answers one request at a time) · {waited:.1f} s"
            else:
                title = f"Waiting for the first token… {waited:.1f} s"
            return {"role": "assistant", "content": "", "metadata": {"title": title, "status": "pending"}}
        line = latency_line(t, reason)
        if reason is None and t.chunk_offsets_s:
            gap = waited - t.chunk_offsets_s[-1]
            if gap > STALL_S:
                line += f" · waiting for the next token… {gap:.1f} s"
        return {
            "role": "assistant",
            "content": details(t, self.frames),
            "metadata": {"title": line, "status": "done"},
        }


def note(title: str, text: str = "") -> MessageDict:
    """An annotation (shown open, left out of the next request): for errors found before sending."""
    return {"role": "assistant", "content": text, "metadata": {"title": title}}


def latency_line(t: Timings, reason: FinishReason | None) -> str:
    """``TTFT 0.21 s · 42 tokens · 130.5 tok/s · 0.88 s · stop``; ``streaming`` until it ends."""
    parts = ["TTFT " + (f"{t.ttft_s:.2f} s" if t.ttft_s is not None else "—")]
    approx = "~" if t.token_source == "chunks" else ""
    parts.append(f"{approx}{t.output_tokens} tokens")
    speed = t.decode_tokens_per_s
    if speed is not None:
        parts.append(f"{speed:.1f} tok/s")
    if reason is not None and t.e2e_s is not None:
        parts.append(f"{t.e2e_s:.2f} s")
    parts.append(REASONS[reason] if reason is not None else "streaming")
    return " · ".join(parts)


def details(t: Timings, frames: int) -> str:
    """The full metrics as a small Markdown table (shown when the latency line is opened)."""

    def s(x: float | None, digits: int = 3) -> str:
        return "—" if x is None else f"{x:.{digits}f} s"

    tps = t.tokens_per_s
    decode = t.decode_tokens_per_s
    rows = [
        ("time to first token (TTFT)", s(t.ttft_s)),
        ("time to first output, reasoning included", s(t.ttfo_s)),
        ("time to last token (end to end)", s(t.e2e_s)),
        ("time per output token after the first", s(t.tpot_s, 4)),
        ("decode speed (1 / TPOT)", "—" if decode is None else f"{decode:.1f} tok/s"),
        ("throughput (tokens / end to end)", "—" if tps is None else f"{tps:.1f} tok/s"),
        ("output tokens", f"{t.output_tokens} (counted by: {t.token_source})"),
        ("chunks received", str(t.output_chunks)),
        ("attempts", str(t.attempts)),
        ("screen updates", str(frames)),
    ]
    return "| metric | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


def _tool_call(call: ToolCall, finished: bool) -> MessageDict:
    try:
        args = json.dumps(json.loads(call.arguments), indent=2, ensure_ascii=False)
    except ValueError:
        args = call.arguments
    return {
        "role": "assistant",
        "content": f"```json\n{args}\n```",
        "metadata": {"title": f"🛠️ Tool call: {call.name or '…'}", "status": "done" if finished else "pending"},
    }


def _error(error: Error) -> MessageDict:
    title = f"{WARNING} Error: " + ("the answer above is cut short" if error.streamed else "no answer")
    hint = " Retrying may help." if isinstance(error.error, ProviderError) and error.error.retryable else ""
    return {"role": "assistant", "content": error.message + hint, "metadata": {"title": title}}


_PARTIAL_FENCE = re.compile(r"(?:^|\n)[ ]{0,3}(`{1,2}|~{1,2})$")
_FENCE_LINE = re.compile(r"^[ ]{0,3}(```|~~~)", re.MULTILINE)


def tidy_markdown(text: str) -> str:
    """Text that is still growing, made to render without half-typed markup.

    A fence being typed (a line that is only one or two backticks so far) is
    held back, and an emphasis or inline-code marker left open in the last
    paragraph is closed (or held back when nothing follows it yet). Inside an
    open code block nothing changes: Markdown renders an unclosed fence as code
    to the end. The final frame always shows the exact text.
    """
    cut = _PARTIAL_FENCE.search(text)
    if cut:
        text = text[: cut.start()]
    if len(_FENCE_LINE.findall(text)) % 2:
        return text
    start = text.rfind("\n\n") + 1
    tail = text[start:]
    for marker in ("**", "`"):
        if _count_outside_code(tail, marker) % 2:
            if text.endswith(marker):
                return text[: -len(marker)]
            text += marker
            tail += marker
    return text


def _count_outside_code(text: str, marker: str) -> int:
    if marker == "`":
        return text.count("`") - 3 * text.count("```")
    return sum(part.count(marker) for i, part in enumerate(text.split("`")) if i % 2 == 0)
