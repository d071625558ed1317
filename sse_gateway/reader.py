"""Read one stream from the broker for one client: what every transport delivers.

A reader holds a reader lease while it runs, so the pump knows someone is
listening, and renews it as it goes; it yields the stream's events in batches
from a position, and an empty batch after ``idle_s`` of silence (a
transport's cue for a heartbeat). It knows no wire format and no socket: a
transport renders the batches and, when its client is gone, calls
``abandon`` (the lease goes back at once, which starts the pump's
resume-grace clock) or ``close``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterator

import gevent

from sse_gateway import events
from sse_gateway.broker import Batch, Broker, BrokerUnavailable, PositionGone, StreamNotFound

log = logging.getLogger(__name__)


class Reader:
    """An iterable of ``Batch`` from position ``after``; ``close`` gives the lease back."""

    def __init__(self, broker: Broker, key: str, *, stream_id: str, after: int, lease: str,
                 idle_s: float, model: str, first: Batch | None = None,
                 started: bool = False, dialect: str = "sse",
                 history: tuple[events.Event, ...] = ()) -> None:
        self.stream_id = stream_id  # the id its client knows
        self.key = key  # the broker's key
        self.model = model  # as asked for (provider/model)
        self.provider = model.partition("/")[0]  # named by an event the reader itself sends
        self.started = started  # this reader's call started the stream
        self.after = after
        self.dialect = dialect  # the wire format the stream was created in
        self.history = history  # the events up to ``after``, when its dialect needs them
        self._broker = broker
        self._lease: str | None = lease
        self._idle_s = idle_s
        self._first = first  # read when the position was checked
        self.abandoned = False

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def batches(self) -> Generator[Batch, None, None]:
        """Batches with events; an empty one after each ``idle_s`` of silence.

        The last batch has ``ended`` set when the stream ended. When the store
        becomes unreachable the reader ends with an unnumbered
        ``store_unreachable`` event: the client's position stays where it
        was, so a resume later loses nothing.
        """
        idle_s = self._idle_s
        broker, key = self._broker, self.key
        position = self.after
        try:
            sent_at = renewed_at = time.monotonic()
            batch, self._first = self._first, None
            while not self.abandoned:
                if batch is None:
                    wait = max(0.0, sent_at + idle_s - time.monotonic())
                    batch = broker.read(key, position, timeout=wait)
                    if self.abandoned:
                        return
                if batch.events:
                    position = batch.last_id
                    yield batch
                    sent_at = time.monotonic()
                elif not batch.ended and time.monotonic() >= sent_at + idle_s:
                    yield batch
                    sent_at = time.monotonic()
                if batch.ended:
                    return
                batch = None
                if time.monotonic() - renewed_at >= idle_s and self._lease is not None:
                    broker.renew_reader(key, self._lease)
                    renewed_at = time.monotonic()
        except StreamNotFound:
            log.info("stream %s expired while a reader followed it", key)
        except PositionGone:
            log.info("stream %s: a reader fell behind the kept events", key)
        except BrokerUnavailable:
            log.warning("stream %s: the broker is unreachable; ending a reader", key)
            yield Batch([events.store_unreachable(self.provider)], position, True)
        finally:
            self.close()

    def abandon(self) -> None:
        """The client is gone (may be called in the hub): stop, give the lease back now."""
        self.abandoned = True
        gevent.spawn(self.close)  # a broker call may block: not in the hub

    def close(self) -> None:
        """Give the lease back (idempotent)."""
        lease, self._lease = self._lease, None
        if lease is not None:
            self._broker.release_reader(self.key, lease)
