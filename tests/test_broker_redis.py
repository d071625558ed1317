"""What only the shared backend does: several processes, lost producers, expiry."""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from sse_gateway.broker import CANCEL, ERROR, READERS, RUNNING, BrokerOptions, StreamInfo
from sse_gateway.broker.base import EVENT_OVERHEAD
from sse_gateway.broker.redis import RedisBroker
from sse_gateway.events import Event, stream_lost
from tests.redis_server import REDIS_URL
from tests.test_broker import data

pytestmark = pytest.mark.redis  # skipped when no Redis answers: tests/redis_server.py

OPTIONS = BrokerOptions(ttl=1.0, lease_ttl=30, producer_timeout=0.5, max_events=100)


@pytest.fixture
def pair() -> Iterator[tuple[RedisBroker, RedisBroker]]:
    """Two brokers on one Redis: two workers, or two hosts."""
    a, b = RedisBroker(REDIS_URL, OPTIONS), RedisBroker(REDIS_URL, OPTIONS)
    yield a, b
    a.close()
    b.close()


def new_stream(broker: RedisBroker) -> str:
    sid = secrets.token_urlsafe(16)
    assert broker.create(StreamInfo(sid, owner="k", model="openai/x", created=1.0))
    return sid


def test_a_reader_elsewhere_is_woken_by_pubsub(pair: tuple[RedisBroker, RedisBroker]) -> None:
    a, b = pair
    sid = new_stream(a)
    a.append(sid, Event(0, "x", b"start"))
    lease = b.attach_reader(sid)
    got = []
    thread = threading.Thread(target=lambda: got.append(b.read(sid, 0, timeout=10)))
    thread.start()
    time.sleep(0.2)  # the reader must be waiting when the event comes
    appended = time.monotonic()
    a.producer_tick(sid)
    a.append(sid, Event(1, "x", b"token"))
    thread.join(timeout=10)
    assert got and data(got[0]) == [b"token"]
    assert time.monotonic() - appended < 0.5  # woken, not polled
    b.release_reader(sid, lease)


def test_cancel_and_readers_reach_the_producer_elsewhere(
        pair: tuple[RedisBroker, RedisBroker]) -> None:
    a, b = pair
    sid = new_stream(a)
    seen: list[str] = []
    changed = threading.Event()
    a.watch(sid, lambda what: (seen.append(what), changed.set()))
    lease = b.attach_reader(sid)
    assert changed.wait(5)
    assert seen == [READERS]
    changed.clear()
    info = b.cancel(sid, "deleted")
    assert info is not None and info.cancel_reason == "deleted"
    assert changed.wait(5)
    assert seen == [READERS, CANCEL]
    assert a.producer_tick(sid) == ("deleted", 1)
    b.release_reader(sid, lease)


def test_a_dead_producer_is_declared_lost_once(pair: tuple[RedisBroker, RedisBroker]) -> None:
    a, b = pair
    sid = new_stream(a)
    a.append(sid, Event(0, "x", b"start"))
    a.append(sid, Event(1, "x", b"token"))
    # The producer never ticks again: after producer_timeout its readers end it.
    results = []
    threads = [threading.Thread(target=lambda r=r: results.append(r.read(sid, 1, timeout=10)))
               for r in (a, b, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)
    assert [r.events for r in results] == [[stream_lost(2, "openai/x")]] * 3
    assert all(r.ended for r in results)
    info = b.info(sid)
    assert info is not None and (info.status, info.last_event_id) == (ERROR, 2)


def wait_until_alive_lapses(sid: str) -> None:
    """The producer's alive key expires by the clock (as when Redis itself stalls)."""
    client = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + 5
    while client.exists(f"sse:{{{sid}}}:alive"):
        assert time.monotonic() < deadline
        time.sleep(0.02)  # expiry is a clock, not an event
    client.close()


def test_a_lapsed_alive_key_is_only_suspected_at_first(
        pair: tuple[RedisBroker, RedisBroker]) -> None:
    # After a Redis stall the alive key of every producer has lapsed, although
    # they are fine: a reader looking first must leave them the time to tick.
    a, b = pair
    sid = new_stream(a)
    a.append(sid, Event(0, "x", b"start"))
    wait_until_alive_lapses(sid)
    batch = b.read(sid, 0, timeout=0.2)  # looks once it has waited
    assert (data(batch), batch.ended) == ([], False)
    stop = threading.Event()

    def tick() -> None:  # the producer is back
        while not stop.is_set():
            a.producer_tick(sid)
            stop.wait(0.1)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        batch = b.read(sid, 0, timeout=1.5)  # looks again, after the confirmation time
        assert (data(batch), batch.ended) == ([], False)
        info = b.info(sid, confirm=True)
        assert info is not None and info.status == RUNNING
        client = redis.Redis.from_url(REDIS_URL)
        assert client.hget(f"sse:{{{sid}}}:meta", "suspected") is None  # the tick cleared it
        client.close()
    finally:
        stop.set()
        ticker.join()


def test_one_status_look_ends_a_stream_whose_producer_died(
        pair: tuple[RedisBroker, RedisBroker]) -> None:
    # Nobody reads: the status itself must not say "running" forever.
    a, b = pair
    sid = new_stream(a)
    a.append(sid, Event(0, "x", b"start"))
    wait_until_alive_lapses(sid)
    looked = time.monotonic()
    info = b.info(sid, confirm=True)
    waited = time.monotonic() - looked
    assert info is not None and (info.status, info.last_event_id) == (ERROR, 1)
    assert waited < OPTIONS.producer_timeout / 2 + 0.5  # the confirmation time, and no more
    assert b.read(sid, 0, timeout=0).events == [stream_lost(1, "openai/x")]


def test_a_ticking_producer_is_not_lost(pair: tuple[RedisBroker, RedisBroker]) -> None:
    a, b = pair
    sid = new_stream(a)
    a.append(sid, Event(0, "x", b"start"))
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.1):
            a.producer_tick(sid)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        batch = b.read(sid, 0, timeout=1.5)  # three producer timeouts
        assert (data(batch), batch.ended) == ([], False)
    finally:
        stop.set()
        ticker.join()


