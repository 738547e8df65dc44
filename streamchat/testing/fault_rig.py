"""A real OpenAI-style server behind the fault proxy, switchable drill by drill.

The failure-matrix tests point one surface (terminal chat, Gradio app,
notebook widget, benchmark, relay) at :attr:`FaultRig.url` and then, for each
drill, arm the proxy (or revoke the key, remove the model, take the host
down), ask once, check what the user saw, and ask again to prove the next
request works. The upstream checks the key and the model like a real server,
so a wrong key or an unknown model is the server's answer, not an injection.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

from ..faults.matrix import Drill
from ..faults.proxy import ProxyThread, running
from ..faults.spec import Injector
from .wire_server import ConnectionRecord, Reply, Request, WireServer, error_reply, text_reply

__all__ = ["RIG_KEY", "RIG_MODEL", "RIG_TOKENS", "FaultRig"]

RIG_KEY = "sk-rig-0123456789abcdef"
RIG_MODEL = "rig-model"
RIG_TOKENS = tuple(f"t{i} " for i in range(12))


class FaultRig:
    """``WireServer`` (checks key and model) ← ``FaultProxy`` ← the surface under test.

    Keep ``gap`` above 0: the Stop drills need an upstream still sending when the
    client leaves (one that has finished has no connection left to close).
    """

    def __init__(
        self, tokens: Sequence[str] = RIG_TOKENS, *, gap: float = 0.01,
        key: str = RIG_KEY, model: str = RIG_MODEL,
    ) -> None:
        self.tokens = tuple(tokens)
        self.key, self.model = key, model
        self._reply = text_reply(self.tokens, gap=gap)
        self._lock = threading.Lock()
        self._accepted_key = key
        self._models = {model}
        self.upstream = WireServer(self._answer, models=(model,))
        self._proxy: ProxyThread | None = None
        self.injector: Injector | None = None
        self._mark = 0

    @property
    def full_text(self) -> str:
        return "".join(self.tokens)

    def text_after(self, chunks: int) -> str:
        """The text a client has after ``chunks`` SSE data events (the role-only chunk is the first)."""
        return "".join(self.tokens[: max(0, chunks - 1)])

    @property
    def proxy(self) -> ProxyThread:
        if self._proxy is None:
            raise RuntimeError("FaultRig not started")
        return self._proxy

    @property
    def url(self) -> str:
        """The base URL the surface uses (the proxy's), e.g. ``http://127.0.0.1:PORT/v1``."""
        return self.proxy.url

    def start(self) -> FaultRig:
        self.upstream.start()
        self._proxy = running(self.upstream.url).start()
        return self

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.stop()
        self.upstream.stop()

    def __enter__(self) -> FaultRig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one drill ---------------------------------------------------------------
    def arm(self, spec: str = "") -> None:
        """Inject ``spec`` into the next request (``;times=1`` unless a schedule is given); "" disarms."""
        if spec and ";" not in spec:
            spec += ";times=1"
        self.injector = self.proxy.arm(spec)
        self._mark = self.proxy.proxy.chat_requests

    @property
    def attempts(self) -> int:
        """Chat requests the surface sent since :meth:`arm` (a retry makes it 2 or more)."""
        return self.proxy.proxy.chat_requests - self._mark

    @contextlib.contextmanager
    def drill(self, drill: Drill) -> Iterator[None]:
        """Cause one drill of the failure matrix for the block: arm its fault, or change the server's state."""
        self.arm(drill.spec)
        by_rig = {"wrong_key": self.revoked_key, "unknown_model": self.removed_model, "unreachable": self.host_down}
        with by_rig[drill.name]() if drill.name in by_rig else contextlib.nullcontext():
            yield

    @contextlib.contextmanager
    def revoked_key(self) -> Iterator[None]:
        """The server refuses the key the surface holds (HTTP 401), until the block ends."""
        with self._lock:
            self._accepted_key = self.key + "-rotated"
        try:
            yield
        finally:
            with self._lock:
                self._accepted_key = self.key

    @contextlib.contextmanager
    def removed_model(self) -> Iterator[None]:
        """The server no longer serves the surface's model (HTTP 404), until the block ends."""
        with self._lock:
            self._models = set()
        try:
            yield
        finally:
            with self._lock:
                self._models = {self.model}

    @contextlib.contextmanager
    def host_down(self) -> Iterator[None]:
        """Nothing listens at :attr:`url` (connection refused), until the block ends."""
        self.proxy.pause()
        try:
            yield
        finally:
            self.proxy.resume()

    def wait_upstream_closed(self, timeout: float = 2.0) -> ConnectionRecord:
        """The upstream connection of the latest chat request, once it has ended."""
        return self.upstream.wait_closed(-1, timeout)

    def _answer(self, request: Request) -> Reply:
        with self._lock:
            key, models = self._accepted_key, set(self._models)
        if request.headers.get("authorization") != f"Bearer {key}":
            return error_reply(401, "Incorrect API key provided.", code="invalid_api_key")
        model = request.json().get("model")
        if model not in models:
            return error_reply(
                404, f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        return self._reply
