"""The relay server: any provider as an OpenAI-compatible stream, over SSE, WebSocket and NDJSON.

Starlette and uvicorn are imported only when the app is built or served, so
``import streamchat.relay`` stays light. See docs/relay.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .auth import ClientKey, KeyRing, load_keys
from .config import RelayConfig, load_config
from .limits import Limits
from .usage import UsageLog, UsageRecord

if TYPE_CHECKING:
    from .app import create_app
    from .server import run
    from .testing import ServedRelay

_LAZY = {"create_app": ".app", "run": ".server", "ServedRelay": ".testing"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ClientKey",
    "KeyRing",
    "Limits",
    "RelayConfig",
    "ServedRelay",
    "UsageLog",
    "UsageRecord",
    "create_app",
    "load_config",
    "load_keys",
    "run",
]
