"""The pump, in process: a memory broker, scripted providers and a fake clock.

A provider here is a real object with the adapter's shape, answering each
request with the next script of steps: deltas to yield, an error to raise,
seconds to let pass on the fake clock, a ``Block`` (a read that waits until
the test releases it), or a function to call at that point. Time moves only
when the test moves it, so a stream of minutes takes milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
import gevent.event
import pytest

from sse_gateway.broker import BrokerOptions, BrokerUnavailable, StreamInfo, open_broker
from sse_gateway.broker.memory import MemoryBroker
from sse_gateway.events import Event
from sse_gateway.providers.base import (
    ChatRequest,
    Delta,
    Finished,
    Message,
    ProviderError,
    TextDelta,
    UpstreamUnavailable,
    Usage,
)
from sse_gateway.pump import Pump, PumpGroup
from sse_gateway.pump.state import Outcome, StreamState
from sse_gateway.upstream import Candidate, RetryPolicy
from tests.fake_clock import FakeClock

SID = "s1"
OPTIONS = BrokerOptions(ttl=60)


class Block:
    """A provider read that waits until the test releases it."""

    def __init__(self) -> None:
        self.reached = gevent.event.Event()
        self.released = gevent.event.Event()


Step = Delta | ProviderError | Block | float | Callable[[], object]


class Scripted:
    """A provider answering each request with its next script (the last one repeats)."""

    def __init__(self, name: str, world: World, scripts: list[Iterable[Step]]) -> None:
        self.name = name
        self.available = True
        self._world = world
        self._scripts = scripts
        self.requests = 0
        self.closed_while: list[str] = []  # the stream's status when each response closed

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        script = self._scripts[min(self.requests, len(self._scripts) - 1)]
        self.requests += 1
        return self._run(script)

    def _run(self, script: Iterable[Step]) -> Iterator[Delta]:
        try:
            for step in script:
                if isinstance(step, ProviderError):
                    raise step
                if isinstance(step, Block):
                    step.reached.set()
                    step.released.wait()
                elif isinstance(step, int | float):
                    self._world.clock.sleep(step)
                elif callable(step):
                    step()
                else:
                    yield step
        finally:
            self.closed_while.append(self._world.status())


class FlakyStore(MemoryBroker):
    """The memory broker, unreachable while ``down`` (writes and ticks fail)."""

    down = False

    def _check(self) -> None:
        if self.down:
            raise BrokerUnavailable("the store is down")

    def append(self, stream_id: str, event: Event) -> None:
        self._check()
        super().append(stream_id, event)

    def finish(self, stream_id: str, event: Event, status: str,
               usage: dict[str, Any] | None = None) -> None:
        self._check()
        super().finish(stream_id, event, status, usage)

    def producer_tick(self, stream_id: str, slot_owner: str | None = None
                      ) -> tuple[str | None, int]:
        self._check()
        return super().producer_tick(stream_id, slot_owner)


class World:
    """One stream's broker, providers and clock."""

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self.clock = FakeClock()
        self.broker = broker or open_broker("memory://", OPTIONS)
        self.exited: list[Pump] = []
        self.lease: str | None = None

    def status(self) -> str:
        info = self.broker.info(SID)
        return info.status if info else "gone"

    def provider(self, name: str, *scripts: Iterable[Step]) -> Scripted:
        return Scripted(name, self, list(scripts))

    def pump(self, *chain: tuple[str, Scripted], grace_s: float = 10.0, tick_s: float = 1.0,
             stream_timeout_s: float = 600.0, max_attempts: int = 3,
             ttft_timeout_s: float = 60.0, token_timeout_s: float = 60.0,
             group: PumpGroup | None = None,
             on_end: Callable[[StreamState, Outcome], None] | None = None,
             coalesce_s: float = 0.0, chunking: str = "none") -> Pump:
        """Start a stream over ``chain`` ((model, provider) pairs), with one reader."""
        self.broker.create(StreamInfo(SID, owner="o", model=chain[0][0], created=1.0))
        self.lease = self.broker.attach_reader(SID)
        candidates = [Candidate(model, provider, ChatRequest(model.partition("/")[2],
                                                             (Message("user", "x"),)))
                      for model, provider in chain]
        policy = RetryPolicy(max_attempts, 30.0, 0.0, 0.0, ttft_timeout_s, token_timeout_s)
        pump = Pump(broker=self.broker, candidates=candidates, policy=policy, stream_id=SID,
                    public_id="public", created=1.0, grace_s=grace_s, tick_s=tick_s,
                    stream_timeout_s=stream_timeout_s, caller="test",
                    on_exit=self.exited.append if group is None else group.discard, clock=self.clock,
                    keep_text=True, on_end=on_end, coalesce_s=coalesce_s, chunking=chunking)
        if group is not None:
            group.start(pump)
        else:
            pump.start()
        self.started = self.clock.now
        return pump

    def run(self, pump: Pump) -> list[tuple[str, Any]]:
        """Let time pass until the stream ends; its events as (name, payload)."""
        self.clock.run_until(lambda: pump.greenlet is not None and pump.greenlet.dead)
        return self.events()

    def events(self) -> list[tuple[str, Any]]:
        batch = self.broker.read(SID, -1, 0)
        assert [e.id for e in batch.events] == list(range(len(batch.events)))
        return [(e.name, e.payload()) for e in batch.events]

    def elapsed(self) -> float:
        return self.clock.now - self.started


