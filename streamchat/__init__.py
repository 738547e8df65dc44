"""streamchat: provider streams as typed, timed events."""

from __future__ import annotations

from ._events import (
    Error,
    Finish,
    FinishReason,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    TokenSource,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from ._stream import AsyncStream, Stream, astream, stream
from .messages import ChatRequest, Message
from .options import RetryPolicy, SystemClock, Timeouts
from .providers.scripted import Fault, ScriptedProvider
from .timing import Timings


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext streamchat``: registers the ``%%chat`` cell magic (needs the notebook extra)."""
    import importlib

    importlib.import_module("streamchat.notebook.magic").load_ipython_extension(ipython)

__all__ = [
    "AsyncStream",
    "ChatRequest",
    "Error",
    "Fault",
    "Finish",
    "FinishReason",
    "Message",
    "ReasoningDelta",
    "RetryPolicy",
    "ScriptedProvider",
    "Stream",
    "StreamEvent",
    "SystemClock",
    "TextDelta",
    "Timeouts",
    "Timings",
    "TokenSource",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "astream",
    "stream",
]
