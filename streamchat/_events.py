"""The event model: one small frozen dataclass per kind, tagged by ``kind``.

Every event carries ``t_ns``, the ``time.perf_counter_ns()`` value (or the
injected clock's) at the moment streamchat *received* it from the provider:
consumer-receipt time, the way benchmark clients measure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "cancelled", "error"]
TokenSource = Literal["server", "tokenizer", "chunks"]

FINISH_REASONS: tuple[FinishReason, ...] = (
    "stop",
    "length",
    "tool_calls",
    "content_filter",
    "cancelled",
    "error",
)


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer's visible text."""

    text: str
    t_ns: int
    kind: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of the model's reasoning (``reasoning_content``, ``reasoning`` or ``<think>``)."""

    text: str
    t_ns: int
    kind: Literal["reasoning"] = "reasoning"


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a tool call; fragments with the same ``index`` belong together."""

    index: int
    t_ns: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    kind: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call, assembled from its fragments."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts for the whole answer."""

    prompt_tokens: int | None
    completion_tokens: int | None
    t_ns: int
    source: TokenSource = "server"
    """``server`` when the server reported it, ``tokenizer`` when counted locally."""
    kind: Literal["usage"] = "usage"


@dataclass(frozen=True, slots=True)
class Error:
    """A failure that ended the stream; the text received before it is kept."""

    error: Exception = field(compare=False)
    message: str
    t_ns: int
    streamed: bool
    """Whether any output had reached the caller before the failure."""
    retryable: bool
    """Whether sending the same request again is safe and may succeed."""
    kind: Literal["error"] = "error"


@dataclass(frozen=True, slots=True)
class Finish:
    """The last event of every stream."""

    reason: FinishReason
    t_ns: int
    kind: Literal["finish"] = "finish"


StreamEvent = TextDelta | ReasoningDelta | ToolCallDelta | Usage | Error | Finish
