"""The broker contract: every backend must pass these."""

from __future__ import annotations

import secrets
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from sse_gateway.broker import (
    CANCEL,
    CANCELLED,
    DONE,
    READERS,
    RUNNING,
    Batch,
    Broker,
    BrokerOptions,
    PositionGone,
    StreamEnded,
    StreamInfo,
    StreamNotFound,
    TooManyReaders,
    open_broker,
)
from sse_gateway.broker.base import READ_COUNT, event_cost
from sse_gateway.events import Event
from tests.redis_server import REDIS_URL

# Every backend; the Redis one is skipped when no Redis answers (tests/redis_server.py).
BACKENDS = ["memory://", pytest.param(REDIS_URL, marks=pytest.mark.redis, id="redis")]


def data(batch: Batch) -> list[bytes]:
    """The payloads a read returned."""
    return [event.data for event in batch.events]

OPTIONS = BrokerOptions(ttl=0.5, lease_ttl=30, producer_timeout=5, max_events=50)


@pytest.fixture(params=BACKENDS)
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    backend = open_broker(request.param, OPTIONS)
    yield backend
    backend.close()


def eventually(predicate: Callable[[], bool], timeout: float = 5) -> bool:
    """Wait for what another process tells asynchronously (pub/sub)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def make(broker: Broker, stream_id: str | None = None) -> str:
    stream_id = stream_id or secrets.token_urlsafe(16)
    assert broker.create(StreamInfo(stream_id, owner="k", model="demo/echo", created=1.0))
    return stream_id


def test_create_refuses_a_taken_id(broker: Broker) -> None:
    sid = make(broker)
    assert not broker.create(StreamInfo(sid, owner="k", model="x/y", created=2.0))
    assert broker.info(sid) is not None
    info = broker.info(sid)
    assert info is not None
    assert (info.status, info.model, info.last_event_id, info.usage) == (
        RUNNING, "demo/echo", -1, None)


def test_the_dialect_is_kept(broker: Broker) -> None:
    """Every response renders a stream in the dialect it was created in (both brokers)."""
    sid = secrets.token_urlsafe(16)
    assert broker.create(StreamInfo(sid, owner="k", model="demo/echo", created=1.0,
                                    dialect="openai"))
    plain = make(broker)
    assert broker.info(sid).dialect == "openai"  # type: ignore[union-attr]
    assert broker.info(plain).dialect == "sse"  # type: ignore[union-attr]
    broker.finish(sid, Event(0, "x", b"end"), DONE)
    assert broker.info(sid).dialect == "openai"  # type: ignore[union-attr]
    assert "dialect" not in broker.info(sid).public()  # type: ignore[union-attr]


def test_a_chat_names_its_current_stream_per_owner_until_the_ttl(broker: Broker) -> None:
    """The AI SDK's resume asks for a chat: each owner's chat id -> its latest stream."""
    chat = secrets.token_urlsafe(8)
    assert broker.chat("k", chat) is None
    broker.set_chat("k", chat, "first")
    broker.set_chat("k", chat, "second")
    broker.set_chat("other", chat, "theirs")
    assert (broker.chat("k", chat), broker.chat("other", chat), broker.chat("", chat)) == (
        "second", "theirs", None)
    assert eventually(lambda: broker.chat("k", chat) is None)  # ttl 0.5 s


def test_metadata_is_kept_and_returned(broker: Broker) -> None:
    sid = secrets.token_urlsafe(16)
    metadata = {"conversation": "42", "ünï": "çödé \u2028 \"quoted\"", "empty": ""}
    assert broker.create(StreamInfo(sid, owner="k", model="demo/echo", created=1.0,
                                    metadata=metadata))
    plain = make(broker)
    info = broker.info(sid)
    assert info is not None and info.metadata == metadata
    assert info.public()["metadata"] == metadata
    assert broker.info(plain).metadata == {}  # type: ignore[union-attr]
    # What the caller holds and what it is given are copies: changing either
    # changes nothing the store keeps.
    metadata["conversation"] = "changed"
    info.metadata["empty"] = "changed"
    broker.finish(sid, Event(0, "x", b"end"), DONE)
    for kept in (broker.info(sid), broker.cancel(sid, "deleted")):
        assert kept is not None and kept.metadata == {
            "conversation": "42", "ünï": "çödé \u2028 \"quoted\"", "empty": ""}


def test_read_from_any_position_and_finish(broker: Broker) -> None:
    sid = make(broker)
    for i in range(3):
        broker.append(sid, Event(i, "x", f"frame{i}".encode()))
    assert data(broker.read(sid, -1, timeout=0)) == [b"frame0", b"frame1", b"frame2"]
    batch = broker.read(sid, 1, timeout=0)
    assert (data(batch), batch.last_id, batch.ended) == ([b"frame2"], 2, False)
    broker.finish(sid, Event(3, "x", b"end"), DONE, {"input_tokens": 1, "output_tokens": 2})
    batch = broker.read(sid, 2, timeout=5)
    assert (data(batch), batch.last_id, batch.ended) == ([b"end"], 3, True)
    assert broker.read(sid, 3, timeout=5) .ended  # at the end: returns at once
    info = broker.info(sid)
    assert info is not None
    assert (info.status, info.last_event_id, info.usage) == (
        DONE, 3, {"input_tokens": 1, "output_tokens": 2})


@pytest.fixture(params=BACKENDS)
def long_log(request: pytest.FixtureRequest) -> Iterator[Broker]:
    backend = open_broker(request.param, replace(OPTIONS, max_events=3000))
    yield backend
    backend.close()


def test_a_reader_far_behind_is_served_in_bounded_batches(long_log: Broker) -> None:
    """At most READ_COUNT events a read, in order, and ``ended`` only with the last."""
    sid = make(long_log)
    for i in range(2500):
        long_log.append(sid, Event(i, "x", b"%d" % i))
    long_log.finish(sid, Event(2500, "x", b"end"), DONE)
    position, seen = -1, []
    while True:
        batch = long_log.read(sid, position, timeout=0)
        assert 0 < len(batch.events) <= READ_COUNT
        assert [e.id for e in batch.events] == list(range(position + 1, batch.last_id + 1))
        seen.extend(batch.events)
        position = batch.last_id
        if batch.ended:
            break
    assert [e.id for e in seen] == list(range(2501)) and seen[-1].data == b"end"


def test_append_out_of_order_is_refused(broker: Broker) -> None:
    sid = make(broker)
    broker.append(sid, Event(0, "x", b"a"))
    with pytest.raises(ValueError):
        broker.append(sid, Event(2, "x", b"c"))


def test_a_write_sent_again_is_stored_once(broker: Broker) -> None:
    # A retry of a write whose answer was lost (the store paused, the client
    # timed out, the store applied it later) finds it stored: that is success.
    sid = make(broker)
    broker.append(sid, Event(0, "x", b"a"))
    broker.append(sid, Event(0, "x", b"a"))
    broker.append(sid, Event(1, "x", b"b"))
    with pytest.raises(ValueError):
        broker.append(sid, Event(1, "x", b"not b"))  # the same id with another event is no retry
    broker.finish(sid, Event(2, "x", b"end"), DONE)
    broker.finish(sid, Event(2, "x", b"end"), DONE)
    assert data(broker.read(sid, -1, timeout=0)) == [b"a", b"b", b"end"]
    with pytest.raises(StreamEnded):
        broker.append(sid, Event(3, "x", b"late"))
    with pytest.raises(StreamEnded):
        broker.finish(sid, Event(3, "x", b"late end"), DONE)
    info = broker.info(sid)
    assert info is not None and (info.status, info.last_event_id) == (DONE, 2)


def test_read_waits_for_the_next_event(broker: Broker) -> None:
    sid = make(broker)
    results = []
    reading = threading.Thread(target=lambda: results.append(broker.read(sid, -1, timeout=10)))
    reading.start()
    started = time.monotonic()
    broker.append(sid, Event(0, "x", b"a"))
    reading.join(timeout=10)
    assert results and data(results[0]) == [b"a"]
    assert time.monotonic() - started < 2


def test_read_times_out_empty(broker: Broker) -> None:
    sid = make(broker)
    started = time.monotonic()
    batch = broker.read(sid, -1, timeout=0.2)
    assert (data(batch), batch.ended) == ([], False)
    assert 0.15 < time.monotonic() - started < 2


def test_unknown_stream(broker: Broker) -> None:
    unknown = secrets.token_urlsafe(16)
    assert broker.info(unknown) is None
    assert broker.cancel(unknown, "deleted") is None
    with pytest.raises(StreamNotFound):
        broker.read(unknown, -1, timeout=0)


def test_cancel_tells_watchers_once_and_only_while_running(broker: Broker) -> None:
    sid = make(broker)
    seen: list[str] = []
    unwatch = broker.watch(sid, seen.append)
    info = broker.cancel(sid, "deleted")
    assert info is not None and info.cancel_reason == "deleted"
    broker.cancel(sid, "deleted")
    assert eventually(lambda: seen == [CANCEL])
    unwatch()
    broker.finish(sid, Event(0, "x", b"x"), CANCELLED)
    assert broker.cancel(sid, "deleted").status == CANCELLED  # type: ignore[union-attr]
    time.sleep(0.2)  # nothing more may arrive
    assert seen == [CANCEL]


def test_watch_after_cancel_is_told_at_once(broker: Broker) -> None:
    sid = make(broker)
    broker.cancel(sid, "deleted")
    seen: list[str] = []
    broker.watch(sid, seen.append)
    assert seen == [CANCEL]


def test_reader_leases(broker: Broker) -> None:
    sid = make(broker)
    seen: list[str] = []
    broker.watch(sid, seen.append)
    first = broker.attach_reader(sid)
    second = broker.attach_reader(sid)
    assert first != second and broker.readers(sid) == 2
    broker.release_reader(sid, first)
    broker.release_reader(sid, first)  # idempotent
    assert broker.readers(sid) == 1
    broker.release_reader(sid, second)
    assert broker.readers(sid) == 0
    assert eventually(lambda: seen == [READERS] * 4)


def test_reader_caps_per_stream_and_per_holder(broker: Broker) -> None:
    one, two = make(broker), make(broker)
    holder, other = f"key_{secrets.token_hex(4)}", f"key_{secrets.token_hex(4)}"
    taken = [broker.attach_reader(one, holder, 2, 3) for _ in range(2)]
    with pytest.raises(TooManyReaders) as refused:
        broker.attach_reader(one, holder, 2, 3)
    assert (refused.value.scope, refused.value.limit) == ("stream", 2)
    taken.append(broker.attach_reader(two, holder, 2, 3))
    with pytest.raises(TooManyReaders) as refused:
        broker.attach_reader(two, holder, 2, 3)
    assert (refused.value.scope, refused.value.limit) == ("holder", 3)
    assert broker.readers(one) == 2 and broker.readers(two) == 1
    assert broker.holder_readers(holder) == 3
    broker.attach_reader(two, other, 2, 3)  # another holder has its own count
    broker.release_reader(two, taken[-1])
    assert broker.holder_readers(holder) == 2
    broker.attach_reader(two, holder, 0, 3)  # the place given back is free again
    assert broker.holder_readers(other) == 1


def test_a_hold_counts_with_the_holders_readers_and_gives_its_place_back(
        broker: Broker) -> None:
    """A WebSocket's lease: one of its holder's readers, on no stream."""
    sid = make(broker)
    holder = f"key_{secrets.token_hex(4)}"
    socket_lease = broker.hold(holder, 3)
    reader = broker.attach_reader(sid, holder, 0, 3)
    second_socket = broker.hold(holder, 3)
    assert broker.holder_readers(holder) == 3 and broker.readers(sid) == 1
    with pytest.raises(TooManyReaders) as refused:
        broker.hold(holder, 3)
    assert (refused.value.scope, refused.value.limit) == ("holder", 3)
    with pytest.raises(TooManyReaders):  # the sockets count against readers too
        broker.attach_reader(sid, holder, 0, 3)
    broker.renew_hold(holder, socket_lease)
    broker.release_hold(holder, socket_lease)
    broker.release_hold(holder, socket_lease)  # idempotent
    assert broker.holder_readers(holder) == 2
    broker.attach_reader(sid, holder, 0, 3)  # the place given back is free again
    broker.release_reader(sid, reader)
    broker.release_hold(holder, second_socket)
    assert broker.holder_readers(holder) == 1
    assert broker.hold(f"key_{secrets.token_hex(4)}", 1)  # another holder: its own count


def test_ended_streams_expire_after_the_ttl(broker: Broker) -> None:
    sid = make(broker)
    broker.finish(sid, Event(0, "x", b"x"), DONE)
    assert broker.info(sid) is not None
    deadline = time.monotonic() + 5
    while broker.info(sid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)  # expiry is a clock, not an event
    assert broker.info(sid) is None
    assert broker.create(StreamInfo(sid, owner="k", model="demo/echo", created=3.0))


def test_running_streams_do_not_expire(broker: Broker) -> None:
    sid = make(broker)
    time.sleep(0.7)  # longer than the ttl: a running stream must survive it
    assert broker.info(sid) is not None


def test_only_the_last_max_events_are_kept(broker: Broker) -> None:
    sid = make(broker)
    for i in range(120):
        broker.append(sid, Event(i, "x", b"%d" % i))
    with pytest.raises(PositionGone):
        broker.read(sid, -1, timeout=0)
    with pytest.raises(PositionGone):
        broker.read(sid, 68, timeout=0)
    batch = broker.read(sid, 69, timeout=0)  # events 70..119: the last 50
    assert data(batch) == [b"%d" % i for i in range(70, 120)]
    assert batch.last_id == 119


def test_producer_tick_reports_cancel_and_readers(broker: Broker) -> None:
    sid = make(broker)
    assert broker.producer_tick(sid) == (None, 0)
    lease = broker.attach_reader(sid)
    broker.renew_reader(sid, lease)
    assert broker.producer_tick(sid) == (None, 1)
    broker.cancel(sid, "deleted")
    assert broker.producer_tick(sid) == ("deleted", 1)
    broker.release_reader(sid, lease)


def test_readers_wake_within_a_timeout_they_were_given(broker: Broker) -> None:
    sid = make(broker)
    broker.append(sid, Event(0, "x", b"a"))
    woke = []

    def reader() -> None:
        started = time.monotonic()
        batch = broker.read(sid, 0, timeout=10)
        woke.append((time.monotonic() - started, data(batch)))

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.2)  # let the reader block; the append must wake it, not the timeout
    broker.append(sid, Event(1, "x", b"b"))
    thread.join(timeout=10)
    assert woke and woke[0][1] == [b"b"] and woke[0][0] < 1.0


# Small caps: an event that stores 100 bytes counts 148 bytes (EVENT_OVERHEAD), so
# a stream keeps 6 of them; an owner's ended streams keep 3000 bytes.
SMALL = BrokerOptions(ttl=30, lease_ttl=30, producer_timeout=5, max_events=50,
                      max_bytes=1000, max_stored_bytes=3000)


@pytest.fixture(params=BACKENDS)
def small(request: pytest.FixtureRequest) -> Iterator[Broker]:
    backend = open_broker(request.param, SMALL)
    yield backend
    backend.close()


def ev(i: int, size: int = 100) -> Event:
    """Event ``i`` that stores ``size`` bytes (``stored``: name, a line break, data)."""
    return Event(i, "x", (b"%d:" % i).ljust(size - 2, b"."))


def test_only_the_last_max_bytes_are_kept(small: Broker) -> None:
    assert event_cost(ev(0)) == 148
    sid = make(small)
    for i in range(20):
        small.append(sid, ev(i))
    for gone in (-1, 0, 12):
        with pytest.raises(PositionGone):
            small.read(sid, gone, timeout=0)
    batch = small.read(sid, 13, timeout=0)  # events 14..19: 6 x 148 <= 1000 < 7 x 148
    assert batch.events == [ev(i) for i in range(14, 20)] and batch.last_id == 19
    assert small.read(sid, 17, timeout=0).events == [ev(18), ev(19)]
    # The terminal event is always kept, even when it pushes out all the rest.
    small.finish(sid, ev(20, 900), DONE)
    with pytest.raises(PositionGone):
        small.read(sid, 18, timeout=0)
    batch = small.read(sid, 19, timeout=0)
    assert (batch.events, batch.last_id, batch.ended) == ([ev(20, 900)], 20, True)


def test_an_event_larger_than_max_bytes_is_kept_alone(small: Broker) -> None:
    sid = make(small)
    small.append(sid, ev(0))
    small.append(sid, ev(1, 5000))
    with pytest.raises(PositionGone):
        small.read(sid, -1, timeout=0)
    assert small.read(sid, 0, timeout=0).events == [ev(1, 5000)]
    small.append(sid, ev(2))  # and it goes as soon as another comes
    assert small.read(sid, 1, timeout=0).events == [ev(2)]
    with pytest.raises(PositionGone):
        small.read(sid, 0, timeout=0)


def ended_stream(broker: Broker, owner: str, size: int = 900) -> str:
    """An ended stream of ``owner`` that keeps ``size + 48`` bytes."""
    sid = secrets.token_urlsafe(16)
    assert broker.create(StreamInfo(sid, owner=owner, model="demo/echo", created=1.0))
    broker.finish(sid, ev(0, size), DONE)
    return sid


def test_an_owner_keeps_at_most_max_stored_bytes_of_ended_streams(small: Broker) -> None:
    mine, theirs = secrets.token_urlsafe(8), secrets.token_urlsafe(8)
    other = ended_stream(small, theirs)  # the oldest of all, but another owner's
    running = secrets.token_urlsafe(16)
    assert small.create(StreamInfo(running, owner=mine, model="demo/echo", created=1.0))
    for i in range(6):  # a running stream's bytes (888) do not push out ended ones
        small.append(running, ev(i))
    first = [ended_stream(small, mine) for _ in range(3)]  # 3 x 948 = 2844 <= 3000
    assert all(small.info(sid) is not None for sid in first)
    newest = ended_stream(small, mine)  # 3792 > 3000: the oldest goes, and only it
    assert small.info(first[0]) is None
    with pytest.raises(StreamNotFound):
        small.read(first[0], -1, timeout=0)
    for kept in (*first[1:], newest):
        batch = small.read(kept, -1, timeout=0)
        assert (batch.events, batch.ended) == ([ev(0, 900)], True)
    info = small.info(running)
    assert info is not None and info.status == RUNNING
    assert small.read(running, -1, timeout=0).events == [ev(i) for i in range(6)]
    assert small.info(other) is not None  # one owner cannot push out another's
    # A big ended stream pushes out as many of the owner's oldest as it takes.
    big = ended_stream(small, mine, 2900)  # 948 x 2 + 2948 > 3000
    assert [small.info(sid) is None for sid in (*first[1:], newest, big)] == [
        True, True, True, False]
    assert small.info(other) is not None and small.info(running) is not None


def test_the_memory_broker_keeps_no_more_than_it_replays() -> None:
    """What a stream keeps in memory is what it can replay: its last max_events."""
    broker = open_broker("memory://", replace(SMALL, max_bytes=64 << 20))
    sid = make(broker)
    big = 16 * 1024
    tracemalloc.start()
    try:
        for i in range(99):  # 50 kept; 99 x 16 KiB if it kept up to 2 x max_events
            broker.append(sid, ev(i, big))
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert broker.read(sid, 48, timeout=0).events == [ev(i, big) for i in range(49, 99)]
    assert held < 60 * big, f"the broker holds {held} bytes for 50 x {big}"
