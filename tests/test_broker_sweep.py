"""Redis: the sweep that ends, as lost, the running streams whose producer died.

Nobody reads these streams: only ``broker.sweep()`` can end them. A producer
here is a broker that created and appended, then never ticks again. The
sweep suspects first and declares only after the confirmation delay (half the
producer timeout, by Redis's clock), and exactly one process declares each
stream (``on_lost``). The tests use a database of their own (``SWEEP_REDIS_URL``):
a sweep ends every silent stream of its database, other runs' included.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from sse_gateway.broker import DONE, ERROR, RUNNING, BrokerOptions, StreamInfo
from sse_gateway.broker.redis import RedisBroker
from sse_gateway.events import Event, stream_lost
from tests.redis_server import SWEEP_REDIS_URL

pytestmark = pytest.mark.redis  # skipped when no Redis answers: tests/redis_server.py

OPTIONS = BrokerOptions(ttl=1.0, lease_ttl=30, producer_timeout=0.6, max_events=100)
CONFIRM_MS = 300  # half the producer timeout


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(SWEEP_REDIS_URL)
    yield c
    c.close()


class Lost(list[str]):
    """An ``on_lost`` that records each stream declared, under a lock (threads sweep)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def __call__(self, stream_id: str) -> None:
        with self._lock:
            self.append(stream_id)


@pytest.fixture
def brokers() -> Iterator[list[tuple[RedisBroker, Lost]]]:
    """Two processes' brokers on one Redis, each recording what it declared lost."""
    made = []
    for _ in range(2):
        broker, lost = RedisBroker(SWEEP_REDIS_URL, OPTIONS), Lost()
        broker.on_lost = lost
        made.append((broker, lost))
    yield made
    for broker, _ in made:
        broker.close()


def dead_stream(broker: RedisBroker) -> str:
    """A stream with a start and a token whose producer never ticks after creating it."""
    sid = secrets.token_urlsafe(16)
    assert broker.create(StreamInfo(sid, owner="k", model="openai/x", created=1.0))
    broker.append(sid, Event(0, "start", b"{}"))
    broker.append(sid, Event(1, "token", b'{"content": "a"}'))
    return sid


def redis_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def running(client: redis.Redis, sid: str) -> bool:
    return client.zscore("sse:running", sid) is not None


def until(predicate: Callable[[], object], timeout: float = 10.0,
          between: Callable[[], None] = lambda: None) -> None:
    """Call ``between`` until ``predicate()`` holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "still waiting at the deadline"
        between()
        time.sleep(0.01)


def test_a_silent_producer_is_suspected_then_declared_after_the_confirmation_delay(
        brokers: list[tuple[RedisBroker, Lost]], client: redis.Redis) -> None:
    (broker, lost), _ = brokers
    sid = dead_stream(broker)
    meta = f"sse:{{{sid}}}:meta"
    assert running(client, sid)
    broker.sweep()  # the producer was heard of just now: nothing to do
    assert client.hget(meta, "suspected") is None and lost == []
    # First sweeps after the producer timeout: suspected only.
    until(lambda: client.hget(meta, "suspected") is not None, between=broker.sweep)
    suspected = int(client.hget(meta, "suspected"))  # type: ignore[arg-type]
    assert lost == []
    # Later sweeps declare it, and only once the confirmation delay has passed.
    while not lost:
        before = redis_ms(client)
        broker.sweep()
        after = redis_ms(client)
        if not lost:
            assert after - suspected <= CONFIRM_MS + 5_000, "never declared"
            assert client.hget(f"sse:{{{sid}}}:meta", "status") == b"running"
        else:
            assert after - suspected >= CONFIRM_MS, (before, after, suspected)
    assert lost == [sid]
    info = broker.info(sid)
    assert info is not None and (info.status, info.last_event_id) == (ERROR, 2)
    assert broker.read(sid, 1, timeout=0).events == [stream_lost(2, "openai/x")]
    assert not running(client, sid) and client.hget(meta, "suspected") is None
    broker.sweep()
    assert lost == [sid]  # declared once


def test_two_brokers_sweeping_at_once_declare_each_stream_once(
        brokers: list[tuple[RedisBroker, Lost]]) -> None:
    (a, lost_a), (b, lost_b) = brokers
    sids = [dead_stream(a) for _ in range(5)]
    stop = threading.Event()
    failures: list[BaseException] = []

    def sweep_until_stopped(broker: RedisBroker) -> None:
        try:
            while not stop.is_set():
                broker.sweep()
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=sweep_until_stopped, args=(broker,)) for broker in (a, b)]
    for thread in threads:
        thread.start()
    try:
        until(lambda: len(lost_a) + len(lost_b) >= len(sids) or failures)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert failures == []
    assert sorted(lost_a + lost_b) == sorted(sids)  # each once, by one of them
    for sid in sids:
        assert a.read(sid, 1, timeout=0).events == [stream_lost(2, "openai/x")]


def test_a_ticking_producer_is_never_declared(
        brokers: list[tuple[RedisBroker, Lost]], client: redis.Redis) -> None:
    (producer, lost_p), (sweeper, lost_s) = brokers
    sid = dead_stream(producer)
    stop = threading.Event()

    def tick() -> None:  # every producer_timeout / 6 (the pump ticks every / 4)
        while not stop.wait(0.1):
            producer.producer_tick(sid)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        ends = time.monotonic() + 3 * OPTIONS.producer_timeout
        while time.monotonic() < ends:  # watched for three producer timeouts
            sweeper.sweep()
            time.sleep(0.02)
        info = sweeper.info(sid)
        assert info is not None and info.status == RUNNING
        assert (lost_p, lost_s) == ([], [])
    finally:
        stop.set()
        ticker.join()
    # Silent from now on: the same sweeps declare it.
    until(lambda: lost_s, between=sweeper.sweep)
    assert lost_s == [sid] and not running(client, sid)


def test_an_ended_stream_leaves_the_running_set(
        brokers: list[tuple[RedisBroker, Lost]], client: redis.Redis) -> None:
    (broker, lost), _ = brokers
    finished, cancelled = dead_stream(broker), dead_stream(broker)
    assert running(client, finished) and running(client, cancelled)
    broker.finish(finished, Event(2, "done", b"{}"), DONE)
    broker.cancel(cancelled, "deleted")
    assert not running(client, finished)
    assert running(client, cancelled)  # asked to stop, not ended yet
    broker.finish(cancelled, Event(2, "cancelled", b"{}"), "cancelled")
    assert not running(client, cancelled)
    broker.sweep()
    assert lost == []


def test_a_stream_that_expired_without_an_end_leaves_the_running_set(
        brokers: list[tuple[RedisBroker, Lost]], client: redis.Redis) -> None:
    (broker, lost), _ = brokers
    sid = dead_stream(broker)
    client.delete(*(f"sse:{{{sid}}}:{part}" for part in ("meta", "log", "readers", "alive")))
    until(lambda: not running(client, sid), between=broker.sweep)
    assert lost == []
