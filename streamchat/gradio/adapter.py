"""Streams as coalesced Chatbot updates: the generators a Gradio event yields from.

Every generator here paints at most ``rate`` frames a second (built on
:func:`~streamchat._coalesce.aframes` / :func:`~streamchat._coalesce.frames`)
and always paints the final state. Closing or cancelling a generator closes its
stream, and so the upstream connection or the local generation. While nothing
arrives, the async generators repaint every ``tick_s`` so a wait (a queue, a
slow first token, a stall) shows its time passing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Sequence
from contextlib import aclosing
from typing import Any

from .._coalesce import DEFAULT_RATE, Coalescer, aframes, frames
from .._events import StreamEvent
from .._stream import AsyncStream, Stream, astream
from ..messages import Message
from ..options import Clock, RetryPolicy, SystemClock, Timeouts
from ..providers.base import Provider
from .history import to_prompt
from .session import ChatSession, InputRejected, Limits, Turns, check_input
from .view import AnswerView, MessageDict

TICK_S = 0.5


async def astream_answer(
    stream: AsyncStream,
    *,
    view: AnswerView | None = None,
    rate: float = DEFAULT_RATE,
    clock: Clock | None = None,
    session: ChatSession | None = None,
    turns: Turns | None = None,
    tick_s: float = TICK_S,
) -> AsyncGenerator[list[MessageDict], None]:
    """The answer's Chatbot messages, frame by frame; the last one is final.

    ``session``: registers the stream so that ``session.stop()`` closes it.
    ``turns``: the provider answers one request at a time; show the queue.
    """
    view = view or AnswerView()
    clock = clock or SystemClock()
    ticket = turns.take() if turns is not None else None
    if session is not None and not session.attach(stream):
        await stream.aclose()
    try:
        if turns is not None and ticket is not None:
            view.queue_ahead = turns.ahead(ticket)
        yield view.messages(stream, clock.now_ns())
        # Closed in reverse order: a read still pending in the ticker ends before the frames close.
        async with aclosing(aframes(stream, rate, clock)) as batches, aclosing(_ticking(batches, tick_s)) as ticks:
            async for batch in ticks:
                if batch is None and turns is not None and ticket is not None:
                    view.queue_ahead = turns.ahead(ticket)
                if batch:
                    view.feed(batch)
                yield view.messages(stream, clock.now_ns())
        if not view.saw_finish:
            # Stopped from outside: no Finish event came, but the state is final now.
            yield view.messages(stream, clock.now_ns())
    finally:
        if session is not None:
            session.detach(stream)
        if turns is not None and ticket is not None:
            turns.done(ticket)
        await stream.aclose()


async def _ticking(
    batches: AsyncIterator[list[StreamEvent]], tick_s: float
) -> AsyncGenerator[list[StreamEvent] | None, None]:
    """The batches, with a None each time ``tick_s`` passes without one."""
    pending: asyncio.Future[list[StreamEvent]] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(batches))
            done, _ = await asyncio.wait({pending}, timeout=tick_s)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                batch = finished.result()
            except StopAsyncIteration:
                return
            yield batch
    finally:
        if pending is not None and not pending.done():
            # The read must end before the batches can be closed.
            pending.cancel()
            await asyncio.wait({pending})


def stream_answer(
    stream: Stream,
    *,
    view: AnswerView | None = None,
    rate: float = DEFAULT_RATE,
    clock: Clock | None = None,
    session: ChatSession | None = None,
    turns: Turns | None = None,
) -> Generator[list[MessageDict], None, None]:
    """The sync twin of :func:`astream_answer` (no repaint while nothing arrives).

    Gradio runs a sync generator's ``next()`` in a thread and can close it only
    once that returns; ``session.stop()`` closes the stream itself, which ends
    a blocked read at once.
    """
    view = view or AnswerView()
    clock = clock or SystemClock()
    ticket = turns.take() if turns is not None else None
    if session is not None and not session.attach(stream):
        stream.close()
    try:
        if turns is not None and ticket is not None:
            view.queue_ahead = turns.ahead(ticket)
        yield view.messages(stream, clock.now_ns())
        for batch in frames(stream, rate, clock):
            view.feed(batch)
            yield view.messages(stream, clock.now_ns())
        if not view.saw_finish:
            yield view.messages(stream, clock.now_ns())
    finally:
        if session is not None:
            session.detach(stream)
        if turns is not None and ticket is not None:
            turns.done(ticket)
        stream.close()


async def arace(
    streams: Sequence[AsyncStream],
    views: Sequence[AnswerView] | None = None,
    *,
    rate: float = DEFAULT_RATE,
    clock: Clock | None = None,
    session: ChatSession | None = None,
    turns: Sequence[Turns | None] | None = None,
    tick_s: float = TICK_S,
) -> AsyncGenerator[list[list[MessageDict]], None]:
    """Several answers at once: each frame holds every answer's messages, in order.

    All streams start together and are read concurrently; frames are coalesced
    across them (at most ``rate`` a second), and the last frame is final for all.
    ``turns[i]``: the queue of stream ``i``'s provider, if it answers one at a time.
    """
    clock = clock or SystemClock()
    views = list(views) if views is not None else [AnswerView() for _ in streams]
    queues = list(turns) if turns is not None else [None for _ in streams]
    latest: list[list[MessageDict]] = [[] for _ in streams]
    changed = asyncio.Event()

    async def follow(i: int) -> None:
        gen = astream_answer(
            streams[i], view=views[i], rate=rate, clock=clock, session=session, turns=queues[i], tick_s=tick_s
        )
        async with aclosing(gen):
            async for messages in gen:
                latest[i] = messages
                changed.set()

    tasks = [asyncio.ensure_future(follow(i)) for i in range(len(streams))]
    gate = Coalescer(rate)
    try:
        while not all(t.done() for t in tasks):
            wait = gate.wait_s(clock.now_ns())
            woken = asyncio.ensure_future(changed.wait())
            running: set[asyncio.Future[Any]] = {t for t in tasks if not t.done()}
            await asyncio.wait({*running, woken}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            if changed.is_set():
                changed.clear()
                if gate.offer(clock.now_ns()):
                    yield [list(m) for m in latest]
            elif gate.flush(clock.now_ns()):
                yield [list(m) for m in latest]
        for t in tasks:
            t.result()  # a failure in one follower is a bug: let it show
        yield [list(m) for m in latest]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


ChatFn = Callable[..., AsyncGenerator[list[MessageDict], None]]


def chat_fn(
    provider: Provider,
    *,
    system: str | None = None,
    rate: float = DEFAULT_RATE,
    limits: Limits | None = None,
    timeouts: Timeouts | None = None,
    retry: RetryPolicy | None = None,
    clock: Clock | None = None,
    reasoning: bool = True,
    latency: bool = True,
    **params: Any,
) -> ChatFn:
    """A ``fn`` for ``gr.ChatInterface(fn, ...)`` that streams ``provider``'s answers.

    ``params`` (``temperature``, ``max_tokens`` …) go to every request. Gradio's
    Stop cancels the generator, which closes the upstream stream at once; the
    text painted so far stays.
    """
    limits = limits or Limits()
    turns = Turns() if provider.name == "local" else None

    async def respond(message: str, history: list[dict[str, Any]]) -> AsyncGenerator[list[MessageDict], None]:
        try:
            check_input(message, limits)
        except InputRejected as exc:
            import gradio as gr

            raise gr.Error(str(exc)) from None
        prompt = [*to_prompt(history), Message("user", message)]
        s = astream(provider, prompt, system=system, timeouts=timeouts, retry=retry, clock=clock, **params)
        view = AnswerView(reasoning=reasoning, latency=latency)
        gen = astream_answer(s, view=view, rate=rate, clock=clock, turns=turns)
        async with aclosing(gen):
            async for messages in gen:
                yield messages

    return respond

