"""Deliver one stream from the broker as SSE bytes: the body of every SSE response.

A feed holds a reader lease while it runs, so the pump knows someone is
listening. Under WSGI a vanished client is normally seen only when a write
fails, which can be long while the provider is silent; so the feed watches
the client socket (an event-loop callback, no greenlet) and peeks when it
becomes readable: zero bytes means the client (or nginx) closed. The lease is
given back at once, which starts the pump's resume-grace clock, and the feed
stops.
"""

from __future__ import annotations

import _socket
import logging
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import gevent

from sse_gateway import events, metrics
from sse_gateway.broker import Batch, Broker, BrokerUnavailable, PositionGone, StreamNotFound
from sse_gateway.transports import sse

log = logging.getLogger(__name__)

# How long to look away when the client sent bytes we must not consume
# (a pipelined request); a peek would see them again at once.
_PIPELINED_BACKOFF_S = 0.5
# The write timeout bounds each write as a whole, so writes are kept this
# small: a client that reads slowly but steadily is never cut off.
_WRITE_CHUNK = 64 * 1024


class Feed:
    """An iterable of SSE bytes from position ``after``; WSGI calls ``close``."""

    def __init__(self, broker: Broker, stream_id: str, *, after: int, lease: str,
                 heartbeat_s: float, retry_ms: int, provider: str, write_timeout_s: float,
                 first: Batch | None = None, client_socket: Any = None) -> None:
        self._broker = broker
        self._stream_id = stream_id
        self._after = after
        self._lease: str | None = lease
        self._heartbeat_s = heartbeat_s
        self._retry_ms = retry_ms
        self._provider = provider
        self._first = first  # read by the view, which had to check the position
        self._socket = client_socket
        self._write_timeout_s = write_timeout_s
        self._socket_timeout: float | None = None  # what gunicorn had set, restored at the end
        self._watch: _SocketWatch | None = None
        self.client_gone = False

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
            self._watch = _SocketWatch(self._socket, self._gone)
        heartbeat = self._heartbeat_s
        try:
            yield sse.encode_retry(self._retry_ms)
            position = self._after
            sent_at = renewed_at = time.monotonic()
            batch, self._first = self._first, None
            while not self.client_gone:
                if batch is None:
                    wait = max(0.0, sent_at + heartbeat - time.monotonic())
                    batch = self._broker.read(self._stream_id, position, timeout=wait)
                    if self.client_gone:
                        return
                if batch.events:
                    position = batch.last_id
                    yield from _chunks(sse.render_all(batch.events))
                    sent_at = time.monotonic()
                elif not batch.ended and time.monotonic() >= sent_at + heartbeat:
                    yield sse.PING
                    metrics.HEARTBEATS.inc()
                    sent_at = time.monotonic()
                if batch.ended:
                    return
                batch = None
                if time.monotonic() - renewed_at >= heartbeat and self._lease is not None:
                    self._broker.renew_reader(self._stream_id, self._lease)
                    renewed_at = time.monotonic()
        except StreamNotFound:
            log.info("stream %s expired while a reader followed it", self._stream_id)
        except PositionGone:
            log.info("stream %s: a reader fell behind the kept events", self._stream_id)
        except BrokerUnavailable:
            log.warning("stream %s: the broker is unreachable; ending a reader", self._stream_id)
            yield sse.render(events.store_unreachable(self._provider))
        finally:
            self.close()

    def close(self) -> None:
        """Stop watching the socket and give the lease back (idempotent)."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._socket is not None:
            with suppress(OSError):
                self._socket.settimeout(self._socket_timeout)
        self._release()

    def _release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            self._broker.release_reader(self._stream_id, lease)

    def _gone(self) -> None:
        """The client closed (called in the hub): stop, and give the lease back now."""
        self.client_gone = True
        gevent.spawn(self._release)  # a broker call may block: not in the hub


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
