"""The Server-Sent Events transport's wire format: render events, decode streams.

Pure functions on bytes and strings: no Flask, no I/O. Every event's ``data``
is one line of JSON (``events.encode``), so no content (newlines, ``data:``
lines, carriage returns) can ever break the framing; the decoder follows the
WHATWG event-stream parsing rules so tests read streams the way a browser does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from sse_gateway.events import Event

# A heartbeat is a comment line with no blank line after it: a blank line ends
# a block, and httpx-sse and fetch-event-source dispatch even a block without
# ``data`` as an empty event (whose ``json()`` fails). Browsers ignore both.
PING = b": ping\n"


def render(event: Event) -> bytes:
    """Frame one event: ``id`` (none for an unnumbered one), ``event``, one ``data`` line."""
    if event.id is None:
        return b"event: %s\ndata: %s\n\n" % (_name(event.name), event.data)
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, _name(event.name), event.data)


def render_all(batch: Sequence[Event]) -> bytes:
    """Frame a run of stored (numbered) events as one write."""
    if len(batch) == 1:
        return render(batch[0])
    return b"".join([render(e) for e in batch])


_NAMES: dict[str, bytes] = {}


def _name(name: str) -> bytes:
    encoded = _NAMES.get(name)
    if encoded is None:
        if "\n" in name or "\r" in name:
            raise ValueError("an SSE event name cannot contain a line break")
        encoded = _NAMES[name] = name.encode()
    return encoded


def encode_retry(milliseconds: int) -> bytes:
    """Tell the client how long to wait before reconnecting.

    No blank line follows: the field travels in the block of the first event
    that comes after it, so no client sees an event without data.
    """
    return f"retry: {milliseconds}\n".encode()


def encode_comment(text: str) -> bytes:
    """Frame a comment line (no blank line after it, as ``PING``); a newline in
    ``text`` would end it, so it is refused."""
    if "\n" in text or "\r" in text:
        raise ValueError("an SSE comment cannot contain a line break")
    return f": {text}\n".encode()


class ServerSentEvent(NamedTuple):
    """One dispatched event as a WHATWG client sees it (a tuple: cheap to build)."""

    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


class Decoder:
    """Incremental event-stream parser (WHATWG HTML, "Parsing an event stream").

    Feed it bytes in any chunking; it yields events as they complete. It keeps
    the last event id and the reconnection time, and counts comments, so tests
    can see heartbeats.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._started = False
        self._pending_cr = False
        self._event = ""
        self._data: list[str] = []
        self._has_data = False
        self.last_event_id: str | None = None
        self.retry: int | None = None
        self.comments: list[str] = []

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume ``chunk`` and return every event it completes."""
        self._buffer += chunk
        events = []
        for line in self._lines():
            event = self._process(line)
            if event is not None:
                events.append(event)
        return events

    def _lines(self) -> Iterator[str]:
        buffer = self._buffer
        if self._pending_cr and buffer.startswith(b"\n"):
            buffer = buffer[1:]  # the LF of a CRLF split across chunks
        self._pending_cr = False
        if b"\r" not in buffer:  # the usual case, LF only: one split
            *lines, self._buffer = buffer.split(b"\n")
            for line in lines:
                yield self._text(line)
            return
        start = 0
        length = len(buffer)
        while start < length:
            cr = buffer.find(b"\r", start)
            lf = buffer.find(b"\n", start)
            ends = [i for i in (cr, lf) if i != -1]
            if not ends:
                break
            end = min(ends)
            line = buffer[start:end]
            if end == cr:
                if end + 1 < length:
                    start = end + 2 if buffer[end + 1 : end + 2] == b"\n" else end + 1
                else:
                    start = end + 1
                    self._pending_cr = True
            else:
                start = end + 1
            yield self._text(line)
        self._buffer = buffer[start:]

    def _text(self, line: bytes) -> str:
        text = line.decode("utf-8", errors="replace")
        if not self._started:
            self._started = True
            text = text.removeprefix("\ufeff")  # a byte order mark only at the very start
        return text

    def _process(self, line: str) -> ServerSentEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._has_data:
            self._event = ""
            return None
        event = ServerSentEvent(self._event or "message", "\n".join(self._data), self.last_event_id)
        self._event, self._data, self._has_data = "", [], False
        return event
