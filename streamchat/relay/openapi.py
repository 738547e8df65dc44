"""The relay's OpenAPI 3.1 schema, built from its configuration so the caps it states are the real ones."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .session import Relay

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": "string"},
            },
        }
    },
}


def _sse(*events: str) -> dict[str, Any]:
    """An event stream, each event described (OpenAPI 3.2's ``itemSchema``, read by 3.1 tools too)."""
    item = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {"type": "string"},
            "event": {"enum": list(events)},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
    }
    return {"text/event-stream": {"itemSchema": item}}


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if retry_after:
        out["headers"] = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds to wait"}}
    return out


def _refusals(*statuses: int) -> dict[str, Any]:
    table = {
        400: _error("invalid request: a bad field, too many messages, max_tokens over the cap, an empty prompt"),
        401: _error("missing, invalid or expired key or token"),
        404: _error("unknown model"),
        413: _error("request body over max_body_bytes"),
        429: _error("requests or tokens per minute used up (Retry-After), or too many open streams for this key", True),
        502: _error("the provider failed before any output"),
        503: _error("the relay is at its stream limit, shutting down, or its provider is rate limited", True),
        504: _error("the provider timed out before any output"),
    }
    return {str(s): table[s] for s in statuses}


def _message_schema() -> dict[str, Any]:
    text_part = {
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    }
    return {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant"]},
            "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": text_part}]},
        },
    }


def _request_schema(relay: Relay, *, model_required: bool) -> dict[str, Any]:
    limits = relay.config.limits
    return {
        "type": "object",
        "required": ["model", "messages"] if model_required else ["messages"],
        "properties": {
            "model": {"enum": list(relay.models.names)},
            "messages": {
                "type": "array",
                "minItems": 1,
                "maxItems": limits.max_messages,
                "items": {"$ref": "#/components/schemas/Message"},
                "contains": {
                    "type": "object",
                    "properties": {"role": {"const": "user"}, "content": {"type": "string", "pattern": "\\S"}},
                    "required": ["role", "content"],
                },
            },
            "stream": {"type": "boolean"},
            "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": limits.max_tokens},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "seed": {"type": "integer", "minimum": -(2**62), "maximum": 2**62},
            "stop": {"anyOf": [
                {"type": "string"},  # "" means no stop sequence, as the validator treats it
                {"type": "array", "maxItems": 4, "items": {"type": "string", "minLength": 1}},
            ]},
            "n": {"const": 1},
        },
    }


def openapi_schema(relay: Relay) -> dict[str, Any]:
    """The schema; limits in it (``maxItems``, ``maximum``) are this relay's."""
    security: list[dict[str, list[str]]] = [{"bearer": []}]
    limits = relay.config.limits
    return {
        "openapi": "3.1.0",
        "info": {"title": "streamchat relay", "version": "1", "description": "See docs/relay.md."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _ERROR,
                "Message": _message_schema(),
                "ChatRequest": _request_schema(relay, model_required=True),
                "StreamRequest": _request_schema(relay, model_required=False),
            },
        },
        "paths": {
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "security": security,
                    "responses": {"200": {"description": "the models served",
                                          "content": {"application/json": {"schema": {"type": "object"}}}},
                                  **_refusals(401)},
                }
            },
            "/v1/chat/completions": {
                "post": {
                    "operationId": "createChatCompletion",
                    "security": security,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}}},
                    "responses": {
                        "200": {"description": "a chat.completion, or chat.completion.chunk events when stream is true",
                                "content": {"application/json": {"schema": {"type": "object"}}, **_sse("message")}},
                        **_refusals(400, 401, 404, 413, 429, 502, 503, 504),
                    },
                }
            },
            "/v1/stream": {
                "post": {
                    "operationId": "streamNDJSON",
                    "security": security,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StreamRequest"}}}},
                    "responses": {
                        "200": {"description": "newline-delimited JSON events: start, text, reasoning, tool_call, ping, error, done",
                                "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
                        **_refusals(400, 401, 404, 413, 429, 503),
                    },
                }
            },
            "/v1/events": {
                "get": {
                    "operationId": "streamEvents",
                    "security": [*security, {}],
                    "parameters": [
                        {"name": "prompt", "in": "query", "required": True,
                         "schema": {"type": "string", "pattern": "\\S", "maxLength": limits.max_body_bytes // 8}},
                        {"name": "system", "in": "query", "schema": {"type": "string"}},
                        {"name": "model", "in": "query", "schema": {"enum": list(relay.models.names)}},
                        {"name": "max_tokens", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": limits.max_tokens}},
                        {"name": "temperature", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 2}},
                        {"name": "token", "in": "query", "description": "a token from POST /v1/tokens (EventSource cannot send headers)",
                         "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {"description": "events text, reasoning, tool_call, metrics, error, done; heartbeat comments",
                                "content": _sse("text", "reasoning", "tool_call", "metrics", "error", "done")},
                        "204": {"description": "a reconnect (Last-Event-ID): the relay does not replay or regenerate"},
                        **_refusals(400, 401, 404, 413, 429, 503),
                    },
                }
            },
            "/v1/tokens": {
                "post": {
                    "operationId": "createToken",
                    "security": security,
                    "responses": {"200": {"description": "a short-lived token for URLs",
                                          "content": {"application/json": {"schema": {"type": "object"}}}},
                                  **_refusals(401)},
                }
            },
            "/health": {
                "get": {
                    "operationId": "health",
                    "responses": {"200": {"description": "serving", "content": {"application/json": {"schema": {"type": "object"}}}},
                                  "503": {"description": "draining for shutdown", "content": {"application/json": {"schema": {"type": "object"}}}}},
                }
            },
        },
    }
