"""Pure encoders: streamchat events to bytes on the wire, in three dialects.

- :class:`OpenAIChunks`: OpenAI's ``chat.completion.chunk`` server-sent events,
  usage chunk and ``[DONE]`` included, so the official SDK reads them unchanged.
- :class:`EventSourceFrames`: the browser flavour of SSE, with ``id``s, a
  ``retry`` hint, heartbeat comments and one event type per kind: ``text``,
  ``reasoning``, ``tool_call``, ``metrics``, ``error``, ``done``.
- :class:`NDJSONFrames`: the same vocabulary as JSON lines, for plain chunked HTTP.

WebSocket messages use the same vocabulary (:func:`output_payload` and friends).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from .._events import ReasoningDelta, TextDelta, ToolCallDelta
from .._sse import encode_comment, encode_sse
from ..timing import Timings
from .errors import PublicError, error_body

Output = TextDelta | ReasoningDelta | ToolCallDelta
OPENAI_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter"})


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a relayed stream ended, and what it cost."""

    request_id: str
    finish_reason: str
    prompt_tokens: int
    prompt_tokens_source: str
    completion_tokens: int
    completion_tokens_source: str
    timings: Timings
    error: PublicError | None = None
    streamed: bool = False
    """Whether any output had been sent before the end."""

    def usage(self) -> dict[str, Any]:
        """OpenAI's usage object; ``streamchat_source`` says where the completion count came from."""
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.completion_tokens_source != "server":
            out["streamchat_source"] = self.completion_tokens_source
        return out


class Frames(Protocol):
    """One wire dialect for a streamed answer."""

    media_type: str
    hold_headers: bool
    """Whether to wait for the first event before sending the status (to report early failures as HTTP errors)."""
    wants_metrics: bool

    def head(self) -> bytes: ...

    def output(self, event: Output) -> bytes: ...

    def metrics(self, timings: Timings) -> bytes: ...

    def tail(self, outcome: Outcome) -> bytes: ...

    def heartbeat(self) -> bytes: ...


# -- the shared vocabulary (event source, NDJSON, WebSocket) --------------------
def output_payload(event: Output) -> dict[str, Any]:
    if isinstance(event, ToolCallDelta):
        return {"type": "tool_call", "index": event.index, "id": event.id, "name": event.name, "arguments": event.arguments}
    return {"type": event.kind, "text": event.text}


def metrics_payload(timings: Timings) -> dict[str, Any]:
    """The numbers a page shows while streaming."""
    return {
        "type": "metrics",
        "ttft_s": _round(timings.ttft_s),
        "output_tokens": timings.output_tokens,
        "token_source": timings.token_source,
        "tokens_per_s": _round(timings.tokens_per_s, 1),
        "decode_tokens_per_s": _round(timings.decode_tokens_per_s, 1),
    }


def error_payload(error: PublicError, *, streamed: bool) -> dict[str, Any]:
    return {
        "type": "error", "code": error.code, "message": error.message,
        "retryable": error.retryable and not streamed, "streamed": streamed,
    }


