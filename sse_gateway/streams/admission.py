"""Who may start or read a stream, and under which key the broker keeps it.

A worker that is draining or at ``max_active_streams`` refuses new streams
(503, retry); a holder (an API key, or a client address when open) runs at
most ``max_streams_per_key`` streams, counted across workers by the broker's
slots, and holds at most ``max_readers_per_key`` readers. A stream's broker
key is scoped by its owner, so owners never share ids.
"""

from __future__ import annotations

from sse_gateway.broker import Broker
from sse_gateway.config import StreamsConfig
from sse_gateway.errors import Overloaded, TooManyReaders, TooManyStreams
from sse_gateway.pump import PumpGroup


def admit(config: StreamsConfig, broker: Broker, pumps: PumpGroup, holder: str,
          key: str) -> str | None:
    """Refuse a stream this worker or ``holder`` cannot take; else take its slot
    and return the slot's owner (None: slots are off)."""
    if pumps.draining:
        raise Overloaded("this instance is shutting down; retry", retry_after=1)
    if len(pumps) >= config.max_active_streams:
        raise Overloaded("this worker is at its stream limit; retry", retry_after=1)
    # The new stream's own reader is taken after the stream exists, so its
    # holder's cap is checked here, before any provider is asked (concurrent
    # starts of one holder are bounded by its slots; follows are capped
    # atomically).
    cap = config.max_readers_per_key
    if cap and broker.holder_readers(holder) >= cap:
        raise too_many_readers("holder", cap)
    slot_owner = holder if config.max_streams_per_key else None
    if slot_owner and not broker.take_slot(slot_owner, key, config.max_streams_per_key):
        raise TooManyStreams(f"at most {config.max_streams_per_key} streams may run at once "
                             "for one key (one owner); wait for one to end", retry_after=1)
    return slot_owner


def scoped(owner: str, stream_id: str) -> str:
    """The broker's key of an owner's stream: each owner has its own ids, so a
    client-chosen id neither collides with nor reveals another owner's stream."""
    return f"{owner}.{stream_id}" if owner else stream_id


def too_many_readers(scope: str, limit: int) -> TooManyReaders:
    whose = "this stream" if scope == "stream" else "one key"
    return TooManyReaders(f"at most {limit} readers may follow {whose} at once; "
                          "close one first", retry_after=1)
