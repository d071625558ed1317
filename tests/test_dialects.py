"""Dialects in process: a stream remembers the wire format it was created in, every
response renders it so, and a resume primes a dialect that needs what came before."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import gevent
import pytest

from sse_gateway.errors import StreamExists
from sse_gateway.events import Event
from sse_gateway.reader import Reader
from sse_gateway.transports import dialects
from sse_gateway.transports.dialects import SSERenderer
from sse_gateway.transports.sse_feed import Feed
from tests.test_streams import HOLDER, OWNER, read_all, request, service, start


class Counting:
    """A stateful test dialect: each event as '<n>:<name>;' where n counts the events
    this stream has had so far, including those before a resume position."""

    needs_history = True

    def __init__(self) -> None:
        self.seen = 0

    def prime(self, events: Sequence[Event]) -> None:
        self.seen += len(events)

    def open(self, retry_ms: int) -> bytes:
        return b"<"

    def render(self, events: Sequence[Event]) -> bytes:
        out = b""
        for event in events:
            self.seen += 1
            out += f"{self.seen}:{event.name};".encode()
        return out

    def ping(self) -> bytes:
        return b"."


@pytest.fixture(autouse=True)
def counting() -> Iterator[None]:
    dialects.register("counting", Counting)
    yield
    del dialects.RENDERERS["counting"]


def feed(reader: Reader) -> bytes:
    renderer = dialects.renderer(reader.dialect)
    renderer.prime(reader.history)
    with gevent.Timeout(5):
        return b"".join(Feed(reader, retry_ms=1000, write_timeout_s=5, renderer=renderer))


def test_a_stream_is_rendered_in_its_dialect_first_and_on_every_resume() -> None:
    streams, _ = service()
    first = start(streams, stream_id="s" * 16, dialect="counting")
    assert (first.dialect, first.history) == ("counting", ())
    assert feed(first) == b"<1:start;2:token;3:token;4:done;"
    info = streams.info("s" * 16, OWNER)
    assert info.dialect == "counting"
    resumed = streams.follow("s" * 16, OWNER, 1, HOLDER)
    assert isinstance(resumed, Reader)
    assert [e.id for e in resumed.history] == [0, 1]  # primed with what it skips
    assert feed(resumed) == b"<3:token;4:done;"  # exactly what the first reader got after 1


def test_the_gateway_dialect_needs_no_history() -> None:
    streams, _ = service()
    read_all(start(streams, stream_id="t" * 16))
    resumed = streams.follow("t" * 16, OWNER, 1, HOLDER)
    assert isinstance(resumed, Reader)
    assert (resumed.dialect, resumed.history) == ("sse", ())
    assert feed(resumed).startswith(b"retry: 1000\nid: 2\nevent: token\n")
    assert not SSERenderer.needs_history


def test_a_retry_in_another_dialect_is_another_request() -> None:
    streams, _ = service()
    read_all(start(streams, stream_id="u" * 16, dialect="counting"))
    with pytest.raises(StreamExists, match="another dialect"):
        streams.start(request(), owner=OWNER, holder=HOLDER, stream_id="u" * 16)
