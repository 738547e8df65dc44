"""OpenAI ``chat.completion.chunk`` dicts to events: pure, no I/O.

Every provider speaks this one dialect to the core (llama-cpp-python and the
scripted provider produce the same dicts), so reasoning, ``<think>`` tags and
tool-call fragments are handled once, here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from ._events import ReasoningDelta, StreamEvent, TextDelta, TokenSource, ToolCallDelta, Usage
from .errors import ProtocolError, UpstreamError, redact

_OPEN, _CLOSE = "<think>", "</think>"

DONE: Mapping[str, Any] = {"choices": []}
"""Stands for ``data: [DONE]``: a source yields it when the server said the answer is complete."""

NOT_JSON = "malformed chunk, not JSON"
NOT_AN_OBJECT = "malformed chunk, not a JSON object"


def parse_data(data: str, redact: Callable[[str], str] = str) -> Mapping[str, Any]:
    """One SSE ``data:`` payload as a chunk dict, or :data:`DONE`; ``redact`` cleans what an error quotes."""
    if data == "[DONE]":
        return DONE
    try:
        chunk = json.loads(data)
    except ValueError:
        raise ProtocolError(redact(f"{NOT_JSON}: {data[:80]!r}")) from None
    if not isinstance(chunk, dict):
        raise ProtocolError(redact(f"{NOT_AN_OBJECT}: {data[:80]!r}"))
    return chunk


class ThinkSplitter:
    """Split ``<think>…</think>`` out of content that arrives in arbitrary pieces."""

    __slots__ = ("_held", "_inside")

    def __init__(self) -> None:
        self._inside = False
        self._held = ""

    def feed(self, text: str) -> list[tuple[bool, str]]:
        """Return ``(is_reasoning, text)`` pieces; a possible partial tag is held back."""
        if not self._held and "<" not in text:
            return [(self._inside, text)] if text else []
        text = self._held + text
        self._held = ""
        out: list[tuple[bool, str]] = []
        while text:
            tag = _CLOSE if self._inside else _OPEN
            at = text.find(tag)
            if at >= 0:
                if at:
                    out.append((self._inside, text[:at]))
                self._inside = not self._inside
                text = text[at + len(tag) :]
                continue
            keep = _partial_suffix(text, tag)
            if keep:
                self._held = text[-keep:]
                text = text[:-keep]
            if text:
                out.append((self._inside, text))
            break
        return out

    def flush(self) -> list[tuple[bool, str]]:
        """End of stream: whatever was held back was not a tag after all."""
        held, self._held = self._held, ""
        return [(self._inside, held)] if held else []


def _partial_suffix(text: str, tag: str) -> int:
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ChunkDecoder:
    """Turn chunk dicts into events; remembers the finish reason and whether usage came."""

    __slots__ = ("_think", "finish_reason", "secrets")

    def __init__(self, *, secrets: tuple[str, ...] = ()) -> None:
        self._think = ThinkSplitter()
        self.finish_reason: str | None = None
        self.secrets = secrets

    def feed(self, chunk: Mapping[str, Any], t_ns: int) -> list[StreamEvent]:
        """Events carried by one chunk, stamped ``t_ns``."""
        try:
            choices = chunk.get("choices")
        except AttributeError:
            raise ProtocolError(f"malformed chunk: expected a JSON object, got {_preview(chunk)}") from None
        if chunk is DONE:
            self.finish_reason = self.finish_reason or "stop"
            return []
        if chunk.get("error"):
            raise UpstreamError(self._error_message(chunk["error"]))
        events: list[StreamEvent] = []
        if choices:
            try:
                choice = choices[0]
                delta = choice.get("delta") or {}
                finish = choice.get("finish_reason")
            except (AttributeError, IndexError, KeyError, TypeError):
                raise ProtocolError(f"malformed chunk: bad 'choices' in {_preview(chunk)}") from None
            if delta:
                self._delta(delta, t_ns, events)
            if finish:
                self.finish_reason = str(finish)
        elif choices is None and "usage" not in chunk:
            raise ProtocolError(f"malformed chunk: no 'choices' in {_preview(chunk)}")
        usage = chunk.get("usage")
        if usage:
            said = usage.get("streamchat_source")
            source: TokenSource = said if said in ("tokenizer", "chunks") else "server"
            events.append(
                Usage(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")), t_ns, source)
            )
        return events

    def flush(self, t_ns: int) -> list[StreamEvent]:
        """End of stream: release text held back by the ``<think>`` splitter."""
        return [_text(r, s, t_ns) for r, s in self._think.flush()]

    def _delta(self, delta: Mapping[str, Any], t_ns: int, events: list[StreamEvent]) -> None:
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning:
            events.append(ReasoningDelta(str(reasoning), t_ns))
        content = delta.get("content")
        if content:
            for is_reasoning, text in self._think.feed(str(content)):
                events.append(_text(is_reasoning, text, t_ns))
        calls = delta.get("tool_calls")
        if calls:
            for call in calls:
                fn = call.get("function") or {}
                events.append(
                    ToolCallDelta(
                        index=int(call.get("index", 0)),
                        t_ns=t_ns,
                        id=call.get("id"),
                        name=fn.get("name"),
                        arguments=fn.get("arguments") or "",
                    )
                )

    def _error_message(self, error: Any) -> str:
        if isinstance(error, Mapping):
            text = str(error.get("message") or error.get("type") or "unknown error")
        else:
            text = str(error)
        return "the provider reported an error mid-stream: " + redact(text, self.secrets)[:300]


def _text(is_reasoning: bool, text: str, t_ns: int) -> StreamEvent:
    return ReasoningDelta(text, t_ns) if is_reasoning else TextDelta(text, t_ns)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _preview(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."
