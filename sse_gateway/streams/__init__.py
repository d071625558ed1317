"""The streams service: ``Streams`` (service), admission and owners (admission)."""

from sse_gateway.reader import Reader
from sse_gateway.streams.service import Detached, Held, NothingFollows, Streams

__all__ = ["Detached", "Held", "NothingFollows", "Reader", "Streams"]
