"""Dialects: the wire formats one stream can be delivered in.

A stream is stored once, as the gateway's own events (``sse_gateway.events``),
and remembers the dialect it was created in (``StreamInfo.dialect``): every
response that delivers it, the first and every resume, renders its events in
that dialect. ``sse`` is the gateway's own format (``transports.sse``); the
others (OpenAI chat-completion chunks, the AI SDK's UI message stream) are
listed in ``RENDERERS`` below, so any process knows every stream's dialect,
whichever routes it mounts.

A ``Renderer`` serves one response. A dialect whose output depends on what
came before (a text block opened earlier, a tool call's index) says so with
``needs_history``: a resume from position P first gets the events up to P in
``prime``, rendered to nothing, so its bytes after P are exactly those a
reader who never dropped would have got.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol

from sse_gateway.events import Event
from sse_gateway.transports import openai_chunks, sse, ui_message_stream

SSE = "sse"  # the gateway's own dialect, the default


class Renderer(Protocol):
    """Renders one response's events as bytes, in order."""

    needs_history: bool  # a resume must prime it with the events it skips

    def prime(self, events: Sequence[Event]) -> None:
        """Take in the events before the resume position (not rendered)."""
        ...

    def open(self, retry_ms: int) -> bytes:
        """The first bytes of the response."""
        ...

    def render(self, events: Sequence[Event]) -> bytes:
        """A run of stored events (a terminal one included, then whatever closes)."""
        ...

    def ping(self) -> bytes:
        """A heartbeat on an idle tick."""
        ...


class SSERenderer:
    """The gateway's own events, as they are (stateless)."""

    needs_history = False

    def prime(self, events: Sequence[Event]) -> None:
        """Nothing to remember."""

    def open(self, retry_ms: int) -> bytes:
        return sse.encode_retry(retry_ms)

    def render(self, events: Sequence[Event]) -> bytes:
        return sse.render_all(events)

    def ping(self) -> bytes:
        return sse.PING


RENDERERS: dict[str, Callable[[], Renderer]] = {
    SSE: SSERenderer,
    # The Vercel AI SDK's UI message stream (useChat), a new assistant message
    # or one continuing the client's last (transports/ui_message_stream.py).
    ui_message_stream.DIALECT: ui_message_stream.UIMessageStreamRenderer,
    ui_message_stream.DIALECT_CONTINUE: functools.partial(
        ui_message_stream.UIMessageStreamRenderer, message_id=False),
    # OpenAI's chat-completion chunks, without and with the usage chunk
    # (transports/openai_chunks.py).
    openai_chunks.OPENAI: openai_chunks.ChunkRenderer,
    openai_chunks.OPENAI_USAGE: functools.partial(openai_chunks.ChunkRenderer,
                                                  include_usage=True),
}


def register(name: str, renderer: Callable[[], Renderer]) -> None:
    """Make a dialect known by ``name`` (what ``StreamInfo.dialect`` stores)."""
    RENDERERS[name] = renderer


def renderer(name: str) -> Renderer:
    """A renderer for one response in dialect ``name`` (KeyError: unknown)."""
    return RENDERERS[name]()


def needs_history(name: str) -> bool:
    return bool(RENDERERS[name]().needs_history)
