"""Server-Sent Events: an incremental decoder and an encoder, both without I/O.

The decoder follows the WHATWG rules that matter for LLM streams: CR, LF and
CRLF line ends (a CRLF may be split across reads), comment lines, one space
after the colon stripped, ``data`` lines joined with LF, an event dispatched on
a blank line, an incomplete event at end of stream dropped. Lines are split on
bytes before decoding, which is safe because no UTF-8 multi-byte sequence
contains CR or LF; a character split across reads is therefore never broken,
and invalid UTF-8 raises :class:`~streamchat.errors.ProtocolError`.

Intentional divergence from browsers: an event with no ``data`` field is
dropped (as browsers do), but comments are counted in ``comments`` so callers
can treat pings as signs of life.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ProtocolError


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched server-sent event."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed bytes as they arrive; get back the events they complete."""

    __slots__ = ("_buf", "_data", "_event", "_id", "_pending_cr", "_retry", "comments")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._pending_cr = False
        self.comments = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode ``chunk`` and return the events it completes (often none or one)."""
        if self._pending_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._pending_cr = False
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            self._pending_cr = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        events: list[SSEEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: an event without its final blank line is dropped, per spec."""
        self._buf = b""
        self._data = []
        return []

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            return self._dispatch()
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(
                f"the stream is not valid UTF-8 (bad byte at position {exc.start} of a line)"
            ) from None
        if line[0] == ":":
            self.comments += 1
            return None
        name, sep, value = line.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent("\n".join(self._data), self._event or "message", self._id, self._retry)
        self._data = []
        self._event = ""
        self._retry = None
        return event


def encode_sse(
    data: str,
    *,
    event: str | None = None,
    id: str | None = None,
    retry_ms: int | None = None,
) -> bytes:
    """Encode one event; multi-line data becomes several ``data:`` lines."""
    out = []
    if id is not None:
        out.append("id: " + id.replace("\n", "").replace("\r", ""))
    if event is not None:
        out.append("event: " + event.replace("\n", "").replace("\r", ""))
    if retry_ms is not None:
        out.append(f"retry: {int(retry_ms)}")
    for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        out.append("data: " + line)
    return ("\n".join(out) + "\n\n").encode("utf-8")


def encode_comment(text: str = "") -> bytes:
    """A comment line, used as a heartbeat."""
    return (": " + text.replace("\n", " ").replace("\r", " ") + "\n\n").encode("utf-8")
