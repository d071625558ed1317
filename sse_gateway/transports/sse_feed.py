"""Deliver a stream's reader as SSE bytes: the body of every SSE response.

The reader (``sse_gateway.reader``) holds the lease and yields batches of
events; this transport adds what belongs to SSE over WSGI: the ``retry:``
line, ``: ping`` heartbeats on idle ticks, bounded writes, and the client
socket watch. Under WSGI a vanished client is normally seen only when a write
fails, which can be long while the provider is silent; so the feed watches
the client socket (an event-loop callback, no greenlet) and peeks when it
becomes readable: zero bytes means the client (or nginx) closed. The reader
is abandoned at once (its lease goes back, which starts the pump's
resume-grace clock), and the feed stops.
"""

from __future__ import annotations

import _socket
import socket
from collections.abc import Callable, Generator, Iterator
from contextlib import suppress
from typing import Any

import gevent

from sse_gateway import metrics
from sse_gateway.broker import Batch
from sse_gateway.reader import Reader
from sse_gateway.transports.dialects import Renderer, SSERenderer

# How long to look away when the client sent bytes we must not consume
# (a pipelined request); a peek would see them again at once.
_PIPELINED_BACKOFF_S = 0.5
# The write timeout bounds each write as a whole, so writes are kept this
# small: a client that reads slowly but steadily is never cut off.
_WRITE_CHUNK = 64 * 1024


class Feed:
    """An iterable of SSE bytes from a reader; WSGI calls ``close``."""

    def __init__(self, reader: Reader, *, retry_ms: int, write_timeout_s: float,
                 client_socket: Any = None, renderer: Renderer | None = None) -> None:
        self._reader = reader
        self._renderer = renderer or SSERenderer()  # the stream's dialect
        self._retry_ms = retry_ms
        self._socket = client_socket
        self._write_timeout_s = write_timeout_s
        self._socket_timeout: float | None = None  # what gunicorn had set, restored at the end
        self._watch: _SocketWatch | None = None
        self._batches: Generator[Batch, None, None] | None = None

    def __iter__(self) -> Iterator[bytes]:
        if self._socket is not None:
            # Events are small writes in quick succession: without this, Nagle's
            # algorithm holds each one until the previous is acknowledged.
            with suppress(OSError):
                self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # A client that takes no bytes for this long is dropped: a write
                # then fails, gunicorn closes the connection and calls close().
                self._socket_timeout = self._socket.gettimeout()
                self._socket.settimeout(self._write_timeout_s)
            self._watch = _SocketWatch(self._socket, self._reader.abandon)
        try:
            renderer = self._renderer
            yield renderer.open(self._retry_ms)
            self._batches = batches = self._reader.batches()
            for batch in batches:
                if batch.events:
                    yield from _chunks(renderer.render(batch.events))
                elif not batch.ended:  # an idle tick
                    yield renderer.ping()
                    metrics.HEARTBEATS.inc()
        finally:
            self.close()

    @property
    def client_gone(self) -> bool:
        return self._reader.abandoned

    def close(self) -> None:
        """Stop watching the socket and give the lease back (idempotent)."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._socket is not None:
            with suppress(OSError):
                self._socket.settimeout(self._socket_timeout)
        batches, self._batches = self._batches, None
        if batches is not None:
            batches.close()
        self._reader.close()


class _SocketWatch:
    """Call ``on_gone`` (in the hub) once the peer has closed ``sock``.

    A libev io watcher calls ``_readable`` when the socket becomes readable,
    which costs no greenlet (a parked one holds ~10 KiB). The peek goes
    through a temporary plain socket object around the same descriptor,
    detached at once, so it never blocks the hub. Bytes the client sent (a
    pipelined request) are left where they are: the watch looks away for a
    while instead of waking on them again at once.
    """

    def __init__(self, sock: socket.socket, on_gone: Callable[[], None]) -> None:
        self._fd = sock.fileno()
        self._on_gone = on_gone
        self._loop = gevent.get_hub().loop
        self._io = self._loop.io(self._fd, 1)  # 1: readable
        self._pause: Any = None
        self._io.start(self._readable)

    def _readable(self) -> None:
        peek = _socket.socket(fileno=self._fd)
        try:
            data = peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return  # woken for nothing
        except OSError:
            data = b""  # reset: gone as well
        finally:
            peek.detach()  # the descriptor stays gunicorn's
        self._io.stop()
        if data:
            # A fresh timer each time: restarting the same one here fired it at
            # once under gevent 26.9 (measured), and the watch spun.
            self._close_pause()
            self._pause = self._loop.timer(_PIPELINED_BACKOFF_S)
            self._pause.start(self._io.start, self._readable)
        else:
            self._on_gone()

    def close(self) -> None:
        self._io.stop()
        self._io.close()
        self._close_pause()

    def _close_pause(self) -> None:
        if self._pause is not None:
            self._pause.stop()
            self._pause.close()
            self._pause = None


def _chunks(data: bytes) -> Iterator[bytes]:
    """The rendered events as writes of at most _WRITE_CHUNK bytes (a big one is split)."""
    if len(data) <= _WRITE_CHUNK:
        yield data  # the usual case: no slice, no copy
        return
    for start in range(0, len(data), _WRITE_CHUNK):
        yield data[start:start + _WRITE_CHUNK]


# For a transport that reads a stream to its end inside the request (OpenAI's
# stream: false) and must notice its client leaving meanwhile.
SocketWatch = _SocketWatch
