"""Encode and decode the Server-Sent Events wire format.

Pure functions on bytes and strings: no Flask, no I/O. The gateway frames every
event's ``data`` as one line of JSON, so no content (newlines, ``data:`` lines,
carriage returns) can ever break the framing; the decoder follows the WHATWG
event-stream parsing rules so tests read streams the way a browser does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

# A heartbeat is a comment line with no blank line after it: a blank line ends
# a block, and httpx-sse and fetch-event-source dispatch even a block without
# ``data`` as an empty event (whose ``json()`` fails). Browsers ignore both.
PING = b": ping\n"


def encode_event(event_id: int | None, event: str, data: Any) -> bytes:
    """Frame one event: ``id`` (None: no id line), ``event``, one ``data`` line of JSON."""
    payload = json.dumps(data, ensure_ascii=False)
    # Only lone surrogates fail to encode; backslashreplace writes them as the
    # JSON escapes they were (\udXXX), so any Python string round-trips.
    head = "" if event_id is None else f"id: {event_id}\n"
    frame = f"{head}event: {event}\ndata: {payload}\n\n"
    return frame.encode("utf-8", "backslashreplace")


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


class Event(NamedTuple):
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

    def feed(self, chunk: bytes) -> list[Event]:
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

    def _process(self, line: str) -> Event | None:
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

    def _dispatch(self) -> Event | None:
        if not self._has_data:
            self._event = ""
            return None
        event = Event(self._event or "message", "\n".join(self._data), self.last_event_id)
        self._event, self._data, self._has_data = "", [], False
        return event
