"""A relay served for real on 127.0.0.1, in a background thread: for tests, notebooks and benchmarks."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from starlette.applications import Starlette

from .server import RelayServer, bind, uvicorn_config


class ServedRelay:
    """``with ServedRelay(app) as relay:`` serves ``app`` on an ephemeral loopback port."""

    def __init__(self, app: Starlette, **uvicorn_options: Any) -> None:
        self.app = app
        self._sock = bind("127.0.0.1", 0)
        self.port: int = self._sock.getsockname()[1]
        self.server = RelayServer(uvicorn_config(app, **uvicorn_options), app.state.relay)
        self._thread = threading.Thread(target=self._run, name=f"relay:{self.port}", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://127.0.0.1:PORT/v1``."""
        return self.url + "/v1"

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self._sock]))
        except BaseException as exc:  # reported by start()/stop()
            self._error = exc

    def start(self, timeout: float = 10.0) -> ServedRelay:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"the relay did not start: {self._error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("the relay did not start in time")
            time.sleep(0.01)
        return self

    def shutdown(self, grace_s: float | None = None) -> None:
        """Begin the graceful drain, as a SIGTERM would (``grace_s``: instead of the config's)."""
        loop = self.server.loop
        if loop is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(self.server.begin_shutdown, grace_s)

    def wait_stopped(self, timeout: float = 30.0) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the relay is still running")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop now: running streams end with ``server_shutdown`` (and their usage lines)."""
        if self._thread.is_alive():
            self.shutdown(grace_s=0)
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.server.should_exit = True
                self._thread.join(timeout)
        self._sock.close()
        if self._error is not None:
            raise RuntimeError(f"the relay failed: {self._error!r}") from self._error

    def __enter__(self) -> ServedRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
