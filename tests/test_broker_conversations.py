"""The broker's conversations contract: every backend must pass these.

The memory backend expires by its clock (a fake one here); Redis by its own
(a short real TTL, awaited by looking again).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
import redis

from sse_gateway.broker import Broker, BrokerOptions, ConversationFull, StreamInfo, open_broker
from sse_gateway.broker.base import CONVERSATION_OVERHEAD
from sse_gateway.broker.memory import MemoryBroker
from tests.fake_clock import FakeClock
from tests.test_broker import BACKENDS, REDIS_URL

TTL_S = 1.0


class Backend:
    """A broker, and a way to let time pass for it."""

    def __init__(self, url: str, **more: Any) -> None:
        options = BrokerOptions(ttl=5, conversation_ttl=TTL_S, **more)
        self.clock = FakeClock() if url.startswith("memory") else None
        self.broker: Broker = (MemoryBroker(options, clock=self.clock) if self.clock
                               else open_broker(url, options))

    def after(self, seconds: float, done: Callable[[], bool]) -> bool:
        """Whether ``done()`` holds once ``seconds`` have passed (looking again for
        a while: Redis expires a key by its own clock)."""
        if self.clock is not None:
            self.clock.now += seconds
            return done()
        deadline = time.monotonic() + seconds + 2
        time.sleep(seconds)
        while not done():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    made = Backend(request.param)
    yield made
    made.broker.close()


def conv() -> str:
    return secrets.token_urlsafe(8)


def add(broker: Broker, owner: str, cid: str, *turns: bytes, once: str | None = None,
        max_turns: int = 100, max_bytes: int = 100_000) -> bool:
    return broker.add_turns(owner, cid, list(turns), once=once or secrets.token_urlsafe(6),
                            max_turns=max_turns, max_bytes=max_bytes)


def test_turns_are_kept_in_order_per_owner(backend: Backend) -> None:
    broker, cid = backend.broker, conv()
    assert broker.conversation("k", cid) == []
    assert add(broker, "k", cid, b'{"n":1}', "é".encode())
    assert add(broker, "k", cid, b'{"n":3}')
    assert broker.conversation("k", cid) == [b'{"n":1}', "é".encode(), b'{"n":3}']
    assert broker.conversation("other", cid) == []  # another owner's is another one
    assert add(broker, "other", cid, b"x")
    assert broker.conversation("other", cid) == [b"x"]
    assert len(broker.conversation("k", cid)) == 3


def test_an_addition_is_made_once(backend: Backend) -> None:
    broker, cid = backend.broker, conv()
    assert add(broker, "k", cid, b"a", b"b", once="stream-1")
    assert not add(broker, "k", cid, b"a", b"b", once="stream-1")
    assert add(broker, "k", cid, b"c", once="stream-1#answer")
    assert broker.conversation("k", cid) == [b"a", b"b", b"c"]


def test_an_addition_after_another_lands_only_where_that_one_is(backend: Backend) -> None:
    broker, cid = backend.broker, conv()
    assert add(broker, "k", cid, b"question", once="stream-1")
    assert broker.add_turns("k", cid, [b"answer"], once="stream-1#answer", max_turns=10,
                            max_bytes=1000, after="stream-1")
    assert broker.conversation("k", cid) == [b"question", b"answer"]
    # Forgotten meanwhile (DELETE, eviction, expiry): the answer is not added alone.
    assert add(broker, "k", cid, b"second question", once="stream-2")
    assert broker.forget_conversation("k", cid)
    assert not broker.add_turns("k", cid, [b"second answer"], once="stream-2#answer",
                                max_turns=10, max_bytes=1000, after="stream-2")
    assert broker.conversation("k", cid) == []
    # ... nor into a new conversation of the same id that another stream began.
    assert add(broker, "k", cid, b"third question", once="stream-3")
    assert not broker.add_turns("k", cid, [b"second answer"], once="stream-2#answer",
                                max_turns=10, max_bytes=1000, after="stream-2")
    assert broker.conversation("k", cid) == [b"third question"]


def test_the_bounds_are_checked_in_the_same_step(backend: Backend) -> None:
    broker, cid = backend.broker, conv()
    assert add(broker, "k", cid, b"12345", b"12345", max_turns=3, max_bytes=12)
    with pytest.raises(ConversationFull) as full:  # a third turn fits, its bytes do not
        add(broker, "k", cid, b"123", max_turns=3, max_bytes=12)
    assert (full.value.turns, full.value.size) == (2, 10)
    with pytest.raises(ConversationFull):  # two small turns: the turn bound
        add(broker, "k", cid, b"1", b"1", max_turns=3, max_bytes=12)
    assert broker.conversation("k", cid) == [b"12345", b"12345"]  # nothing added
    assert add(broker, "k", cid, b"12", max_turns=3, max_bytes=12)  # exactly at both
    with pytest.raises(ConversationFull):  # one more byte
        add(broker, "k", cid, b"1", max_turns=4, max_bytes=12)
    # Bytes count UTF-8, not characters.
    other = conv()
    with pytest.raises(ConversationFull):
        add(broker, "k", other, "éé".encode(), max_turns=3, max_bytes=3)


def test_a_conversation_expires_its_ttl_after_its_last_addition(backend: Backend) -> None:
    broker, cid = backend.broker, conv()
    add(broker, "k", cid, b"1")
    assert backend.after(TTL_S * 0.6, lambda: True)
    add(broker, "k", cid, b"2")  # refreshed
    assert backend.after(TTL_S * 0.6, lambda: True)
    assert broker.conversation("k", cid) == [b"1", b"2"]
    assert backend.after(TTL_S * 0.5, lambda: broker.conversation("k", cid) == [])
    # Its additions are forgotten with it: the same name adds again, from nothing.
    assert add(broker, "k", cid, b"3", once="again", max_turns=1, max_bytes=1)
    assert broker.conversation("k", cid) == [b"3"]


def test_forget(backend: Backend) -> None:
    broker, cid = backend.broker, conv()
    assert not broker.forget_conversation("k", cid)
    add(broker, "k", cid, b"1", once="s1")
    assert not broker.forget_conversation("other", cid)
    assert broker.forget_conversation("k", cid)
    assert broker.conversation("k", cid) == []
    assert add(broker, "k", cid, b"2", once="s1", max_turns=1, max_bytes=1)


def test_a_streams_conversation_is_kept_with_it(backend: Backend) -> None:
    broker = backend.broker
    sid = secrets.token_urlsafe(16)
    assert broker.create(StreamInfo(sid, owner="k", model="demo/echo", created=1.0,
                                    conversation_id="chat-7"))
    info = broker.info(sid)
    assert info is not None and info.conversation_id == "chat-7"


# The bytes of all of one owner's conversations: the bound, and turns of known sizes
# (no overhead counted per conversation but where a test says so).
OWNED = 100


@pytest.fixture(params=BACKENDS)
def bounded(request: pytest.FixtureRequest) -> Iterator[Backend]:
    made = Backend(request.param, max_conversation_bytes_per_owner=OWNED,
                   conversation_overhead=0)
    yield made
    made.broker.close()


def sized(n: int) -> bytes:
    return b"x" * n


def held(broker: Broker, owner: str, ids: list[str]) -> dict[str, int]:
    """The bytes each of these conversations keeps (those it still keeps)."""
    kept = {cid: sum(map(len, broker.conversation(owner, cid))) for cid in ids}
    return {cid: size for cid, size in kept.items() if size}


def counted(backend: Backend, owner: str) -> dict[str, int]:
    """What the backend's index of the owner's conversations counts (its insides):
    each conversation's bytes, and ``#`` their sum."""
    broker = backend.broker
    if isinstance(broker, MemoryBroker):
        owned = broker._owned.get(owner, {})
        found = {cid: conversation.size for cid, conversation in owned.items()}
        return {**found, "#": broker._owned_bytes.get(owner, 0)}
    client = redis.Redis.from_url(REDIS_URL)
    try:
        members = {m.decode() for m in client.zrange(f"sse:convs:{owner}", 0, -1)}
        sizes = {k.decode(): int(v) for k, v in client.hgetall(f"sse:convbytes:{owner}").items()}
    finally:
        client.close()
    assert members == set(sizes) - {"#"}
    return sizes


