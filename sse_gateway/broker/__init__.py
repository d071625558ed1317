"""Open a broker by URL scheme, as ``limits`` chooses its storage."""

from __future__ import annotations

from urllib.parse import urlsplit

from sse_gateway.broker.base import (
    CANCEL,
    READERS,
    Batch,
    Broker,
    BrokerError,
    BrokerOptions,
    BrokerUnavailable,
    ConversationFull,
    PositionGone,
    StreamEnded,
    StreamInfo,
    StreamNotFound,
    TooManyReaders,
)
from sse_gateway.events import CANCELLED, DONE, ENDED, ERROR, RUNNING

__all__ = ["CANCEL", "CANCELLED", "DONE", "ENDED", "ERROR", "READERS", "RUNNING", "Batch",
           "Broker", "BrokerError", "BrokerOptions", "BrokerUnavailable", "ConversationFull",
           "PositionGone",
           "StreamEnded", "StreamInfo", "StreamNotFound", "TooManyReaders", "open_broker"]


def open_broker(url: str, options: BrokerOptions) -> Broker:
    """The backend for ``url``: ``memory://`` (this process) or ``redis://``/``rediss://``."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from sse_gateway.broker.memory import MemoryBroker

        return MemoryBroker(options)
    if scheme in ("redis", "rediss"):
        from sse_gateway.broker.redis import RedisBroker

        return RedisBroker(url, options)
    raise ValueError(f"broker URL {url!r} has an unknown scheme {scheme!r}")