def done_payload(outcome: Outcome) -> dict[str, Any]:
    timings = {k: _round(v) if isinstance(v, float) else v for k, v in outcome.timings.as_dict().items()}
    return {
        "type": "done",
        "request_id": outcome.request_id,
        "finish_reason": outcome.finish_reason,
        "usage": {**outcome.usage(), "prompt_tokens_source": outcome.prompt_tokens_source},
        "metrics": timings,
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


class EventSourceFrames:
    """SSE for ``EventSource``: numbered events, a reconnect hint, heartbeats."""

    media_type = "text/event-stream; charset=utf-8"
    hold_headers = False
    wants_metrics = True

    def __init__(self, retry_ms: int = 3000) -> None:
        self.retry_ms = retry_ms
        self.sent = 0

    def _event(self, payload: dict[str, Any]) -> bytes:
        self.sent += 1
        kind = payload.pop("type")
        return encode_sse(_json(payload), event=kind, id=str(self.sent))

    def head(self) -> bytes:
        return f"retry: {int(self.retry_ms)}\n\n".encode()

    def output(self, event: Output) -> bytes:
        if isinstance(event, TextDelta):
            # The hot path, one per token: JSON never holds a raw line break, so no splitting is needed.
            self.sent += 1
            return b"id: %d\nevent: text\ndata: {\"text\":%s}\n\n" % (self.sent, _json(event.text).encode())
        return self._event(output_payload(event))

    def metrics(self, timings: Timings) -> bytes:
        return self._event(metrics_payload(timings))

    def tail(self, outcome: Outcome) -> bytes:
        out = b""
        if outcome.error is not None:
            out += self._event(error_payload(outcome.error, streamed=outcome.streamed))
        return out + self._event(done_payload(outcome))

    def heartbeat(self) -> bytes:
        return encode_comment("ping")


class NDJSONFrames:
    """One JSON object per line; a ``ping`` line keeps idle connections alive."""

    media_type = "application/x-ndjson"
    hold_headers = False
    wants_metrics = False

    def __init__(self, request_id: str, model: str) -> None:
        self.request_id = request_id
        self.model = model

    def head(self) -> bytes:
        return (_json({"type": "start", "request_id": self.request_id, "model": self.model}) + "\n").encode()

    def output(self, event: Output) -> bytes:
        return (_json(output_payload(event)) + "\n").encode()

    def metrics(self, timings: Timings) -> bytes:
        return (_json(metrics_payload(timings)) + "\n").encode()

    def tail(self, outcome: Outcome) -> bytes:
        lines = []
        if outcome.error is not None:
            lines.append(_json(error_payload(outcome.error, streamed=outcome.streamed)))
        lines.append(_json(done_payload(outcome)))
        return ("\n".join(lines) + "\n").encode()

    def heartbeat(self) -> bytes:
        return b'{"type":"ping"}\n'


class OpenAIChunks:
    """OpenAI's streamed chat completion, chunk by chunk."""

    media_type = "text/event-stream; charset=utf-8"
    hold_headers = True
    wants_metrics = False

    def __init__(self, completion_id: str, model: str, created: int, *, include_usage: bool) -> None:
        self.include_usage = include_usage
        head = _json({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model})
        # Every chunk shares its opening: encode it once.
        self._prefix = 'data: ' + head[:-1] + ',"choices":[{"index":0,"delta":'
        self._usage_prefix = 'data: ' + head[:-1] + ',"choices":[],"usage":'

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return (self._prefix + _json(delta) + ',"finish_reason":' + _json(finish) + "}]}\n\n").encode()

    def head(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def output(self, event: Output) -> bytes:
        if isinstance(event, TextDelta):
            return self._chunk({"content": event.text})
        if isinstance(event, ReasoningDelta):
            return self._chunk({"reasoning_content": event.text})
        call: dict[str, Any] = {"index": event.index, "type": "function", "function": {"arguments": event.arguments}}
        if event.id:
            call["id"] = event.id
        if event.name:
            call["function"]["name"] = event.name
        return self._chunk({"tool_calls": [call]})

    def metrics(self, timings: Timings) -> bytes:
        return b""

    def tail(self, outcome: Outcome) -> bytes:
        if outcome.error is not None or outcome.finish_reason not in OPENAI_REASONS:
            # An error payload: the SDK raises it; no [DONE], the answer is not complete.
            error = outcome.error
            body = error_body(error.code, error.message, error.type) if error else error_body(
                outcome.finish_reason, "the stream ended early", "server_error"
            )
            return encode_sse(_json(body))
        out = self._chunk({}, outcome.finish_reason)
        if self.include_usage:
            out += (self._usage_prefix + _json(outcome.usage()) + "}\n\n").encode()
        return out + b"data: [DONE]\n\n"

    def heartbeat(self) -> bytes:
        return encode_comment("ping")


def completion_body(
    completion_id: str, model: str, created: int, outcome: Outcome, text: str, reasoning: str,
    tool_calls: list[dict[str, Any]],
) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": outcome.finish_reason, "logprobs": None}],
        "usage": outcome.usage(),
    }
