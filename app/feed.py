"""Deliver one stream from the broker as SSE bytes: the body of every SSE response.

A feed holds a reader lease while it runs, so the pump knows someone is
listening. Under WSGI a vanished client is normally seen only when a write
fails, which can be long while the provider is silent; so a watcher greenlet
waits for the client socket to become readable and peeks: zero bytes means
the client (or nginx) closed. The lease is given back at once, which starts
the pump's resume-grace clock, and the feed stops.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import gevent
import gevent.socket

from app import metrics, sse
from app.broker import Batch, Broker, BrokerUnavailable, PositionGone, StreamNotFound

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
        self._watcher: gevent.Greenlet[Any, None] | None = None
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
            self._watcher = gevent.spawn(self._watch, self._socket)
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
                if batch.frames:
                    position = batch.last_id
                    yield from _chunks(batch.frames)
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
            # Unnumbered: the client's last event id stays where it was, so a
            # resume once the store is back loses nothing.
            yield sse.encode_event(None, "error", {
                "code": "internal_error", "message": "the stream store is unreachable; resume later",
                "retryable": True, "provider": self._provider})
        finally:
            self.close()

    def close(self) -> None:
        """Stop watching the socket and give the lease back (idempotent)."""
        if self._watcher is not None and self._watcher is not gevent.getcurrent():
            self._watcher.kill(block=True)
        self._watcher = None
        if self._socket is not None:
            with suppress(OSError):
                self._socket.settimeout(self._socket_timeout)
        self._release()

    def _release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            self._broker.release_reader(self._stream_id, lease)

    def _watch(self, sock: socket.socket) -> None:
        fileno = sock.fileno()
        while True:
            gevent.socket.wait_read(fileno)
            try:
                if sock.recv(1, socket.MSG_PEEK) == b"":
                    break
            except OSError:
                break
            gevent.sleep(_PIPELINED_BACKOFF_S)
        self.client_gone = True
        self._release()


def _chunks(frames: list[bytes]) -> Iterator[bytes]:
    """The frames as writes of at most _WRITE_CHUNK bytes (a big frame is split)."""
    data = b"".join(frames)
    if len(data) <= _WRITE_CHUNK:
        yield data  # the usual case: no slice, no copy
        return
    for start in range(0, len(data), _WRITE_CHUNK):
        yield data[start:start + _WRITE_CHUNK]
