"""The streams service in process: memory broker, a scripted provider, no server.

Each test starts streams through ``Streams`` exactly as a view would and reads
them through the reader it hands back, so what is asserted is what a client
would receive (event names and payloads), the service's refusals, and what the
provider saw (opened, closed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import gevent
import gevent.event
import pytest

from sse_gateway.broker import Batch, BrokerOptions
from sse_gateway.broker.memory import MemoryBroker
from sse_gateway.config import StreamsConfig
from sse_gateway.errors import (
    InvalidRequest,
    NotFound,
    Overloaded,
    PositionGone,
    StreamExists,
    StreamsError,
    TooManyReaders,
    TooManyStreams,
    UnknownModel,
)
from sse_gateway.events import CODES, Event
from sse_gateway.providers.base import (
    ChatRequest,
    Delta,
    Finished,
    TextDelta,
    UpstreamAuth,
    Usage,
)
from sse_gateway.reader import Reader
from sse_gateway.streams import NothingFollows, Streams
from sse_gateway.validation import StreamRequest, parse_stream_request
from tests.redis_server import REDIS_URL

OWNER, HOLDER = "key_a", "key_a"


class Scripted:
    """A provider that plays a script: deltas, an exception to raise, or ``HANG``
    (wait until the stream is ended from outside)."""

    name = "scripted"
    available = True

    def __init__(self, script: Sequence[Any]) -> None:
        self.script = script
        self.opened = 0
        self.finished = 0  # generations whose stream was closed (any way)
        self.closed = False  # the provider itself (its pools)

    def check(self, request: ChatRequest) -> None:
        """Every field is honoured (the scripted answer ignores them)."""

    def stream(self, request: ChatRequest) -> Generator[Delta, None, None]:
        self.opened += 1
        try:
            for step in self.script:
                if step is HANG:
                    gevent.event.Event().wait()
                elif isinstance(step, Exception):
                    raise step
                else:
                    yield step
        finally:
            self.finished += 1

    def close(self) -> None:
        self.closed = True


HANG = object()


class GreenMemoryBroker(MemoryBroker):
    """The memory broker, waiting for events the way it does in a gevent worker.

    In a worker gevent has patched ``threading``, so a read's wait lets the
    pump's greenlets run. This test process is not patched (pytest has
    imported ssl long before), so a read here looks again every millisecond,
    yielding to gevent in between.
    """

    def read(self, stream_id: str, after: int, timeout: float) -> Batch:
        deadline = time.monotonic() + timeout
        while True:
            batch = super().read(stream_id, after, 0)
            if batch.events or batch.ended or time.monotonic() >= deadline:
                return batch
            gevent.sleep(0.001)
HELLO = [TextDelta("Hello"), TextDelta(" world"), Usage(3, 2), Finished("stop")]


def service(script: Sequence[Any] = HELLO, **config: Any) -> tuple[Streams, Scripted]:
    provider = Scripted(script)
    settings = StreamsConfig(models=("scripted/a",), heartbeat_s=0.05,
                             producer_timeout_s=0.2, shutdown_margin_s=0.0,
                             **config).check()
    broker = GreenMemoryBroker(BrokerOptions(ttl=settings.stream_ttl_s,
                                             max_events=settings.max_events_per_stream))
    return Streams(settings, broker=broker, providers={"scripted": provider}), provider


def request() -> StreamRequest:
    return parse_stream_request(b'{"model": "scripted/a", "prompt": "hi"}',
                                max_tokens_limit=100, max_messages=10, max_resume_grace_s=60,
                                max_fallbacks=0)


def start(streams: Streams, owner: str = OWNER, holder: str = HOLDER, **kwargs: Any) -> Reader:
    reader = streams.start(request(), owner=owner, holder=holder, **kwargs)
    assert isinstance(reader, Reader)
    return reader


def read_all(reader: Reader | NothingFollows | Iterator[Batch]) -> list[Event]:
    """Every event the reader delivers until the stream ends (idle ticks skipped)."""
    assert not isinstance(reader, NothingFollows)
    with gevent.Timeout(5):
        return [event for batch in reader for event in batch.events]


def names(events: Sequence[Event]) -> list[str]:
    return [event.name for event in events]


def read_until(batches: Iterator[Batch], name: str) -> list[Event]:
    """Events up to the first ``name`` (a batch is not split: the stream
    has no other event yet in these tests); ``batches`` stays open."""
    seen: list[Event] = []
    with gevent.Timeout(5):
        while name not in names(seen):
            seen += next(batches).events
    return seen


def test_a_stream_delivers_start_tokens_done() -> None:
    streams, provider = service()
    reader = start(streams, stream_id="s" * 16)
    events = read_all(reader)
    assert names(events) == ["start", "token", "token", "done"]
    assert [e.id for e in events] == [0, 1, 2, 3]
    first = events[0].payload()
    assert (first["stream_id"], first["model"]) == ("s" * 16, "scripted/a")
    assert [e.payload() for e in events[1:3]] == [{"content": "Hello"}, {"content": " world"}]
    done = events[3].payload()
    assert (done["finish_reason"], done["usage"]) == ("stop", {"input_tokens": 3,
                                                                "output_tokens": 2})
    assert provider.finished == 1
    assert streams.info("s" * 16, OWNER).public()["status"] == "done"


def test_a_provider_error_is_the_error_event() -> None:
    streams, _ = service([UpstreamAuth("refused", provider="scripted")])
    events = read_all(start(streams))
    assert names(events) == ["start", "error"]
    assert events[1].payload()["code"] == "upstream_auth"


def test_follow_from_a_position_and_past_the_end() -> None:
    streams, _ = service()
    read_all(start(streams, stream_id="f" * 16))
    later = read_all(streams.follow("f" * 16, OWNER, 1, HOLDER))
    assert [e.id for e in later] == [2, 3]
    assert names(read_all(streams.follow("f" * 16, OWNER, None, HOLDER)))[0] == "start"
    # At or after the terminal event nothing will ever follow (HTTP: 204).
    assert streams.follow("f" * 16, OWNER, 3, HOLDER) == NothingFollows("f" * 16)
    assert streams.follow("f" * 16, OWNER, 9, HOLDER) == NothingFollows("f" * 16)


def test_a_position_past_a_running_stream_or_no_longer_kept_is_gone() -> None:
    streams, _ = service([TextDelta("a"), HANG])
    reader = start(streams, stream_id="g" * 16)
    assert names(read_until(reader.batches(), "token")) == ["start", "token"]
    with pytest.raises(PositionGone) as gone:
        streams.follow("g" * 16, OWNER, 7, HOLDER)
    assert (gone.value.status, gone.value.param) == (410, "last_event_id")
    streams.cancel("g" * 16, OWNER)
    reader.close()

    kept, _ = service([TextDelta(str(i)) for i in range(20)], max_events_per_stream=5)
    read_all(start(kept, stream_id="h" * 16))
    with pytest.raises(PositionGone):
        kept.follow("h" * 16, OWNER, 0, HOLDER)


def test_another_owners_stream_is_not_found() -> None:
    streams, _ = service()
    read_all(start(streams, stream_id="o" * 16))
    for call in (lambda: streams.follow("o" * 16, "key_b", None, "key_b"),
                 lambda: streams.info("o" * 16, "key_b"),
                 lambda: streams.cancel("o" * 16, "key_b")):
        with pytest.raises(NotFound):
            call()
    # Each owner has its own ids: the same id starts another stream.
    mine = start(streams, owner="key_b", holder="key_b", stream_id="o" * 16)
    assert names(read_all(mine))[-1] == "done"


def test_cancel_ends_the_stream_and_closes_the_provider_stream() -> None:
    streams, provider = service([TextDelta("a"), HANG])
    reader = start(streams, stream_id="c" * 16)
    batches = reader.batches()
    assert names(read_until(batches, "token")) == ["start", "token"]
    info, asked = streams.cancel("c" * 16, OWNER)
    assert asked and info.stream_id == "c" * 16
    rest = read_all(batches)
    assert names(rest) == ["cancelled"]
    assert rest[0].payload() == {"reason": "deleted"}
    assert provider.finished == 1
    info, asked = streams.cancel("c" * 16, OWNER)
    assert (asked, info.status) == (False, "cancelled")


def test_a_draining_or_full_worker_refuses_new_streams() -> None:
    streams, _ = service([HANG], max_active_streams=1)
    running = start(streams)
    with pytest.raises(Overloaded) as full:
        start(streams)
    assert (full.value.status, full.value.retry_after) == (503, 1)
    streams.drain(0.01)
    with pytest.raises(Overloaded, match="shutting down"):
        start(streams)
    assert streams.draining
    # Drain ends what still runs with cancelled/shutdown.
    events = read_all(running)
    assert names(events)[-1] == "cancelled"
    assert events[-1].payload() == {"reason": "shutdown"}
    assert streams.active == 0


def test_slots_are_per_holder() -> None:
    streams, _ = service([HANG], max_streams_per_key=1)
    first = start(streams)
    with pytest.raises(TooManyStreams) as refused:
        start(streams)
    assert refused.value.status == 429
    other = start(streams, owner="key_b", holder="key_b")
    streams.drain(0)
    for reader in (first, other):
        assert names(read_all(reader))[-1] == "cancelled"
    assert streams.broker.slots(HOLDER) == 0


def test_reader_caps() -> None:
    streams, _ = service([HANG], max_readers_per_stream=1, max_readers_per_key=2)
    first = start(streams, stream_id="r" * 16)
    with pytest.raises(TooManyReaders, match="this stream"):
        streams.follow("r" * 16, OWNER, None, HOLDER)
    second = start(streams)  # the holder's second reader
    with pytest.raises(TooManyReaders, match="one key"):  # checked before any provider
        start(streams)
    second.close()
    assert isinstance(start(streams), Reader)
    streams.drain(0)
    first.close()


def test_a_retried_start_resumes_with_the_same_request_else_exists() -> None:
    streams, provider = service([TextDelta("a"), HANG])
    reader = start(streams, stream_id="p" * 16, digest="d1")
    assert names(read_until(reader.batches(), "token")) == ["start", "token"]
    parsed: list[bool] = []

    def body() -> StreamRequest:
        parsed.append(True)
        return request()

    again = streams.start(body, owner=OWNER, holder=HOLDER, stream_id="p" * 16, digest="d1")
    assert isinstance(again, Reader) and not again.started
    assert names(read_until(again.batches(), "token")) == ["start", "token"]
    # With the last event id it saw, whatever the body: resumed from there.
    later = streams.start(body, owner=OWNER, holder=HOLDER, stream_id="p" * 16,
                          digest="other", position=0)
    assert isinstance(later, Reader) and later.after == 0
    assert (parsed, provider.opened) == ([], 1)
    with pytest.raises(StreamExists) as exists:
        streams.start(body, owner=OWNER, holder=HOLDER, stream_id="p" * 16, digest="d2")
    assert (exists.value.status, exists.value.param, parsed) == (409, "X-Stream-ID", [True])
    with pytest.raises(NotFound):
        streams.start(body, owner=OWNER, holder=HOLDER, stream_id="q" * 16, position=3)
    with pytest.raises(InvalidRequest) as invalid:
        streams.start(body, owner=OWNER, holder=HOLDER, position=3)
    assert invalid.value.param == "Last-Event-ID"
    streams.drain(0)
    for r in (reader, again, later):
        r.close()


def test_requests_are_validated_and_models_resolved() -> None:
    streams, _ = service()
    with pytest.raises(InvalidRequest) as invalid:
        streams.parse(b'{"model": "scripted/a"}')
    assert invalid.value.status == 400
    with pytest.raises(UnknownModel) as unknown:
        streams.start(streams.parse(b'{"model": "scripted/b", "prompt": "x"}'),
                      owner=OWNER, holder=HOLDER)
    assert unknown.value.param == "model"
    assert streams.models() == [{"id": "scripted/a", "provider": "scripted"}]


def test_a_readers_lease_is_held_until_it_closes() -> None:
    streams, _ = service([HANG])
    reader = start(streams, stream_id="l" * 16)
    assert streams.broker.readers(reader.key) == 1
    reader.close()
    assert streams.broker.readers(reader.key) == 0
    streams.drain(0)


def test_error_statuses_come_from_the_code_table() -> None:
    classes = list(StreamsError.__subclasses__())
    for cls in classes:
        classes += cls.__subclasses__()
        assert cls("x").status == CODES[cls.code].status
    assert UnknownModel in classes and issubclass(UnknownModel, InvalidRequest)


def test_close_releases_the_providers() -> None:
    streams, provider = service()
    streams.close()
    assert provider.closed


@pytest.mark.redis  # skipped with the reason when no Redis answers (make unit)
def test_close_stops_the_redis_hub_thread() -> None:
    def hubs() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "redis-hub"}

    before = hubs()
    provider = Scripted(HELLO)
    streams = Streams(StreamsConfig(redis_url=REDIS_URL), providers={"scripted": provider})
    (hub,) = hubs() - before
    streams.close()
    hub.join(timeout=5)
    assert not hub.is_alive() and provider.closed


def test_the_public_api_is_importable_from_the_package() -> None:
    import sse_gateway

    assert set(sse_gateway.__all__) == {"__version__", *sse_gateway._EXPORTS}
    for name in sse_gateway.__all__:
        assert getattr(sse_gateway, name) is not None
    assert sse_gateway.Streams is Streams
    with pytest.raises(AttributeError):
        _ = sse_gateway.Pump