def terminal(events: list[tuple[str, Any]]) -> tuple[str, Any]:
    return events[-1]


def down(provider: str) -> UpstreamUnavailable:
    return UpstreamUnavailable("down", provider=provider, status_code=503)


def test_a_stream_is_start_tokens_then_done_with_usage_and_metrics() -> None:
    world = World()
    openai = world.provider("openai", [0.5, TextDelta("Hel"), 0.25, TextDelta("lo"),
                                       Usage(3, 2), Finished("length", "length")])
    pump = world.pump(("openai/a", openai))
    assert world.run(pump) == [
        ("start", {"stream_id": "public", "model": "openai/a", "created": 1.0}),
        ("token", {"content": "Hel"}),
        ("token", {"content": "lo"}),
        ("done", {"finish_reason": "length", "provider_finish_reason": "length",
                  "model": "openai/a", "usage": {"input_tokens": 3, "output_tokens": 2},
                  "metrics": {"ttft_ms": 500.0, "duration_ms": 750.0,
                              "tokens_per_second": 8.0}}),
    ]
    info = world.broker.info(SID)
    assert info is not None
    assert (info.status, info.usage) == ("done", {"input_tokens": 3, "output_tokens": 2})
    assert pump.state.text == "Hello"
    assert openai.closed_while == ["running"]
    assert world.exited == [pump]


def test_an_error_before_output_is_retried_then_a_fallback_answers() -> None:
    world = World()
    openai = world.provider("openai", [down("openai")])
    anthropic = world.provider("anthropic", [TextDelta("hi"), Finished("stop")])
    pump = world.pump(("openai/a", openai), ("anthropic/b", anthropic), max_attempts=2)
    events = world.run(pump)
    assert [name for name, _ in events] == ["start", "token", "done"]
    assert events[0][1]["model"] == "openai/a"  # the start names the model asked for
    assert terminal(events)[1]["model"] == "anthropic/b"  # done, the one that answered
    assert (openai.requests, anthropic.requests) == (2, 1)
    assert pump.state.retries == 1


def test_an_error_after_output_is_not_retried() -> None:
    world = World()
    openai = world.provider("openai", [TextDelta("par"), down("openai")])
    anthropic = world.provider("anthropic", [TextDelta("hi")])
    events = world.run(world.pump(("openai/a", openai), ("anthropic/b", anthropic)))
    assert events[1:] == [
        ("token", {"content": "par"}),
        ("error", {"code": "upstream_unavailable", "message": "down", "retryable": True,
                   "provider": "openai"}),
    ]
    assert (openai.requests, anthropic.requests) == (1, 0)


def test_no_first_token_in_time_is_an_upstream_timeout() -> None:
    world = World()
    openai = world.provider("openai", [Block()])
    events = world.run(world.pump(("openai/a", openai), max_attempts=1, ttft_timeout_s=5.0))
    assert terminal(events) == ("error", {
        "code": "upstream_timeout", "message": "openai sent no first token within 5 s",
        "retryable": True, "provider": "openai"})
    assert world.elapsed() == 5.0
    assert openai.closed_while == ["running"]


def test_silence_after_a_token_is_an_upstream_timeout() -> None:
    world = World()
    openai = world.provider("openai", [TextDelta("a"), 2.0, TextDelta("b"), Block()])
    events = world.run(world.pump(("openai/a", openai), token_timeout_s=7.0))
    assert events[1:] == [
        ("token", {"content": "a"}),
        ("token", {"content": "b"}),
        ("error", {"code": "upstream_timeout", "message": "openai sent no token within 7 s",
                   "retryable": True, "provider": "openai"}),
    ]
    assert world.elapsed() == 9.0  # 7 s after the last token
    assert openai.closed_while == ["running"]


def test_a_stream_longer_than_the_stream_timeout_ends() -> None:
    def one_token_a_second() -> Iterator[Step]:
        while True:
            yield 1.0
            yield TextDelta("x")

    world = World()
    openai = world.provider("openai", one_token_a_second())
    events = world.run(world.pump(("openai/a", openai), stream_timeout_s=5.5))
    assert [name for name, _ in events] == ["start"] + ["token"] * 5 + ["error"]
    assert terminal(events)[1]["message"] == "the stream ran longer than 5.5 s"
    assert world.elapsed() == 5.5


