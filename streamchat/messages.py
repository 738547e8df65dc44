"""The request side: chat messages and sampling parameters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError

Role = Literal["system", "user", "assistant", "tool"]
_ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message."""

    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        """The OpenAI wire shape."""
        return {"role": self.role, "content": self.content}


Prompt = str | Message | Sequence[Message | Mapping[str, Any]]


def to_messages(prompt: Prompt, *, system: str | None = None) -> tuple[Message, ...]:
    """Accept a string, a message, or a list of messages/dicts; reject anything unusable."""
    if isinstance(prompt, str):
        items: Sequence[Message | Mapping[str, Any]] = [Message("user", prompt)]
    elif isinstance(prompt, Message):
        items = [prompt]
    else:
        items = prompt
    out = [Message("system", system)] if system else []
    for i, item in enumerate(items):
        if isinstance(item, Message):
            msg = item
        elif isinstance(item, Mapping):
            role, content = item.get("role"), item.get("content")
            if role not in _ROLES:
                raise ConfigError(f"message {i}: role must be one of {', '.join(_ROLES)}, not {role!r}")
            if not isinstance(content, str):
                raise ConfigError(f"message {i}: content must be a string, not {type(content).__name__}")
            msg = Message(role, content)
        else:
            raise ConfigError(f"message {i}: expected a dict or Message, not {type(item).__name__}")
        out.append(msg)
    if not any(m.role == "user" and m.content.strip() for m in out):
        raise ConfigError("the prompt is empty: give at least one non-blank user message")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """Everything a provider needs to start one answer."""

    messages: tuple[Message, ...]
    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Passed through to the provider untouched (``tools``, ``extra_body`` …)."""

    def __post_init__(self) -> None:
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise ConfigError(f"temperature must be between 0 and 2, not {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, not {self.max_tokens}")

    def sampling(self) -> dict[str, Any]:
        """The sampling parameters that were set, in OpenAI's names."""
        out: dict[str, Any] = {}
        for name in ("temperature", "top_p", "max_tokens", "seed"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.stop:
            out["stop"] = list(self.stop)
        return out
