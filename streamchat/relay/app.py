"""The relay's routes: a Starlette app in front of any provider.

=======================  ======  ===========================================
``/v1/chat/completions``  POST    OpenAI's wire format, streamed or not
``/v1/models``            GET     the models served
``/v1/events``            GET     ``EventSource``-friendly SSE for one prompt
``/v1/stream``            POST    the same events as NDJSON over chunked HTTP
``/v1/ws``                WS      prompt in, deltas out, stop at any time
``/v1/tokens``            POST    a short-lived token for URLs (browsers)
``/``                     GET     the demo page; ``/health``, ``/openapi.json``
=======================  ======  ===========================================
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from ..errors import ConfigError
from ..options import Clock, SystemClock
from ..providers.base import Provider
from .auth import AuthFailure, ClientKey
from .config import RelayConfig
from .limits import Refusal, Rejected, check_body_size
from .openapi import openapi_schema
from .page import FAVICON_SVG, PAGE_CSS, PAGE_JS, SECURITY_HEADERS, page_html
from .responses import CompletionResponse, StreamResponse, json_error
from .session import Relay, Session, new_request_id
from .usage import UsageLog
from .validate import ChatCall, invalid, parse_chat, parse_json
from .wire import EventSourceFrames, NDJSONFrames, OpenAIChunks
from .ws import websocket_endpoint

log = logging.getLogger("streamchat.relay")
EXPOSED = ("X-Request-Id", "Retry-After", "x-should-retry", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
           "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens")


def refusal_response(refusal: Refusal, request_id: str) -> Response:
    """The documented status and OpenAI-shaped body for a refused request."""
    headers = {"X-Request-Id": request_id}
    if refusal.retry_after is not None:
        headers["Retry-After"] = refusal.retry_after
    if refusal.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="streamchat"'
    return json_error(refusal.status, refusal.code, refusal.message, refusal.type, headers=headers, param=refusal.param)


def _relay(request: Request) -> Relay:
    relay: Relay = request.app.state.relay
    return relay


def _authenticate(relay: Relay, request: Request, *, token: str | None = None) -> ClientKey:
    try:
        return relay.keys.authenticate(request.headers.get("authorization"), token)
    except AuthFailure as exc:
        raise Rejected(Refusal(401, exc.code, exc.message, type="authentication_error")) from None


async def _read_body(request: Request, relay: Relay) -> bytes:
    limits = relay.config.limits
    length = request.headers.get("content-length", "")
    if length.isdigit() and (refusal := check_body_size(int(length), limits)) is not None:
        raise Rejected(refusal)
    body = bytearray()
    async for part in request.stream():
        body += part
        if (refusal := check_body_size(len(body), limits)) is not None:
            raise Rejected(refusal)
    return bytes(body)


def _stream_headers(relay: Relay, key: ClientKey, request_id: str) -> dict[str, str]:
    return {"X-Request-Id": request_id, **{k: str(v) for k, v in relay.limiter.remaining(key.id).items()}}


async def _admitted(
    request: Request, endpoint: str, parse: Callable[[Relay, Request], Awaitable[ChatCall]]
) -> tuple[Session, dict[str, str]] | Response:
    """Authenticate, parse, check and admit a request: its session and headers, or the refusal to send."""
    relay = _relay(request)
    request_id = new_request_id()
    key: ClientKey | None = None
    try:
        key = _authenticate(relay, request, token=request.query_params.get("token") if endpoint == "events" else None)
        call = await parse(relay, request)
    except Rejected as exc:
        relay.refused(request_id, key.id if key else None, endpoint, None, exc.refusal)
        return refusal_response(exc.refusal, request_id)
    try:
        session = relay.admit(key, call, endpoint, request_id)  # a refusal here writes its own usage line
    except Rejected as exc:
        return refusal_response(exc.refusal, request_id)
    return session, _stream_headers(relay, key, request_id)


async def _parse_openai(relay: Relay, request: Request) -> ChatCall:
    data = parse_json(await _read_body(request, relay))
    return parse_chat(data, limits=relay.config.limits, models=relay.models, model_required=True)


async def _parse_ndjson(relay: Relay, request: Request) -> ChatCall:
    data = parse_json(await _read_body(request, relay))
    return parse_chat(data, limits=relay.config.limits, models=relay.models, model_required=False, allow_prompt=True)


async def _parse_query(relay: Relay, request: Request) -> ChatCall:
    params = request.query_params
    if (refusal := check_body_size(len(request.url.query), relay.config.limits)) is not None:
        raise Rejected(refusal)
    data: dict[str, Any] = {"prompt": params.get("prompt")}
    if data["prompt"] is None:
        raise invalid("prompt is required: /v1/events?prompt=...", "prompt", "missing_required_parameter")
    for name in ("system", "model"):
        if name in params:
            data[name] = params[name]
    for name, kind in (("max_tokens", int), ("temperature", float), ("top_p", float), ("seed", int)):
        if name in params:
            try:
                data[name] = kind(params[name])
            except ValueError:
                raise invalid(f"{name} must be {'an integer' if kind is int else 'a number'}", name) from None
    return parse_chat(data, limits=relay.config.limits, models=relay.models, model_required=False, allow_prompt=True)


async def chat_completions(request: Request) -> Response:
    """OpenAI's ``POST /v1/chat/completions``; the official SDK works unchanged."""
    admitted = await _admitted(request, "chat.completions", _parse_openai)
    if isinstance(admitted, Response):
        return admitted
    session, headers = admitted
    completion_id = "chatcmpl-" + session.request_id.removeprefix("req_")
    created = int(session.started_wall)
    if session.call.stream:
        frames = OpenAIChunks(completion_id, session.call.model, created, include_usage=session.call.include_usage)
        return StreamResponse(session, frames, headers)
    return CompletionResponse(session, completion_id, created, headers)


