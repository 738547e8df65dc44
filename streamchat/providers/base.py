"""What a provider is: something that opens a source of OpenAI-style chunk dicts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

from ..messages import ChatRequest
from ..options import Clock, Timeouts

Chunk = Mapping[str, Any]


class ChunkSource(Protocol):
    """A sync iterator of chunk dicts with an abort."""

    headers_ns: int | None
    """When the response headers arrived (clock ns), if the transport has headers."""

    def __iter__(self) -> Iterator[Chunk]: ...

    def __next__(self) -> Chunk: ...

    def close(self) -> None:
        """Stop the work now; idempotent, and safe to call from another thread."""


class AsyncChunkSource(Protocol):
    """The async twin of :class:`ChunkSource`."""

    headers_ns: int | None

    def __aiter__(self) -> AsyncChunkSource: ...

    async def __anext__(self) -> Chunk: ...

    async def aclose(self) -> None:
        """Stop the work now; idempotent."""


@runtime_checkable
class Provider(Protocol):
    """Opens chunk sources for requests; sync and async alike."""

    name: str
    model: str

    def open(self, request: ChatRequest, timeouts: Timeouts, clock: Clock) -> ChunkSource:
        """Send the request; return once the response has started."""

    async def aopen(self, request: ChatRequest, timeouts: Timeouts, clock: Clock) -> AsyncChunkSource:
        """The async twin of :meth:`open`."""

    def redact(self, text: str) -> str:
        """Remove this provider's secrets from ``text``."""