def test_an_owner_over_its_bound_loses_its_least_recently_added_to_first(
        bounded: Backend, caplog: pytest.LogCaptureFixture) -> None:
    broker, owner = bounded.broker, conv()
    a, b, c, d, e = (conv() for _ in range(5))
    for cid in (a, b, c):
        add(broker, owner, cid, sized(30))
    add(broker, owner, a, b"secret-text")  # a: 41 bytes, now the most recent; 101 in all
    assert held(broker, owner, [a, b, c]) == {a: 41, c: 30}  # b was the oldest
    caplog.set_level(logging.INFO, logger="sse_gateway.broker.base")
    add(broker, owner, d, sized(30))  # 101: c goes (a was added to after it)
    assert held(broker, owner, [a, b, c, d]) == {a: 41, d: 30}
    add(broker, owner, e, sized(50))  # 121: a goes, then 80 fits
    assert held(broker, owner, [a, b, c, d, e]) == {d: 30, e: 50}
    assert counted(bounded, owner) == {d: 30, e: 50, "#": 80}
    evictions = [r.getMessage() for r in caplog.records if "forgotten" in r.getMessage()]
    assert evictions == [f"conversation {c} of key {owner!r} (30 bytes) forgotten: the key's "
                         "conversations keep more than their bound",
                         f"conversation {a} of key {owner!r} (41 bytes) forgotten: the key's "
                         "conversations keep more than their bound"]
    assert all(r.levelno == logging.INFO for r in caplog.records if "forgotten" in r.getMessage())
    assert "secret" not in caplog.text  # names and sizes, never content
    # A forgotten one is unknown (as expired): its id begins a new conversation.
    assert broker.conversation(owner, a) == []
    assert not broker.forget_conversation(owner, a)
    assert add(broker, owner, a, b"new")
    assert broker.conversation(owner, a) == [b"new"]