def test_every_key_expires(pair: tuple[RedisBroker, RedisBroker]) -> None:
    a, _ = pair
    sid = new_stream(a)
    a.append(sid, Event(0, "x", b"start"))
    lease = a.attach_reader(sid)
    a.producer_tick(sid)
    client = redis.Redis.from_url(REDIS_URL)
    keys = client.keys(f"sse:{{{sid}}}:*")
    assert len(keys) == 4  # meta, log, readers, alive
    assert all(client.pttl(key) > 0 for key in keys)  # even while running
    a.finish(sid, Event(1, "x", b"done"), "done")
    a.release_reader(sid, lease)
    deadline = time.monotonic() + 5
    while client.keys(f"sse:{{{sid}}}:*") and time.monotonic() < deadline:
        time.sleep(0.1)  # expiry is a clock, not an event
    assert client.keys(f"sse:{{{sid}}}:*") == []
    client.close()


def test_the_byte_count_stays_exact_while_trimming() -> None:
    """The script's count of a log's bytes is the sum of what the log holds, after
    every append, whatever mix of sizes comes and whichever cap trims."""
    options = BrokerOptions(ttl=2.0, max_events=20, max_bytes=5000, max_stored_bytes=8000)
    broker = RedisBroker(REDIS_URL, options)
    client = redis.Redis.from_url(REDIS_URL)
    rng = random.Random(7)
    owner = secrets.token_urlsafe(8)
    sid = secrets.token_urlsafe(16)
    meta, log_key = f"sse:{{{sid}}}:meta", f"sse:{{{sid}}}:log"
    try:
        assert broker.create(StreamInfo(sid, owner=owner, model="openai/x", created=1.0))
        for i in range(300):
            size = rng.choice((1, 10, 100, 1000, 3000, 6000))
            broker.append(sid, Event(i, "x", b"x" * size))
            entries = client.xrange(log_key)
            kept = sum(len(fields[b"f"]) + EVENT_OVERHEAD for _, fields in entries)
            assert int(client.hget(meta, "bytes")) == kept  # type: ignore[arg-type]
            assert len(entries) <= 20 and (kept <= 5000 or len(entries) == 1)
            assert entries[-1][0] == b"0-%d" % (i + 1)  # the newest is always kept
        broker.finish(sid, Event(300, "x", b"end"), "done")
        ended, stored = f"sse:ended:{owner}", f"sse:stored:{owner}"
        kept = sum(len(fields[b"f"]) + EVENT_OVERHEAD for _, fields in client.xrange(log_key))
        assert [m.decode() for m in client.zrange(ended, 0, -1)] == [f"{sid}/{kept}"]
        assert int(client.get(stored)) == kept  # type: ignore[arg-type]
        assert 0 < client.pttl(ended) <= 2000 and 0 < client.pttl(stored) <= 2000
    finally:
        broker.close()
        client.close()
