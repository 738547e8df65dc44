"""A ``gr.Chatbot`` value and the conversation it holds: pure, no Gradio import.

Gradio hands history back in its normalized form (``content`` is a list of
``{"type": "text", "text": ...}`` parts) or as it was given (a string); both are
read. Messages with ``metadata.title`` are annotations drawn by
:class:`~.view.AnswerView` (thoughts, tool calls, errors, latency lines) and
are not part of the conversation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..messages import Message

History = Sequence[Mapping[str, Any]]


def is_annotation(message: Mapping[str, Any]) -> bool:
    """Whether a Chatbot message is drawn by the UI rather than said by someone."""
    meta = message.get("metadata")
    return isinstance(meta, Mapping) and bool(meta.get("title"))


def content_text(content: Any) -> str:
    """The text of a message's content, whichever form Gradio used; files are skipped."""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        return str(content["text"]) if content.get("type", "text") == "text" and "text" in content else ""
    if isinstance(content, Sequence):
        return "".join(content_text(part) for part in content)
    return ""


def to_prompt(history: History) -> list[Message]:
    """The conversation in a Chatbot value, as chat messages for the next request."""
    out: list[Message] = []
    for message in history:
        role = message.get("role")
        if role not in ("user", "assistant", "system") or is_annotation(message):
            continue
        text = content_text(message.get("content"))
        if not text and role != "user":
            continue
        if out and out[-1].role == role == "assistant":
            # One answer drawn as several messages is still one turn.
            out[-1] = Message("assistant", out[-1].content + "\n\n" + text)
            continue
        out.append(Message(role, text))
    return out


def last_user_turn(history: History) -> int | None:
    """The index of the last user message, or None."""
    for i in range(len(history) - 1, -1, -1):
        if history[i].get("role") == "user":
            return i
    return None


def without_last_answer(history: History) -> list[Mapping[str, Any]]:
    """The history up to and including the last user message: what a retry sends again."""
    i = last_user_turn(history)
    return [] if i is None else list(history[: i + 1])