def test_the_added_to_conversation_is_never_evicted_by_its_own_addition(
        bounded: Backend) -> None:
    broker, owner = bounded.broker, conv()
    small, big = conv(), conv()
    add(broker, owner, small, sized(30))
    add(broker, owner, big, sized(90))  # 120: the other one goes
    assert held(broker, owner, [small, big]) == {big: 90}
    add(broker, owner, big, sized(20))  # over the owner's bound alone: its own bound rules
    assert held(broker, owner, [small, big]) == {big: 110}



def test_refused_and_repeated_additions_evict_nothing(bounded: Backend) -> None:
    broker, owner = bounded.broker, conv()
    x, y = conv(), conv()
    add(broker, owner, x, sized(50))
    add(broker, owner, y, sized(45), once="y1")
    with pytest.raises(ConversationFull):  # over y's own bound: nothing added, x stays
        add(broker, owner, y, sized(10), max_bytes=50)
    assert not add(broker, owner, y, sized(10), once="y1")  # a retry: nothing changes
    assert held(broker, owner, [x, y]) == {x: 50, y: 45}
    assert add(broker, owner, y, sized(10), once="y2")  # 105: now x goes
    assert held(broker, owner, [x, y]) == {y: 55}


def test_another_owner_is_untouched(bounded: Backend) -> None:
    broker, owner, neighbour = bounded.broker, conv(), conv()
    theirs, same_id = conv(), conv()
    add(broker, neighbour, theirs, sized(90))
    add(broker, neighbour, same_id, sized(5))
    for _ in range(4):
        add(broker, owner, same_id, sized(10))
        add(broker, owner, conv(), sized(80))
    assert held(broker, neighbour, [theirs, same_id]) == {theirs: 90, same_id: 5}


def test_expiry_and_forget_give_their_bytes_back(bounded: Backend) -> None:
    broker, owner = bounded.broker, conv()
    old, gone, b, c = conv(), conv(), conv(), conv()
    add(broker, owner, old, sized(60))
    assert bounded.after(TTL_S * 1.1, lambda: broker.conversation(owner, old) == [])
    add(broker, owner, gone, sized(40))
    assert broker.forget_conversation(owner, gone)
    add(broker, owner, b, sized(50))
    add(broker, owner, c, sized(45))  # 95: fits once the expired and the forgotten are out
    assert held(broker, owner, [old, gone, b, c]) == {b: 50, c: 45}
    assert counted(bounded, owner) == {b: 50, c: 45, "#": 95}  # pruned, not pushed out
    add(broker, owner, old, sized(5))  # exactly 100
    assert held(broker, owner, [old, gone, b, c]) == {old: 5, b: 50, c: 45}
    add(broker, owner, gone, sized(1))
    assert held(broker, owner, [old, gone, b, c]) == {old: 5, c: 45, gone: 1}


