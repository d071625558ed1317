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
from typing import Any

import gevent
import gevent.socket

from app import sse
from app.broker import Broker, StreamNotFound

log = logging.getLogger(__name__)

# How long to look away when the client sent bytes we must not consume
# (a pipelined request); a peek would see them again at once.
_PIPELINED_BACKOFF_S = 0.5


class Feed:
    """An iterable of SSE bytes from position ``after``; WSGI calls ``close``."""

    def __init__(self, broker: Broker, stream_id: str, *, after: int, lease: str,
                 heartbeat_s: float, retry_ms: int, client_socket: Any = None) -> None:
        self._broker = broker
        self._stream_id = stream_id
        self._after = after
        self._lease: str | None = lease
        self._heartbeat_s = heartbeat_s
        self._retry_ms = retry_ms
        self._socket = client_socket
        self._watcher: gevent.Greenlet[Any, None] | None = None
        self.client_gone = False

    def __iter__(self) -> Iterator[bytes]:
        if self._socket is not None:
            self._watcher = gevent.spawn(self._watch, self._socket)
        try:
            yield sse.encode_retry(self._retry_ms)
            position = self._after
            sent_at = time.monotonic()
            while not self.client_gone:
                wait = max(0.0, sent_at + self._heartbeat_s - time.monotonic())
                batch = self._broker.read(self._stream_id, position, timeout=wait)
                if self.client_gone:
                    return
                if batch.frames:
                    position = batch.last_id
                    yield b"".join(batch.frames)
                    sent_at = time.monotonic()
                elif batch.ended:
                    return
                elif time.monotonic() >= sent_at + self._heartbeat_s:
                    yield sse.PING
                    sent_at = time.monotonic()
                if batch.ended:
                    return
        except StreamNotFound:
            log.info("stream %s expired while a reader followed it", self._stream_id)
        finally:
            self.close()

    def close(self) -> None:
        """Stop watching the socket and give the lease back (idempotent)."""
        if self._watcher is not None and self._watcher is not gevent.getcurrent():
            self._watcher.kill(block=True)
        self._watcher = None
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
