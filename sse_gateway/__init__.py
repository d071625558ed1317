"""sse-gateway's engine: stream LLM output as numbered, resumable, cancellable events.

The public API is importable from here::

    from sse_gateway import Streams, StreamsConfig

    streams = Streams(StreamsConfig(models=("demo/echo",)))
    reader = streams.start(streams.parse(b'{"model": "demo/echo", "prompt": "hi"}'),
                           owner="", holder="me")
    for batch in reader: ...   # events.Event values; transports.sse renders them

Names are loaded on first use, so ``import sse_gateway.config`` (or
``sse_gateway.events``) costs nothing else: gevent and the SDKs come with the
service. Nothing in this package imports Flask.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# name -> the module that defines it
_EXPORTS = {
    "Streams": "sse_gateway.streams",
    "NothingFollows": "sse_gateway.streams",
    "Detached": "sse_gateway.streams",
    "StreamResult": "sse_gateway.results",
    "Message": "sse_gateway.results",
    "Reader": "sse_gateway.reader",
    "StreamsConfig": "sse_gateway.config",
    "ConfigError": "sse_gateway.config",
    "Event": "sse_gateway.events",
    "CODES": "sse_gateway.events",
    "StreamsError": "sse_gateway.errors",
    "InvalidRequest": "sse_gateway.errors",
    "UnknownModel": "sse_gateway.errors",
    "NotFound": "sse_gateway.errors",
    "StreamExists": "sse_gateway.errors",
    "PositionGone": "sse_gateway.errors",
    "TooManyStreams": "sse_gateway.errors",
    "TooManyReaders": "sse_gateway.errors",
    "Overloaded": "sse_gateway.errors",
    "StoreUnreachable": "sse_gateway.errors",
}
__all__ = [  # noqa: RUF022 - in the order of _EXPORTS
    "__version__", "Streams", "NothingFollows", "Detached", "StreamResult", "Message",
    "Reader", "StreamsConfig", "ConfigError",
    "Event", "CODES", "StreamsError", "InvalidRequest", "UnknownModel", "NotFound",
    "StreamExists", "PositionGone", "TooManyStreams", "TooManyReaders", "Overloaded",
    "StoreUnreachable",
]

if TYPE_CHECKING:
    from sse_gateway.config import ConfigError, StreamsConfig
    from sse_gateway.errors import (
        InvalidRequest,
        NotFound,
        Overloaded,
        PositionGone,
        StoreUnreachable,
        StreamExists,
        StreamsError,
        TooManyReaders,
        TooManyStreams,
        UnknownModel,
    )
    from sse_gateway.events import CODES, Event
    from sse_gateway.reader import Reader
    from sse_gateway.results import Message, StreamResult
    from sse_gateway.streams import Detached, NothingFollows, Streams


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sse_gateway' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