def test_concurrent_additions_cannot_exceed_the_bound(bounded: Backend) -> None:
    """Several clients (Redis: a broker each, in threads) or greenlets (memory: one
    process) add to many conversations of one owner at once."""
    owner, workers, each = conv(), 6, 8
    ids = [[conv() for _ in range(each)] for _ in range(workers)]
    runs: list[Any]
    if bounded.clock is None:  # a longer ttl than the fixture's: nothing expires here
        brokers = [open_broker(REDIS_URL, BrokerOptions(
            ttl=5, conversation_ttl=30, max_conversation_bytes_per_owner=OWNED,
            conversation_overhead=0))
            for _ in range(workers)]
        pause: Callable[[], None] = lambda: time.sleep(0)  # noqa: E731
    else:
        brokers = [bounded.broker] * workers
        pause = lambda: gevent.sleep(0)  # noqa: E731

    def work(broker: Broker, mine: list[str]) -> None:
        for cid in mine:
            add(broker, owner, cid, sized(15))
            pause()
            add(broker, owner, cid, sized(10))

    try:
        if bounded.clock is None:
            runs = [threading.Thread(target=work, args=(broker, mine))
                    for broker, mine in zip(brokers, ids, strict=True)]
            for run in runs:
                run.start()
            for run in runs:
                run.join()
        else:
            runs = [gevent.spawn(work, broker, mine)
                    for broker, mine in zip(brokers, ids, strict=True)]
            gevent.joinall(runs, raise_error=True)
        _check_after_concurrent(brokers[0], owner, [cid for mine in ids for cid in mine])
    finally:
        if bounded.clock is None:
            for broker in brokers:
                broker.close()


def _check_after_concurrent(broker: Broker, owner: str, everyone: list[str]) -> None:
    kept = held(broker, owner, everyone)
    assert OWNED - 25 < sum(kept.values()) <= OWNED, kept
    # 10: pushed out between its two additions, the second began it anew.
    assert all(size in (10, 15, 25) for size in kept.values())
    # The owner's count is still right: one full conversation pushes out all the
    # others, and two small ones after it keep together.
    add(broker, owner, full := conv(), sized(OWNED))
    assert held(broker, owner, [*everyone, full]) == {full: OWNED}
    add(broker, owner, one := conv(), sized(10))
    add(broker, owner, two := conv(), sized(10))
    assert held(broker, owner, [*everyone, full, one, two]) == {one: 10, two: 10}


@pytest.fixture(params=BACKENDS)
def overhead(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The backend as deployed: each conversation counts CONVERSATION_OVERHEAD too."""
    made = Backend(request.param, max_conversation_bytes_per_owner=10 * CONVERSATION_OVERHEAD)
    yield made
    made.broker.close()


def test_tiny_conversations_cannot_hide_in_the_bound(overhead: Backend) -> None:
    """A conversation costs far more than its turns' bytes: each counts the overhead,
    so a bound of 10 overheads keeps 9 one-byte conversations, not thousands."""
    broker, owner = overhead.broker, conv()
    ids = [conv() for _ in range(30)]
    for cid in ids:
        add(broker, owner, cid, b"x")
    fit = 10 * CONVERSATION_OVERHEAD // (1 + CONVERSATION_OVERHEAD)
    assert fit == 9
    assert held(broker, owner, ids) == dict.fromkeys(ids[-fit:], 1)
    assert counted(overhead, owner) == {**dict.fromkeys(ids[-fit:], 1),
                                        "#": fit * (1 + CONVERSATION_OVERHEAD)}
    assert broker.forget_conversation(owner, ids[-1])  # gives back its overhead too
    assert counted(overhead, owner)["#"] == (fit - 1) * (1 + CONVERSATION_OVERHEAD)
