"""The broker's conversations contract: every backend must pass these.

The memory backend expires by its clock (a fake one here); Redis by its own
(a short real TTL, awaited by looking again).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator

import pytest

from sse_gateway.broker import Broker, BrokerOptions, ConversationFull, StreamInfo, open_broker
from sse_gateway.broker.memory import MemoryBroker
from tests.fake_clock import FakeClock
from tests.test_broker import BACKENDS

TTL_S = 1.0


class Backend:
    """A broker, and a way to let time pass for it."""

    def __init__(self, url: str) -> None:
        options = BrokerOptions(ttl=5, conversation_ttl=TTL_S)
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
