"""``ChatWidget``: a chat panel in a notebook, with a Stop that works while an answer streams.

A widget click is handled only while the kernel is idle, so an answer must not
run as a blocking loop inside a cell. Each answer runs as an asyncio task on
the kernel's event loop: the cell that shows the widget returns at once, the
kernel stays usable, and Stop cancels the task, which closes the stream and so
the upstream connection (or halts the local model). The screen is repainted at
most ``rate`` times a second by setting whole widget values (never by
appending outputs, which re-sends everything each time), then once more with
the exact final state.
"""

from __future__ import annotations

import asyncio
import html
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._coalesce import DEFAULT_RATE, aframes
from .._events import FinishReason
from .._stream import AsyncStream, astream
from ..errors import StreamchatError
from ..messages import Message
from ..options import Clock, RetryPolicy, Timeouts
from ..providers.base import Provider
from ..timing import Timings
from .render import STREAMING, WAITING, HTMLRenderer, Snapshot, escape_markdown, to_markdown

if TYPE_CHECKING:
    import ipywidgets  # type: ignore[import-untyped]

_MUTED = "opacity: 0.7; font-size: 0.9em"
_ERROR = "color: var(--jp-error-color1, #d32f2f)"


@dataclass(eq=False)
class Turn:
    """One question and its answer, with the widgets that show them."""

    prompt: str
    stream: AsyncStream
    box: ipywidgets.VBox = field(repr=False)
    reasoning: ipywidgets.Accordion = field(repr=False)
    answer: ipywidgets.HTML = field(repr=False)
    metrics: ipywidgets.HTML = field(repr=False)
    painted: int = 0
    """How many times the answer was repainted (the final paint included)."""
    folded: bool = field(default=False, repr=False)
    """Whether the reasoning was folded away once the answer started (then it is left as the reader sets it)."""

    @property
    def text(self) -> str:
        return self.stream.text

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.stream.finish_reason

    @property
    def timings(self) -> Timings:
        return self.stream.timings

    @property
    def error(self) -> str | None:
        error = self.stream.error
        return error.message if error is not None else None