def test_cancel_interrupts_the_provider_read_and_closes_it_before_the_end_is_stored() -> None:
    world = World()
    block = Block()
    openai = world.provider("openai", [TextDelta("a"), block, TextDelta("never")])
    pump = world.pump(("openai/a", openai))
    world.clock.settle()
    assert block.reached.is_set() and world.status() == "running"
    world.broker.cancel(SID, "client_cancelled")
    events = world.run(pump)
    assert terminal(events) == ("cancelled", {"reason": "client_cancelled"})
    assert openai.closed_while == ["running"]  # closed before readers learn the end
    assert world.elapsed() == 0.0  # interrupted at once, not at a deadline


def test_without_readers_the_stream_is_cancelled_after_the_resume_grace() -> None:
    world = World()
    openai = world.provider("openai", [TextDelta("a"), Block()])
    pump = world.pump(("openai/a", openai), grace_s=10.0)
    world.clock.advance(3.0)
    assert world.lease is not None
    world.broker.release_reader(SID, world.lease)
    events = world.run(pump)
    assert terminal(events) == ("cancelled", {"reason": "client_disconnected"})
    assert world.elapsed() == 13.0
    assert openai.closed_while == ["running"]


def test_a_reader_back_within_the_grace_keeps_the_stream_going() -> None:
    world = World()
    block = Block()
    openai = world.provider("openai", [block, TextDelta("a"),
                                       Finished("stop")])
    pump = world.pump(("openai/a", openai), grace_s=10.0)
    assert world.lease is not None
    world.broker.release_reader(SID, world.lease)
    world.clock.advance(9.0)
    world.broker.attach_reader(SID)
    world.clock.advance(30.0)
    assert world.status() == "running"
    block.released.set()
    events = world.run(pump)
    assert terminal(events)[0] == "done"


def test_drain_ends_running_streams_with_shutdown() -> None:
    world = World()
    group = PumpGroup()
    openai = world.provider("openai", [TextDelta("a"), Block()])
    pump = world.pump(("openai/a", openai), group=group)
    world.clock.settle()
    assert len(group) == 1
    group.drain(0.0)
    assert group.draining
    world.clock.run_until(lambda: pump.greenlet is not None and pump.greenlet.dead)
    assert terminal(world.events()) == ("cancelled", {"reason": "shutdown"})
    assert len(group) == 0
    assert openai.closed_while == ["running"]


def test_a_store_outage_during_appends_is_ridden_through() -> None:
    store = FlakyStore(OPTIONS)
    world = World(store)

    def store_down() -> None:
        store.down = True

    openai = world.provider("openai", [TextDelta("a"), store_down, TextDelta("b"),
                                       TextDelta("c"), Finished("stop")])
    pump = world.pump(("openai/a", openai), tick_s=1.0)
    world.clock.advance(2.0)  # within the 4 s a stream rides through (4 ticks)
    assert world.status() == "running"
    store.down = False
    events = world.run(pump)
    assert [(name, p.get("content")) for name, p in events] == [
        ("start", None), ("token", "a"), ("token", "b"), ("token", "c"), ("done", None)]


def test_a_store_outage_too_long_ends_the_stream_with_internal_error() -> None:
    store = FlakyStore(OPTIONS)
    world = World(store)

    def store_down() -> None:
        store.down = True

    openai = world.provider("openai", [TextDelta("a"), store_down, TextDelta("b")])
    pump = world.pump(("openai/a", openai), tick_s=1.0)
    world.clock.run_until(lambda: openai.closed_while != [])  # the producer gave up
    assert world.elapsed() >= 4.0
    assert world.status() == "running"  # the end could not be recorded yet
    store.down = False  # the store is back: the end is recorded on the next retry
    events = world.run(pump)
    name, error = terminal(events)
    assert events[1] == ("token", {"content": "a"})
    assert (name, error["code"], error["retryable"]) == ("error", "internal_error", True)
    assert error["message"].startswith("the stream store was unreachable for 4.")


@pytest.mark.parametrize("answer", [[], [Finished("stop")]])
def test_an_empty_answer_is_done_without_metrics_of_output(answer: list[Step]) -> None:
    world = World()
    events = world.run(world.pump(("openai/a", world.provider("openai", answer))))
    assert terminal(events) == ("done", {
        "finish_reason": "stop", "provider_finish_reason": None, "model": "openai/a",
        "usage": {"input_tokens": None, "output_tokens": None},
        "metrics": {"ttft_ms": None, "duration_ms": 0.0, "tokens_per_second": None}})
