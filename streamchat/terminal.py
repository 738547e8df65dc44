"""The terminal adapter: text to stdout as it streams, everything else to stderr."""

from __future__ import annotations

import json
import os
import sys
from contextlib import aclosing, closing
from typing import TextIO

from ._events import StreamEvent
from ._stream import AsyncStream, Stream, _Result
from .record import arecord, event_to_json, record

_DIM, _RESET = "\x1b[2m", "\x1b[0m"


class _Printer:
    """Turns events into terminal output; shared by both twins."""

    def __init__(self, out: TextIO, err: TextIO, as_json: bool, color: bool | None) -> None:
        self.out, self.err, self.as_json = out, err, as_json
        self.color = err.isatty() if color is None else color
        self.in_reasoning = False

    def event(self, event: StreamEvent, start_ns: int) -> None:
        if self.as_json:
            self.out.write(json.dumps(event_to_json(event, start_ns), ensure_ascii=False) + "\n")
        elif event.kind == "text":
            self._end_reasoning()
            self.out.write(event.text)
        elif event.kind == "reasoning":
            if not self.in_reasoning:
                self.in_reasoning = True
                self.err.write((_DIM if self.color else "") + "[thinking] ")
            self.err.write(event.text)
        elif event.kind == "error":
            self._end_reasoning()
            self.out.write("\n")
            self.err.write(f"streamchat: error: {event.message}\n")
        else:
            return
        self.out.flush()

    def _end_reasoning(self) -> None:
        if self.in_reasoning:
            self.in_reasoning = False
            self.err.write((_RESET if self.color else "") + "\n")

    def end(self, result: _Result) -> None:
        """The metrics line: JSON with ``--events``, else a one-line summary on stderr."""
        self._end_reasoning()
        timings = result.timings
        if self.as_json:
            row = {"type": "metrics", **timings.as_dict(), "finish_reason": result.finish_reason}
            self.out.write(json.dumps(row) + "\n")
        else:
            if result.text and not result.text.endswith("\n"):
                self.out.write("\n")
            self.err.write(timings.summary(result.finish_reason) + "\n")
        self.out.flush()
        self.err.flush()


def print_stream(
    stream: Stream,
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    events: bool = False,
    color: bool | None = None,
    record_to: str | os.PathLike[str] | None = None,
) -> Stream:
    """Print a stream as it arrives, then its summary; returns the finished stream.

    ``record_to`` also saves the events as JSON Lines (see :mod:`streamchat.record`).
    """
    printer = _Printer(out, err, events, color)
    try:
        with closing(stream):
            for event in record(stream, record_to) if record_to else stream:
                printer.event(event, stream.request_start_ns)
    finally:
        printer.end(stream)
    return stream


async def aprint_stream(
    stream: AsyncStream,
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    events: bool = False,
    color: bool | None = None,
    record_to: str | os.PathLike[str] | None = None,
) -> AsyncStream:
    """The async twin of :func:`print_stream`."""
    printer = _Printer(out, err, events, color)
    try:
        async with aclosing(stream):
            async for event in arecord(stream, record_to) if record_to else stream:
                printer.event(event, stream.request_start_ns)
    finally:
        printer.end(stream)
    return stream
