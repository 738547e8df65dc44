"""What a stream has received so far: text, reasoning, tool calls, usage, marks in time."""

from __future__ import annotations

from ._events import (
    Error,
    Finish,
    FinishReason,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from .timing import Timings, seconds


class StreamState:
    """Accumulates events; pure, so it can be fed by hand (replays, tests, servers)."""

    def __init__(self, request_start_ns: int) -> None:
        self.request_start_ns = request_start_ns
        self.headers_ns: int | None = None
        self.first_text_ns: int | None = None
        self.first_output_ns: int | None = None
        self.last_output_ns: int | None = None
        self.end_ns: int | None = None
        self.chunk_ns: list[int] = []
        self.attempts = 1
        self.usage: Usage | None = None
        self.error: Error | None = None
        self.finish_reason: FinishReason | None = None
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, list[str | None]] = {}
        self._text_cache: str | None = ""

    def apply(self, event: StreamEvent) -> None:
        """Take one event into account."""
        kind = event.kind
        if kind == "text" or kind == "reasoning" or kind == "tool_call":
            t = event.t_ns
            if t != self.last_output_ns:
                self.chunk_ns.append(t)
                self.last_output_ns = t
            if self.first_output_ns is None:
                self.first_output_ns = t
            if kind == "text":
                assert isinstance(event, TextDelta)
                self._text.append(event.text)
                self._text_cache = None
                if self.first_text_ns is None:
                    self.first_text_ns = t
            elif kind == "reasoning":
                assert isinstance(event, ReasoningDelta)
                self._reasoning.append(event.text)
            else:
                assert isinstance(event, ToolCallDelta)
                self._tool_fragment(event)
                if self.first_text_ns is None:
                    self.first_text_ns = t
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Error):
            self.error = event
        elif isinstance(event, Finish):
            self.finish_reason = event.reason
            self.end_ns = event.t_ns

    def _tool_fragment(self, d: ToolCallDelta) -> None:
        call = self._calls.setdefault(d.index, [None, None, ""])
        if d.id:
            call[0] = d.id
        if d.name:
            call[1] = (call[1] or "") + d.name
        call[2] = (call[2] or "") + d.arguments

    @property
    def text(self) -> str:
        """The answer's text so far."""
        if self._text_cache is None:
            self._text_cache = "".join(self._text)
            self._text = [self._text_cache]
        return self._text_cache

    @property
    def reasoning(self) -> str:
        """The reasoning so far."""
        return "".join(self._reasoning)

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """Tool calls assembled from their fragments, in index order."""
        return tuple(
            ToolCall(index=i, id=c[0] or f"call_{i}", name=c[1] or "", arguments=c[2] or "")
            for i, c in sorted(self._calls.items())
        )

    @property
    def has_output(self) -> bool:
        """Whether any text, reasoning or tool call has arrived."""
        return self.first_output_ns is not None

    def timings(self) -> Timings:
        """The metrics as they stand now."""
        start = self.request_start_ns
        usage = self.usage
        if usage is not None and usage.completion_tokens is not None:
            tokens, source = usage.completion_tokens, usage.source
        else:
            tokens, source = len(self.chunk_ns), "chunks"
        return Timings(
            request_start_ns=start,
            headers_s=seconds(start, self.headers_ns),
            ttft_s=seconds(start, self.first_text_ns),
            ttfo_s=seconds(start, self.first_output_ns),
            e2e_s=seconds(start, self.last_output_ns),
            duration_s=seconds(start, self.end_ns),
            output_tokens=tokens,
            token_source=source,
            chunk_offsets_s=tuple((t - start) * 1e-9 for t in self.chunk_ns),
            attempts=self.attempts,
        )
