"""Request bodies to :class:`ChatRequest`: every field checked, every refusal saying which and why.

Only the fields listed here are read; anything else is ignored, and nothing a
caller sends can reach the provider's connection settings (no ``base_url``,
``api_base`` or headers: LiteLLM's SSRF lesson).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..messages import ChatRequest, Message, Role
from .limits import Limits, Refusal, Rejected, cap_max_tokens, check_messages

_ROLES: dict[str, Role] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_PASSED_THROUGH = ("tools", "tool_choice", "response_format", "presence_penalty", "frequency_penalty")


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A checked request, ready to run."""

    request: ChatRequest
    stream: bool = True
    include_usage: bool = False
    prompt_chars: int = 0

    @property
    def model(self) -> str:
        return self.request.model or ""


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> Rejected:
    """A 400 naming the offending field."""
    return Rejected(Refusal(400, code, message, type="invalid_request_error", param=param))


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong with it."""
    if not body.strip():
        raise invalid("the request body is empty: send a JSON object", code="invalid_json")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"the request body is not valid JSON ({_short(exc)})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise invalid(f"the request body must be a JSON object, not {_kind(data)}", code="invalid_json")
    return data


class Models:
    """The model names a relay serves; the first is the default."""

    def __init__(self, names: Sequence[str]) -> None:
        if not names:
            raise ConfigError("a relay needs at least one model name")
        self.names = tuple(names)

    def pick(self, requested: object, *, required: bool) -> str:
        if requested is None:
            if required:
                raise invalid("model is required (GET /v1/models lists them)", "model", "missing_required_parameter")
            return self.names[0]
        if not isinstance(requested, str) or not requested:
            raise invalid(f"model must be a non-empty string, not {_kind(requested)}", "model")
        if requested not in self.names:
            raise Rejected(
                Refusal(
                    404,
                    "model_not_found",
                    f"model {requested[:80]!r} is not served here; available: {', '.join(self.names)}",
                    type="invalid_request_error",
                    param="model",
                )
            )
        return requested


def parse_chat(
    data: Mapping[str, Any], *, limits: Limits, models: Models, model_required: bool = True, allow_prompt: bool = False
) -> ChatCall:
    """A chat-completions body (or, with ``allow_prompt``, ``{"prompt": "..."}``) as a :class:`ChatCall`."""
    model = models.pick(data.get("model"), required=model_required)
    if allow_prompt and "prompt" in data and "messages" not in data:
        prompt = data["prompt"]
        if not isinstance(prompt, str):
            raise invalid(f"prompt must be a string, not {_kind(prompt)}", "prompt")
        system = data.get("system")
        if system is not None and not isinstance(system, str):
            raise invalid(f"system must be a string, not {_kind(system)}", "system")
        messages = ([Message("system", system)] if system else []) + [Message("user", prompt)]
    else:
        messages = parse_messages(data.get("messages"), limits)
    if not any(m.role == "user" and m.content.strip() for m in messages):
        param = "prompt" if allow_prompt and "messages" not in data else "messages"
        raise invalid("the prompt is empty: give at least one non-blank user message", param, "empty_prompt")
    stream = _optional(data, "stream", bool, False)
    include_usage = False
    options = data.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise invalid(f"stream_options must be an object, not {_kind(options)}", "stream_options")
        include_usage = _optional(options, "include_usage", bool, False, "stream_options.include_usage")
    n = data.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise invalid("n must be 1: the relay streams one choice", "n", "unsupported_value")
    requested = _max_tokens(data)
    max_tokens = cap_max_tokens(requested, limits)
    if isinstance(max_tokens, Refusal):
        raise Rejected(max_tokens)
    extra = {name: data[name] for name in _PASSED_THROUGH if data.get(name) is not None}
    _check_extra(extra)
    try:
        request = ChatRequest(
            messages=tuple(messages),
            model=model,
            temperature=_number(data, "temperature", 0.0, 2.0),
            top_p=_number(data, "top_p", 0.0, 1.0, low_open=True),
            max_tokens=max_tokens,
            seed=_int(data, "seed"),
            stop=_stop(data.get("stop")),
            extra=extra,
        )
    except ConfigError as exc:
        raise invalid(str(exc)) from None
    return ChatCall(request, stream, include_usage, sum(len(m.content) for m in messages))


def parse_messages(raw: object, limits: Limits) -> list[Message]:
    """``messages``: text messages with roles system, developer, user or assistant."""
    if not isinstance(raw, list):
        what = "missing" if raw is None else f"{_kind(raw)}, not a list"
        raise invalid(f"messages is {what}: send a list of {{role, content}} objects", "messages")
    refusal = check_messages(len(raw), limits)
    if refusal is not None:
        raise Rejected(refusal)
    if not raw:
        raise invalid("messages is empty: send at least one user message", "messages", "empty_prompt")
    out: list[Message] = []
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"{where} must be an object with role and content, not {_kind(item)}", where)
        role = item.get("role")
        if role in ("tool", "function") or item.get("tool_calls") or item.get("function_call"):
            raise invalid(
                f"{where}: tool calls and tool results in messages are not supported by this relay", where,
                "unsupported_value",
            )
        if not isinstance(role, str) or role not in _ROLES:
            raise invalid(f"{where}.role must be one of {', '.join(_ROLES)}, not {_preview(role)}", f"{where}.role")
        out.append(Message(_ROLES[role], _content(item.get("content"), f"{where}.content")))
    return out


def _content(raw: object, where: str) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        texts = []
        for j, part in enumerate(raw):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid(
                    f"{where}[{j}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported",
                    f"{where}[{j}]",
                    "unsupported_value",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise invalid(f"{where} must be a string or a list of text parts, not {_kind(raw)}", where)


def _max_tokens(data: Mapping[str, Any]) -> int | None:
    values = {name: _int(data, name, low=1) for name in ("max_tokens", "max_completion_tokens")}
    given = {k: v for k, v in values.items() if v is not None}
    if len(given) == 2 and given["max_tokens"] != given["max_completion_tokens"]:
        raise invalid("max_tokens and max_completion_tokens disagree: send one of them", "max_tokens")
    return next(iter(given.values()), None)


def _stop(raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,) if raw else ()
    if isinstance(raw, list) and len(raw) <= 4 and all(isinstance(s, str) and s for s in raw):
        return tuple(raw)
    raise invalid("stop must be a string or a list of up to 4 non-empty strings", "stop")


def _check_extra(extra: Mapping[str, Any]) -> None:
    if "tools" in extra and not (isinstance(extra["tools"], list) and all(isinstance(t, dict) for t in extra["tools"])):
        raise invalid("tools must be a list of objects", "tools")
    if "tool_choice" in extra and not isinstance(extra["tool_choice"], str | dict):
        raise invalid("tool_choice must be a string or an object", "tool_choice")
    if "response_format" in extra and not isinstance(extra["response_format"], dict):
        raise invalid("response_format must be an object", "response_format")
    for name in ("presence_penalty", "frequency_penalty"):
        if name in extra:
            _number(extra, name, -2.0, 2.0)


def _optional(data: Mapping[str, Any], name: str, kind: type[bool], default: bool, param: str | None = None) -> bool:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise invalid(f"{param or name} must be true or false, not {_preview(value)}", param or name)
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(data: Mapping[str, Any], name: str, low: int | None = None) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        value = int(value)
    if not _is_int(value) or abs(value) >= 2**63:
        raise invalid(f"{name} must be an integer, not {_preview(value)}", name)
    if low is not None and value < low:
        raise invalid(f"{name} must be at least {low}, not {value}", name)
    return int(value)


def _number(
    data: Mapping[str, Any], name: str, low: float, high: float, *, low_open: bool = False
) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(f"{name} must be a number, not {_preview(value)}", name)
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise invalid(f"{name} must be in {bracket}{low:g}, {high:g}], not {value:g}", name)
    return float(value)


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def _preview(value: object) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | bool | type(None)) else _kind(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _short(exc: Exception) -> str:
    return str(exc).split(":", 1)[0][:80]