async def events(request: Request) -> Response:
    """``GET /v1/events?prompt=…``: SSE for ``EventSource``, with ids, a retry hint and heartbeats."""
    if "last-event-id" in request.headers:
        # A reconnect: the relay keeps no answers, and generating again would duplicate text.
        # 204 tells EventSource to stop for good.
        return Response(status_code=204, headers={"Cache-Control": "no-store"})
    admitted = await _admitted(request, "events", _parse_query)
    if isinstance(admitted, Response):
        return admitted
    session, headers = admitted
    return StreamResponse(session, EventSourceFrames(session.relay.config.sse_retry_ms), headers)


async def ndjson(request: Request) -> Response:
    """``POST /v1/stream``: the event vocabulary as newline-delimited JSON."""
    admitted = await _admitted(request, "stream", _parse_ndjson)
    if isinstance(admitted, Response):
        return admitted
    session, headers = admitted
    return StreamResponse(session, NDJSONFrames(session.request_id, session.call.model), headers)


async def models(request: Request) -> Response:
    relay = _relay(request)
    try:
        _authenticate(relay, request)
    except Rejected as exc:
        return refusal_response(exc.refusal, new_request_id())
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "streamchat"} for name in relay.models.names]
    return JSONResponse({"object": "list", "data": data})


async def tokens(request: Request) -> Response:
    """Exchange a key (in the ``Authorization`` header) for a short-lived token to put in URLs."""
    relay = _relay(request)
    request_id = new_request_id()
    header = request.headers.get("authorization", "")
    try:
        if header.partition(" ")[2].strip().startswith("sct."):
            raise Rejected(Refusal(401, "invalid_api_key", "tokens are made from keys, not from other tokens",
                                   type="authentication_error"))
        key = _authenticate(relay, request)
    except Rejected as exc:
        relay.refused(request_id, None, "tokens", None, exc.refusal)
        return refusal_response(exc.refusal, request_id)
    if relay.keys.anonymous:
        return JSONResponse({"token": None, "auth": "none"}, headers={"Cache-Control": "no-store"})
    token, expires = relay.keys.issue_token(key)
    body = {"token": token, "expires_at": expires, "expires_in": int(relay.keys.token_ttl_s), "key_id": key.id}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def health(request: Request) -> Response:
    relay = _relay(request)
    status = "draining" if relay.draining else "ok"
    return JSONResponse({"status": status, "streams": len(relay.sessions)}, status_code=503 if relay.draining else 200)


async def index(request: Request) -> Response:
    relay = _relay(request)
    html = page_html(auth_required=relay.keys.required, model=relay.models.names[0])
    return Response(html, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


async def page_js(request: Request) -> Response:
    return Response(PAGE_JS, media_type="text/javascript; charset=utf-8", headers=SECURITY_HEADERS)


async def page_css(request: Request) -> Response:
    return Response(PAGE_CSS, media_type="text/css; charset=utf-8", headers=SECURITY_HEADERS)


async def favicon(request: Request) -> Response:
    return Response(FAVICON_SVG, media_type="image/svg+xml", headers=SECURITY_HEADERS)


async def schema(request: Request) -> Response:
    return JSONResponse(openapi_schema(_relay(request)))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: ("not_found", f"no route {request.url.path}"), 405: ("method_not_allowed", f"{request.method} is not allowed here")}
    code, message = codes.get(exc.status_code, ("http_error", str(exc.detail)))
    return json_error(exc.status_code, code, message, "invalid_request_error", headers=dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Logged redacted; the client learns only that it failed, and the request's path.
    log.error("internal error on %s: %s", request.url.path, _relay(request).redact(repr(exc))[:500])
    return json_error(500, "internal_error", "the relay failed; this is a bug", "server_error")


def create_app(
    provider: Provider,
    config: RelayConfig | None = None,
    *,
    clock: Clock | None = None,
    usage_log: UsageLog | None = None,
    wall: Callable[[], float] = time.time,
    close_provider: bool = True,
) -> Starlette:
    """The relay as an ASGI app. Without keys it refuses to start unless ``config.allow_anonymous``.

    With ``close_provider``, the provider's async connections (bound to the server's
    event loop) are closed when the app shuts down.
    """
    config = config or RelayConfig()
    if not config.keys and not config.allow_anonymous:
        raise ConfigError(
            "the relay has no keys: set STREAMCHAT_RELAY_KEYS or --keys-file, "
            "or pass --no-auth to let anyone who can reach it spend the provider"
        )
    usage = usage_log or UsageLog.open(config.usage_log)
    relay = Relay(provider, config, clock=clock or SystemClock(), usage=usage, wall=wall)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        aclose = getattr(provider, "aclose", None)
        if close_provider and aclose is not None:
            await aclose()
        usage.close()

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/page.js", page_js, methods=["GET"]),
        Route("/page.css", page_css, methods=["GET"]),
        Route("/favicon.svg", favicon, methods=["GET"]),
        Route("/favicon.ico", favicon, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/openapi.json", schema, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/events", events, methods=["GET"]),
        Route("/v1/stream", ndjson, methods=["POST"]),
        Route("/v1/tokens", tokens, methods=["POST"]),
        WebSocketRoute("/v1/ws", websocket_endpoint),
    ]
    middleware = []
    if config.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
                expose_headers=list(EXPOSED),
                max_age=600,
            )
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.relay = relay
    return app

