"""Open a broker by URL scheme, as ``limits`` chooses its storage."""

from __future__ import annotations

from urllib.parse import urlsplit

from app.broker.base import (
    CANCEL,
    CANCELLED,
    DONE,
    ENDED,
    ERROR,
    READERS,
    RUNNING,
    Batch,
    Broker,
    BrokerError,
    BrokerUnavailable,
    PositionGone,
    StreamInfo,
    StreamNotFound,
)

__all__ = ["CANCEL", "CANCELLED", "DONE", "ENDED", "ERROR", "READERS", "RUNNING", "Batch",
           "Broker", "BrokerError", "BrokerUnavailable", "PositionGone", "StreamInfo",
           "StreamNotFound", "open_broker"]


def open_broker(url: str, *, ttl: float) -> Broker:
    """The backend for ``url``: ``memory://`` now; ``redis://`` is the next backend."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from app.broker.memory import MemoryBroker

        return MemoryBroker(ttl=ttl)
    raise ValueError(f"broker URL scheme {scheme!r} is not supported by this version "
                     "(only memory:// is; leave REDIS_URL unset)")
