"""The streams service: ``Streams`` (service), admission and owners (admission)."""

from sse_gateway.reader import Reader
from sse_gateway.streams.service import NothingFollows, Streams

__all__ = ["NothingFollows", "Reader", "Streams"]
