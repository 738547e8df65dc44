"""Gradio adapter: provider streams as coalesced ``gr.Chatbot`` / ``gr.ChatInterface`` updates.

Nothing here imports ``gradio`` until it is needed (only raising ``gr.Error``
does). The pieces:

- :func:`chat_fn` — a ready ``fn`` for ``gr.ChatInterface``.
- :func:`astream_answer` / :func:`stream_answer` — one answer as a generator of
  Chatbot messages, at most ``rate`` frames a second, the final state always
  painted; :func:`arace` — several answers side by side.
- :class:`AnswerView` — how an answer is drawn: reasoning as a collapsible
  thought, tool calls, errors with the partial text kept, a latency line.
- :class:`ChatSession` — lets Stop close a session's streams itself;
  :class:`Limits` / :func:`check_input` — input length and rate limits;
  :class:`Turns` — queue positions for the one-at-a-time embedded model.
- :func:`to_prompt` / :func:`without_last_answer` — Chatbot history to messages.
"""

from __future__ import annotations

from .adapter import arace, astream_answer, chat_fn, stream_answer
from .history import content_text, is_annotation, to_prompt, without_last_answer
from .session import ChatSession, InputRejected, Limits, Turns, check_input
from .view import AnswerView, MessageDict, Metadata, latency_line, note, tidy_markdown

__all__ = [
    "AnswerView",
    "ChatSession",
    "InputRejected",
    "Limits",
    "MessageDict",
    "Metadata",
    "Turns",
    "arace",
    "astream_answer",
    "chat_fn",
    "check_input",
    "content_text",
    "is_annotation",
    "latency_line",
    "note",
    "stream_answer",
    "tidy_markdown",
    "to_prompt",
    "without_last_answer",
]
