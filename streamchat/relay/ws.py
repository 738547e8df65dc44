"""The WebSocket endpoint: a prompt in, deltas out, and a stop the client can send at any time.

Client to relay, JSON text messages::

    {"type": "prompt", "prompt": "Why is the sky blue?", "max_tokens": 200}
    {"type": "prompt", "messages": [{"role": "user", "content": "hi"}], "model": "..."}
    {"type": "stop"}

Relay to client: ``start``, then ``text`` / ``reasoning`` / ``tool_call``
deltas, ``metrics`` (at most twice a second), and at the end an ``error`` (if
any) and ``done``, the same vocabulary as the event stream. One answer at a
time per socket; the socket stays open for the next prompt. A refused prompt
(a limit, a bad field) gets an ``error`` with the HTTP-equivalent ``status``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

from starlette.websockets import WebSocket

from .._coalesce import Coalescer
from .._events import ReasoningDelta, TextDelta, ToolCallDelta
from .auth import AuthFailure, ClientKey
from .errors import error_body
from .limits import Refusal, Rejected
from .responses import METRICS_RATE, json_error
from .session import Relay, Session, new_request_id
from .validate import parse_chat
from .wire import done_payload, error_payload, metrics_payload, output_payload

ENDPOINT = "ws"
STATUS = 101


def origin_allowed(websocket: WebSocket, cors_origins: tuple[str, ...]) -> bool:
    """Browsers send ``Origin`` and apply no CORS to WebSockets: only this site, or listed origins, may connect."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True  # not a browser
    if "*" in cors_origins or origin in cors_origins:
        return True
    return urlsplit(origin).netloc == websocket.headers.get("host", "")


async def _deny(websocket: WebSocket, status: int, code: str, message: str, type: str) -> None:
    response = json_error(status, code, message, type)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:
        await websocket.close(code=1008, reason=message[:120])


class _Socket:
    """One accepted connection: at most one answer streaming at a time."""

    def __init__(self, relay: Relay, websocket: WebSocket, key: ClientKey) -> None:
        self.relay = relay
        self.websocket = websocket
        self.key = key
        self.session: Session | None = None
        self.task: asyncio.Task[None] | None = None
        self.open = True

    async def send(self, payload: dict[str, Any]) -> None:
        if not self.open:
            return
        try:
            # A client that reads nothing makes send() wait: it is dropped after send_timeout_s.
            async with asyncio.timeout(self.relay.config.send_timeout_s):
                await self.websocket.send_text(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))
        except (OSError, RuntimeError, TimeoutError) as exc:
            # Gone, or stalled; uvicorn's pings close a socket whose client never answers.
            self.open = False
            if self.session is not None:
                await self.session.stop("client_stalled" if isinstance(exc, TimeoutError) else "client_disconnected")

    async def refuse(
        self, status: int, code: str, message: str, *, param: str | None = None, type: str = "invalid_request_error",
        **more: Any,
    ) -> None:
        body = error_body(code, message, type, param)["error"]
        await self.send({**body, "type": "error", "error_type": type, "status": status, **more})

    async def refuse_with(self, refusal: Refusal, request_id: str) -> None:
        more: dict[str, Any] = {"request_id": request_id}
        if refusal.retry_after is not None:
            more["retry_after"] = int(refusal.retry_after)
        await self.refuse(refusal.status, refusal.code, refusal.message, param=refusal.param, type=refusal.type, **more)

    async def on_message(self, text: str) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            await self.refuse(400, "invalid_json", "messages must be JSON objects")
            return
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "stop":
            if self.session is not None:
                await self.session.stop("cancelled")
            return
        if kind != "prompt":
            await self.refuse(400, "invalid_message", "a message's type must be 'prompt' or 'stop'")
            return
        if self.task is not None and not self.task.done():
            await self.refuse(409, "busy", "an answer is still streaming: send stop first, or wait for done")
            return
        assert isinstance(data, dict)
        relay = self.relay
        request_id = new_request_id()
        try:
            call = parse_chat(data, limits=relay.config.limits, models=relay.models, model_required=False, allow_prompt=True)
        except Rejected as exc:
            model = data.get("model")
            relay.refused(request_id, self.key.id, ENDPOINT, model if isinstance(model, str) else None, exc.refusal)
            await self.refuse_with(exc.refusal, request_id)
            return
        try:
            session = relay.admit(self.key, call, ENDPOINT, request_id)
        except Rejected as exc:
            await self.refuse_with(exc.refusal, request_id)
            return
        self.session = session
        self.task = asyncio.create_task(self.relay_answer(session))

    async def relay_answer(self, session: Session) -> None:
        try:
            await self.send({"type": "start", "request_id": session.request_id, "model": session.call.model})
            gate = Coalescer(METRICS_RATE)
            async for event in session.stream:
                if isinstance(event, TextDelta | ReasoningDelta | ToolCallDelta):
                    session.streamed = True
                    await self.send(output_payload(event))
                    if gate.offer(self.relay.clock.now_ns()):
                        await self.send(metrics_payload(session.stream.timings))
            outcome = session.finish(STATUS)
            if outcome.error is not None:
                await self.send(error_payload(outcome.error, streamed=outcome.streamed))
            await self.send(done_payload(outcome))
        finally:
            session.finish(STATUS)
            await session.stream.aclose()

    async def closed(self) -> None:
        """The client went away: stop the answer, if one is streaming."""
        self.open = False
        if self.session is not None:
            await self.session.stop("client_disconnected")
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


async def websocket_endpoint(websocket: WebSocket) -> None:
    """``/v1/ws``: authenticate (header or ``?token=``), check the origin, then serve prompts."""
    relay: Relay = websocket.app.state.relay
    if not origin_allowed(websocket, relay.config.cors_origins):
        await _deny(websocket, 403, "origin_not_allowed", "this origin may not open a WebSocket here", "permission_error")
        return
    try:
        key = relay.keys.authenticate(websocket.headers.get("authorization"), websocket.query_params.get("token"))
    except AuthFailure as exc:
        relay.refused(new_request_id(), None, ENDPOINT, None, Refusal(401, exc.code, exc.message, type="authentication_error"))
        await _deny(websocket, 401, exc.code, exc.message, "authentication_error")
        return
    if relay.draining:
        await _deny(websocket, 503, "server_shutdown", "the relay is shutting down; retry in a moment", "server_error")
        return
    await websocket.accept()
    socket = _Socket(relay, websocket, key)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is None:
                await socket.refuse(400, "invalid_message", "send JSON as text messages")
                continue
            await socket.on_message(text)
    finally:
        await socket.closed()