class ChatWidget:
    """A chat panel for ``provider``: history, input, Send and Stop, latency per answer.

    ``params`` (``temperature``, ``max_tokens``, ``seed`` …) go to every request.
    Display it by making it the last expression of a cell.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        system: str | None = None,
        rate: float = DEFAULT_RATE,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
        title: str | None = None,
        **params: Any,
    ) -> None:
        import ipywidgets as w

        if not isinstance(provider, Provider):
            raise StreamchatError(f"ChatWidget needs a provider (LocalProvider(), OpenAIProvider(...)…), not {type(provider).__name__}")
        self.provider = provider
        self.system = system
        self.rate = rate
        self.timeouts = timeouts
        self.retry = retry
        self.clock = clock
        self.params = params
        self.turns: list[Turn] = []
        self._html = HTMLRenderer()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

        heading = title or f"{provider.name} · {provider.model}"
        self.header = w.HTML(f'<div style="{_MUTED}">{html.escape(heading)}</div>')
        self.log = w.VBox([])
        self.input = w.Textarea(placeholder="Ask something, then press Send", rows=2, layout=w.Layout(width="100%"))
        self.send_button = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.status = w.HTML("")
        self.send_button.on_click(lambda _: self._on_loop(self.send))
        self.stop_button.on_click(lambda _: self._on_loop(self.stop))
        buttons = w.HBox([self.send_button, self.stop_button, self.status])
        self.view = w.VBox([self.header, self.log, self.input, buttons], layout=w.Layout(width="100%"))

    # -- what people call ---------------------------------------------------
    def send(self, prompt: str | None = None) -> Turn | None:
        """Ask ``prompt`` (default: the input box); returns the new turn, or None if nothing was sent."""
        text = self.input.value if prompt is None else prompt
        if self.busy:
            self._say("An answer is still streaming: wait for it, or press Stop.")
            return None
        if not text.strip():
            self._say("Type a message first.")
            return None
        try:
            stream = astream(
                self.provider,
                [*self.messages, Message("user", text)],
                system=self.system,
                timeouts=self.timeouts,
                retry=self.retry,
                clock=self.clock,
                **dict(self.params),
            )
        except StreamchatError as exc:
            self._say(str(exc), error=True)
            return None
        loop = self._running_loop()
        if loop is None:
            self._say("No running event loop: ChatWidget works inside a Jupyter kernel.", error=True)
            return None
        turn = self._new_turn(text, stream)
        if prompt is None:
            self.input.value = ""
        self._stopping = False
        self._set_busy(True)
        self._say("")
        self._task = task = loop.create_task(self._answer(turn))
        task.add_done_callback(lambda done: self._settle(turn, done))
        return turn

    def stop(self) -> None:
        """Stop the answer that is streaming, if any: its stream and connection close, its text stays."""
        task = self._task
        if task is not None and not task.done() and not self._stopping:
            self._stopping = True
            task.cancel()

    async def wait(self) -> Turn | None:
        """Wait until the current answer has ended; return the last turn."""
        task = self._task
        if task is not None:
            # Not ``await task``: a Stop that came before the task ran leaves it cancelled, which is no error here.
            await asyncio.wait([task])
        return self.turns[-1] if self.turns else None

    @property
    def busy(self) -> bool:
        """Whether an answer is streaming."""
        return self._task is not None and not self._task.done()

    @property
    def messages(self) -> tuple[Message, ...]:
        """The conversation sent as context with the next question.

        An answer that was stopped counts with the text it had; one that failed
        before any text is left out, with its question.
        """
        out: list[Message] = []
        for turn in self.turns:
            if turn.stream.finish_reason is None:
                continue
            if turn.text:
                out += [Message("user", turn.prompt), Message("assistant", turn.text)]
        return tuple(out)

    def transcript(self) -> str:
        """The conversation as Markdown, with each answer's latency line (for a static copy)."""
        parts = []
        for turn in self.turns:
            parts.append("**You:** " + escape_markdown(turn.prompt))
            parts.append(to_markdown(Snapshot.of(turn.stream)))
        return "\n\n".join(parts)

    def close(self) -> None:
        """Stop any answer and close the widgets."""
        self.stop()
        for turn in self.turns:
            for child in (*turn.box.children, *turn.reasoning.children, turn.box):
                child.close()
        for widget in (self.header, self.log, self.input, self.send_button, self.stop_button, self.status, self.view):
            widget.close()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle: dict[str, Any] = self.view._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self) -> str:
        state = "streaming" if self.busy else "idle"
        return f"<ChatWidget {self.provider.name}:{self.provider.model}, {len(self.turns)} answers, {state}>"

    # -- the answer task ------------------------------------------------------
    async def _answer(self, turn: Turn) -> None:
        task = asyncio.current_task()
        try:
            async with aclosing(aframes(turn.stream, self.rate, self.clock)) as frames:
                async for batch in frames:
                    if self._stopping:
                        # Stop was pressed, but its cancellation did not arrive: on Python 3.11,
                        # asyncio.wait_for (inside aframes) drops one that lands as a token does (CPython gh-86296).
                        break
                    if batch[-1].kind != "finish":
                        self._paint(turn)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
        except Exception as exc:  # a bug must not vanish inside a background task
            self._say(self.provider.redact(f"{type(exc).__name__}: {exc}"), error=True)
        finally:
            if self._stopping and task is not None and task.cancelling():
                task.uncancel()  # our own Stop: the task ends normally
            await turn.stream.aclose()
            self._paint(turn, final=True)

    def _settle(self, turn: Turn, task: asyncio.Task[None]) -> None:
        """The task is over, however it ended (even cancelled before it ran)."""
        if self._task is task:
            self._stopping = False
            self._set_busy(False)
        if not turn.painted:  # cancelled before it ran: nothing was sent
            turn.metrics.value = f'<div style="{_MUTED}">stopped before the request was sent</div>'

    def _paint(self, turn: Turn, *, final: bool = False) -> None:
        snap = Snapshot.of(turn.stream)
        if snap.reasoning:
            turn.reasoning.children[0].value = self._html.plain(snap.reasoning)
            if turn.reasoning.layout.display == "none":
                # Open while thinking ...
                turn.reasoning.layout.display = None
                turn.reasoning.selected_index = 0
            if (snap.text or final) and not turn.folded:
                # ... folded once the answer starts; after that the reader decides.
                turn.reasoning.selected_index = None
                turn.folded = True
        answer = self._html.markdown(snap.text) if snap.text else ""
        for call in snap.tool_calls:
            answer += self._html.plain(f"tool call {call.name}({call.arguments})")
        if turn.answer.value != answer:
            turn.answer.value = answer
        turn.metrics.value = self._metrics(snap)
        turn.painted += 1

    @staticmethod
    def _metrics(snap: Snapshot) -> str:
        lines = []
        if snap.error is not None:
            lines.append(f'<div style="{_ERROR}">Error: {html.escape(snap.error)}</div>')
        if snap.stopped is not None:
            lines.append(f'<div style="{_MUTED}">{html.escape(snap.stopped)}</div>')
        if snap.summary is not None:
            lines.append(f'<div style="{_MUTED}">{html.escape(snap.summary)}</div>')
        elif snap.waiting:
            lines.append(f'<div style="{_MUTED}">{WAITING}</div>')
        else:
            lines.append(f'<div style="{_MUTED}">{STREAMING}</div>')
        return "".join(lines)

    # -- widgets --------------------------------------------------------------
    def _new_turn(self, prompt: str, stream: AsyncStream) -> Turn:
        import ipywidgets as w

        user = w.HTML(
            '<div style="border-left: 3px solid var(--jp-brand-color1, #1976d2); padding-left: 8px; margin-top: 8px">'
            f"{self._html.plain(prompt)}</div>"
        )
        thoughts = w.Accordion(children=[w.HTML("")], titles=("Reasoning",), layout=w.Layout(display="none"))
        answer = w.HTML("")
        metrics = w.HTML(f'<div style="{_MUTED}">{WAITING}</div>')
        box = w.VBox([user, thoughts, answer, metrics])
        turn = Turn(prompt, stream, box, thoughts, answer, metrics)
        self.turns.append(turn)
        self.log.children = (*self.log.children, box)
        return turn

    def _set_busy(self, busy: bool) -> None:
        self.send_button.disabled = busy
        self.stop_button.disabled = not busy

    def _say(self, message: str, *, error: bool = False) -> None:
        style = _ERROR if error else _MUTED
        self.status.value = f'<span style="{style}">{html.escape(message)}</span>' if message else ""

    def _running_loop(self) -> asyncio.AbstractEventLoop | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self._loop
        if self._loop is None:
            self._loop = loop
        return loop

    def _on_loop(self, action: Any) -> None:
        """Run a click's action on the kernel's loop (clicks may arrive on another thread)."""
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        loop = self._loop
        if loop is None or current is loop or loop.is_closed():
            action()
        else:
            loop.call_soon_threadsafe(action)
