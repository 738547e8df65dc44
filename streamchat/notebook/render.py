"""What an answer looks like on screen, as text: Markdown, plain text and HTML (no I/O).

A :class:`Snapshot` is what a stream holds at one moment; the functions here
turn it into the strings a display or a widget shows. Model text is Markdown
and is shown as Markdown; everything streamchat adds (error messages, labels)
is escaped, and HTML for widgets never lets raw HTML from the model through.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

from .._events import FinishReason, ToolCall
from .._state import StreamState
from .._stream import AsyncStream, Stream

WAITING = "waiting for the first token…"
STREAMING = "streaming…"
STOPPED = "Stopped: the answer above is what had arrived."
STOPPED_EMPTY = "Stopped before any text arrived."

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An answer at one moment: what has arrived, and how it ended (if it has)."""

    text: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason | None = None
    error: str | None = None
    summary: str | None = None
    """The latency line, once the answer has ended."""

    @classmethod
    def of(cls, stream: Stream | AsyncStream) -> Snapshot:
        """What ``stream`` holds now (read it from the thread that drives it)."""
        reason = stream.finish_reason
        error = stream.error
        return cls(
            text=stream.text,
            reasoning=stream.reasoning,
            tool_calls=stream.tool_calls,
            finish_reason=reason,
            error=error.message if error is not None else None,
            summary=stream.timings.summary(reason) if reason is not None else None,
        )

    @classmethod
    def of_state(cls, state: StreamState) -> Snapshot:
        """The same from a :class:`StreamState` fed by hand (a copy kept by a painter)."""
        reason = state.finish_reason
        error = state.error
        return cls(
            text=state.text,
            reasoning=state.reasoning,
            tool_calls=state.tool_calls,
            finish_reason=reason,
            error=error.message if error is not None else None,
            summary=state.timings().summary(reason) if reason is not None else None,
        )

    @property
    def stopped(self) -> str | None:
        """The note for an answer the user stopped (Stop, an interrupt, a cancelled task), else None."""
        if self.finish_reason != "cancelled":
            return None
        return STOPPED if self.text or self.reasoning or self.tool_calls else STOPPED_EMPTY

    @property
    def waiting(self) -> bool:
        """Nothing has arrived yet and the answer has not ended."""
        return self.finish_reason is None and not (self.text or self.reasoning or self.tool_calls)


def escape_markdown(text: str) -> str:
    """``text`` shown literally inside Markdown."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def close_fences(text: str) -> str:
    """Close a code fence the model has opened but not yet closed, so what follows stays outside it."""
    opened: str | None = None
    for match in _FENCE.finditer(text):
        fence = match.group(1)
        if opened is None:
            opened = fence
        elif fence[0] == opened[0] and len(fence) >= len(opened):
            opened = None
    if opened is None:
        return text
    return text + ("" if text.endswith("\n") else "\n") + opened


def _quote(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.split("\n"))


def to_markdown(snap: Snapshot) -> str:
    """Reasoning as a quote, the answer, tool calls, the error, then the latency line."""
    parts: list[str] = []
    if snap.reasoning:
        parts.append(_quote("*Reasoning*\n\n" + close_fences(snap.reasoning.strip("\n"))))
    if snap.text:
        parts.append(close_fences(snap.text))
    for call in snap.tool_calls:
        parts.append(f"**Tool call** `{call.name}`\n\n```json\n{call.arguments}\n```")
    if snap.error is not None:
        parts.append("**Error:** " + escape_markdown(" ".join(snap.error.split())))
    if snap.waiting:
        parts.append(f"*{WAITING}*")
    if snap.stopped is not None:
        parts.append(f"*{escape_markdown(snap.stopped)}*")
    if snap.summary is not None:
        parts.append(f"*{escape_markdown(snap.summary)}*")
    return "\n\n".join(parts)


def to_plain(snap: Snapshot) -> str:
    """The same for a terminal or a diff: labelled lines, no markup."""
    parts: list[str] = []
    if snap.reasoning:
        parts.append("[reasoning] " + snap.reasoning.strip("\n"))
    if snap.text:
        parts.append(snap.text)
    for call in snap.tool_calls:
        parts.append(f"[tool call] {call.name}({call.arguments})")
    if snap.error is not None:
        parts.append(f"[error] {snap.error}")
    if snap.waiting:
        parts.append(f"[{WAITING}]")
    if snap.summary is not None:
        parts.append(snap.summary)
    return "\n".join(parts)


def to_bundle(snap: Snapshot) -> dict[str, str]:
    """A display bundle: Markdown for notebooks, plain text for everything else."""
    return {"text/markdown": to_markdown(snap), "text/plain": to_plain(snap)}


class HTMLRenderer:
    """Markdown to safe HTML for widgets: markdown-it-py with raw HTML off, or escaped text."""

    def __init__(self) -> None:
        self._md: Any = None
        try:
            from markdown_it import MarkdownIt
        except ImportError:  # optional: without it, text is shown as written
            return
        self._md = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable("table")

    def markdown(self, text: str) -> str:
        """``text`` (the model's Markdown) as HTML; raw HTML in it is escaped, never run."""
        if self._md is None:
            return f'<div style="white-space: pre-wrap">{html.escape(text)}</div>'
        return str(self._md.render(close_fences(text)))

    @staticmethod
    def plain(text: str) -> str:
        """``text`` exactly as written, line breaks kept."""
        return f'<div style="white-space: pre-wrap">{html.escape(text)}</div>'
