"""Completion hooks in process: once per stream, with what it produced, bounded and counted.

Streams run through ``Streams`` with the memory broker and a scripted provider,
as in ``tests/test_streams.py``; the pump's own ``on_end`` runs on a fake clock,
as in ``tests/test_pump.py``. Hooks run in greenlets: a test waits for them by
polling with a deadline (``wait_for``), never by sleeping a guessed time.
The Redis tests (a producer that died, declared lost by a sweep) carry the
``redis`` marker and use a database of their own (``SWEEP_REDIS_URL``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gevent
import gevent.event
import pytest
from prometheus_client import REGISTRY

from sse_gateway import errors, events
from sse_gateway.broker import StreamInfo
from sse_gateway.config import StreamsConfig
from sse_gateway.events import Event, stream_lost
from sse_gateway.providers.base import Finished, TextDelta, UpstreamError
from sse_gateway.pump import Pump
from sse_gateway.pump.state import Outcome, StreamState
from sse_gateway.reader import Reader
from sse_gateway.results import Message, StreamResult
from sse_gateway.streams import Detached, Streams
from sse_gateway.streams.admission import scoped
from sse_gateway.validation import StreamRequest, parse_stream_request
from tests import test_pump
from tests.redis_server import SWEEP_REDIS_URL
from tests.test_pump import SID, Block, FlakyStore, World
from tests.test_streams import (
    HANG,
    HELLO,
    HOLDER,
    OWNER,
    Scripted,
    names,
    read_all,
    read_until,
    service,
)


class Calls(list[StreamResult]):
    """A hook that records each result it is called with."""

    def __call__(self, result: StreamResult) -> None:
        self.append(result)


def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Let the greenlets run until ``predicate()`` holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "still waiting at the deadline"
        gevent.sleep(0.005)


def settled(streams: Streams) -> None:
    """Wait until no stream runs here, then close: hooks still running are joined."""
    wait_for(lambda: streams.active == 0)
    streams.close()


def body(**fields: Any) -> StreamRequest:
    return parse_stream_request({"model": "scripted/a", "prompt": "hi", **fields},
                                max_tokens_limit=100, max_messages=10, max_resume_grace_s=60,
                                max_fallbacks=0)


def begin(streams: Streams, stream_id: str | None = None, **fields: Any) -> Reader:
    reader = streams.start(body(**fields), owner=OWNER, holder=HOLDER, stream_id=stream_id)
    assert isinstance(reader, Reader)
    return reader


def hook_calls(outcome: str) -> float:
    """The prometheus sample ``sse_end_hooks_total{outcome=...}`` (0 before the first)."""
    return REGISTRY.get_sample_value("sse_end_hooks_total", {"outcome": outcome}) or 0.0


def pump_of(streams: Streams, stream_id: str) -> Pump:
    """The pump producing ``OWNER``'s stream ``stream_id`` (the group is private)."""
    (pump,) = [p for p in streams._pumps._pumps if p.public_id == stream_id]
    return pump


# --- what a hook receives, for each way a stream ends ----------------------------------------

HEL = [TextDelta("Hel"), HANG]


def to_the_end(streams: Streams, reader: Reader) -> list[Event]:
    return read_all(reader)


def delete(streams: Streams, reader: Reader) -> list[Event]:
    batches = reader.batches()
    seen = read_until(batches, "token")
    streams.cancel(reader.stream_id, OWNER)
    return seen + read_all(batches)


def disconnect(streams: Streams, reader: Reader) -> list[Event]:
    seen = read_until(reader.batches(), "token")
    reader.close()  # the client went away; the resume grace is 0
    wait_for(lambda: streams.active == 0)
    return seen + read_all(streams.follow(reader.stream_id, OWNER, seen[-1].id, HOLDER))


def shut_down(streams: Streams, reader: Reader) -> list[Event]:
    batches = reader.batches()
    seen = read_until(batches, "token")
    streams.drain(0)
    return seen + read_all(batches)


ENDINGS = {
    # name: (script, how it ends, status, reason, text, usage)
    "done": (HELLO, to_the_end, "done", "stop", "Hello world",
             {"input_tokens": 3, "output_tokens": 2}),
    "error": ([TextDelta("Hel"), UpstreamError("cut off", provider="scripted")],
              to_the_end, "error", "upstream_error", "Hel", None),
    "deleted": (HEL, delete, "cancelled", "deleted", "Hel", None),
    "client_disconnected": (HEL, disconnect, "cancelled", "client_disconnected", "Hel", None),
    "shutdown": (HEL, shut_down, "cancelled", "shutdown", "Hel", None),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_a_hook_is_called_once_with_the_streams_result(ending: str) -> None:
    script, end, status, reason, text, usage = ENDINGS[ending]
    streams, _ = service(script)
    calls = Calls()
    streams.on_end(calls)
    sid = secrets.token_urlsafe(12)
    before = time.time()
    reader = begin(streams, sid, metadata={"conversation": "42", "user": "ann"},
                   resume_grace_s=0)
    seen = end(streams, reader)
    settled(streams)
    assert len(calls) == 1
    (result,) = calls
    start, terminal = seen[0].payload(), seen[-1]
    assert names(seen)[0] == "start" and terminal.name == status
    assert (result.stream_id, result.owner, result.status, result.reason, result.text,
            result.usage, result.metadata, result.model) == (
        sid, OWNER, status, reason, text, usage, {"conversation": "42", "user": "ann"},
        "scripted/a")
    assert result.message == Message(text)
    assert result.terminal == terminal.payload()
    assert result.metrics == (terminal.payload()["metrics"] if status == "done" else None)
    assert result.created == start["created"]
    # Wall-clock seconds: created rounded to the millisecond (as the start event
    # says it), ended exact; a stream this short may end within created's rounding.
    assert before - 0.0005 <= result.created <= result.ended + 0.0005
    assert before <= result.ended <= time.time()


def test_a_detached_stream_nobody_follows_calls_its_hooks() -> None:
    streams, _ = service(HEL)
    calls = Calls()
    streams.on_end(calls)
    started = streams.start(body(detach=True, resume_grace_s=0, metadata={"job": "7"}),
                            owner=OWNER, holder=HOLDER, stream_id="d" * 16)
    assert started == Detached("d" * 16, "scripted/a")
    settled(streams)
    assert [(r.stream_id, r.status, r.reason, r.metadata) for r in calls] == [
        ("d" * 16, "cancelled", "client_disconnected", {"job": "7"})]


def test_the_hook_gets_the_whole_text_even_when_the_log_keeps_only_its_end() -> None:
    streams, _ = service([TextDelta(f"{i} ") for i in range(30)], max_events_per_stream=5)
    calls = Calls()
    streams.on_end(calls)
    read_all(begin(streams))
    settled(streams)
    assert [r.text for r in calls] == ["".join(f"{i} " for i in range(30))]


def test_several_hooks_are_each_called_with_the_same_result_in_order() -> None:
    streams, _ = service()
    order: list[str] = []
    calls = [Calls() for _ in range(3)]
    for i, hook in enumerate(calls):
        def named(result: StreamResult, hook: Calls = hook, i: int = i) -> None:
            order.append(f"hook{i}")
            hook(result)
        streams.on_end(named)
    read_all(begin(streams))
    settled(streams)
    assert [len(c) for c in calls] == [1, 1, 1]
    assert calls[0][0] == calls[1][0] == calls[2][0]
    assert calls[0][0].metadata is not calls[1][0].metadata  # each hook its own copy
    assert sorted(order) == ["hook0", "hook1", "hook2"]


def test_hooks_registered_after_a_stream_started() -> None:
    """Documented (``Streams.on_end``): a stream started while no hook was
    registered calls none, ever (it did not keep its text); a stream started
    with hooks calls every hook registered by the time it ends."""
    streams, _ = service(HEL)
    early = begin(streams, "e" * 16)
    first = Calls()
    streams.on_end(first)
    later = begin(streams, "l" * 16)
    second = Calls()
    streams.on_end(second)  # while both streams run
    assert not pump_of(streams, "e" * 16).state.keep_text
    assert pump_of(streams, "l" * 16).state.keep_text
    streams.drain(0)
    for reader in (early, later):
        assert names(read_all(reader))[-1] == "cancelled"
    settled(streams)
    assert [(r.stream_id, r.text) for r in first] == [("l" * 16, "Hel")]
    assert [(r.stream_id, r.text) for r in second] == [("l" * 16, "Hel")]


def test_the_text_is_kept_only_for_hooks_or_when_asked() -> None:
    streams, _ = service(HEL)
    plain = begin(streams, "p" * 16)
    asked = streams.start(body(), owner=OWNER, holder=HOLDER, stream_id="k" * 16,
                          keep_text=True)
    read_until(plain.batches(), "token")
    assert isinstance(asked, Reader)
    read_until(asked.batches(), "token")
    assert not pump_of(streams, "p" * 16).state.keep_text
    assert pump_of(streams, "p" * 16).state.text == ""
    assert pump_of(streams, "k" * 16).state.text == "Hel"
    streams.on_end(Calls())
    hooked = begin(streams, "h" * 16)
    read_until(hooked.batches(), "token")
    assert pump_of(streams, "h" * 16).state.text == "Hel"
    streams.drain(0)
    for reader in (plain, asked, hooked):
        reader.close()
    settled(streams)


# --- hooks that fail ---------------------------------------------------------------------------

def test_a_raising_hook_is_logged_and_counted_and_the_others_still_run(
        caplog: pytest.LogCaptureFixture) -> None:
    streams, _ = service()
    before, after = Calls(), Calls()
    streams.on_end(before)

    def broken(result: StreamResult) -> None:
        raise RuntimeError("the database is down")

    streams.on_end(broken)
    streams.on_end(after)
    errors_before, ok_before = hook_calls("error"), hook_calls("ok")
    with caplog.at_level(logging.ERROR, logger="sse_gateway.hooks"):
        events_seen = read_all(begin(streams, "r" * 16))
        settled(streams)
    assert names(events_seen)[-1] == "done"  # the stream is untouched
    assert [len(before), len(after)] == [1, 1]
    assert (hook_calls("error") - errors_before, hook_calls("ok") - ok_before) == (1, 2)
    (record,) = [r for r in caplog.records if r.name == "sse_gateway.hooks"]
    assert record.getMessage() == (
        "completion hook test_a_raising_hook_is_logged_and_counted_and_the_others_still_run."
        "<locals>.broken failed for stream " + "r" * 16)
    assert record.exc_info is not None and "the database is down" in str(record.exc_info[1])


def test_a_hanging_hook_is_stopped_at_its_timeout_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    streams, _ = service(end_hook_timeout_s=0.2)
    calls = Calls()
    began: list[float] = []
    stopped: list[float] = []

    def hangs(result: StreamResult) -> None:
        began.append(time.monotonic())
        try:
            gevent.event.Event().wait()
        finally:
            stopped.append(time.monotonic())

    streams.on_end(hangs)
    streams.on_end(calls)
    timeouts = hook_calls("timeout")
    with caplog.at_level(logging.ERROR, logger="sse_gateway.hooks"):
        assert names(read_all(begin(streams, "t" * 16)))[-1] == "done"
        wait_for(lambda: stopped)
    assert len(calls) == 1  # the other hook ran meanwhile
    assert 0.2 <= stopped[0] - began[0] < 2.0
    assert hook_calls("timeout") - timeouts == 1
    assert [r.getMessage() for r in caplog.records if r.name == "sse_gateway.hooks"] == [
        "completion hook test_a_hanging_hook_is_stopped_at_its_timeout_and_counted.<locals>."
        "hangs: stream " + "t" * 16 + ": still running after 0.2 s; stopped"]
    # The worker goes on: another stream runs and calls its hooks.
    assert names(read_all(begin(streams)))[-1] == "done"
    wait_for(lambda: len(calls) == 2)
    settled(streams)


def test_close_waits_for_running_hooks_up_to_the_timeout() -> None:
    streams, _ = service(end_hook_timeout_s=5)
    began, finished = gevent.event.Event(), []

    def slow(result: StreamResult) -> None:
        began.set()
        gevent.sleep(0.2)  # a slow save: close must wait for it
        finished.append(result.stream_id)

    streams.on_end(slow)
    read_all(begin(streams, "w" * 16))
    wait_for(began.is_set)
    streams.close()
    assert finished == ["w" * 16]


def test_close_gives_a_hanging_hook_no_more_than_the_timeout() -> None:
    streams, _ = service(end_hook_timeout_s=0.3)
    began = gevent.event.Event()

    def hangs(result: StreamResult) -> None:
        began.set()
        gevent.event.Event().wait()

    streams.on_end(hangs)
    read_all(begin(streams))
    wait_for(began.is_set)
    timeouts = hook_calls("timeout")
    closing = time.monotonic()
    streams.close()
    assert time.monotonic() - closing < 0.3 + 2.0
    assert hook_calls("timeout") - timeouts == 1  # stopped, not left behind


def test_the_hook_delay_and_durations_are_observed() -> None:
    streams, _ = service()
    streams.on_end(Calls())
    delays = REGISTRY.get_sample_value("sse_end_hook_delay_seconds_count") or 0.0
    durations = REGISTRY.get_sample_value("sse_end_hook_duration_seconds_count",
                                          {"outcome": "ok"}) or 0.0
    read_all(begin(streams))
    settled(streams)
    assert REGISTRY.get_sample_value("sse_end_hook_delay_seconds_count") == delays + 1
    assert REGISTRY.get_sample_value("sse_end_hook_duration_seconds_count",
                                     {"outcome": "ok"}) == durations + 1


# --- the pump's on_end, on a fake clock --------------------------------------------------------

def test_the_pump_calls_on_end_once_after_storing_its_terminal_event() -> None:
    world = World()
    seen: list[tuple[str, str, str]] = []

    def on_end(state: StreamState, outcome: Outcome) -> None:
        seen.append((world.status(), outcome.status, state.text))

    openai = world.provider("openai", [0.5, TextDelta("Hel"), 0.25, TextDelta("lo"),
                                       Finished("stop")])
    pump = world.pump(("openai/a", openai), on_end=on_end)
    events_seen = world.run(pump)
    assert events_seen[-1][0] == "done"
    assert seen == [("done", "done", "Hello")]  # stored before on_end, and once


@pytest.mark.parametrize("more", [[TextDelta("b")], []], ids=["appending", "finishing"])
def test_the_pump_does_not_call_on_end_for_a_stream_ended_elsewhere(more: list[Any]) -> None:
    # Another process declared the stream lost while this producer could not
    # reach the store: that process calls the hooks, not this one.
    world = World()
    block = Block()
    seen: list[str] = []
    openai = world.provider("openai", [TextDelta("a"), block, *more])
    pump = world.pump(("openai/a", openai), on_end=lambda state, outcome: seen.append("x"))
    world.clock.run_until(block.reached.is_set)
    world.broker.finish(SID, stream_lost(2, "openai/a"), "error")
    block.released.set()
    world.run(pump)
    assert seen == [] and world.exited == [pump]
    assert world.events()[-1][1]["code"] == "stream_lost"


def test_the_pump_does_not_call_on_end_when_its_end_could_not_be_stored() -> None:
    world = World(FlakyStore(test_pump.OPTIONS))
    block = Block()
    seen: list[str] = []
    openai = world.provider("openai", [TextDelta("a"), block, Finished("stop")])
    pump = world.pump(("openai/a", openai), on_end=lambda state, outcome: seen.append("x"))
    world.clock.run_until(block.reached.is_set)
    world.broker.down = True  # type: ignore[attr-defined]
    block.released.set()
    world.run(pump)  # retries recording its end for a minute (fake time), then gives up
    world.broker.down = False  # type: ignore[attr-defined]
    assert seen == [] and world.exited == [pump]
    assert [name for name, _ in world.events()] == ["start", "token"]


# --- the message so far ------------------------------------------------------------------------

def test_the_message_of_a_running_and_of_an_ended_stream() -> None:
    streams, _ = service([TextDelta("Hel"), TextDelta("lo"), HANG])
    reader = begin(streams, "m" * 16)
    batches = reader.batches()
    seen: list[Event] = []
    with gevent.Timeout(5):
        while names(seen).count("token") < 2:
            seen += next(batches).events
    assert streams.message("m" * 16, OWNER) == Message("Hello")
    assert streams.message("m" * 16, OWNER).public() == {
        "role": "assistant", "content": "Hello", "tool_calls": None, "reasoning": None,
        "refusal": None, "provider_data": None}
    streams.cancel("m" * 16, OWNER)
    assert names(read_all(batches)) == ["cancelled"]
    assert streams.message("m" * 16, OWNER) == Message("Hello")
    with pytest.raises(errors.NotFound):
        streams.message("m" * 16, "key_b")
    settled(streams)


def test_a_stream_not_started_yet_has_an_empty_message() -> None:
    streams, _ = service([HANG])
    reader = begin(streams, "n" * 16)
    assert streams.message("n" * 16, OWNER) == Message("")
    streams.drain(0)
    reader.close()
    settled(streams)


@pytest.mark.parametrize("script", [[TextDelta(f"{i} ") for i in range(20)],
                                    [*(TextDelta(f"{i} ") for i in range(20)), HANG]],
                         ids=["ended", "running"])
def test_the_message_is_gone_once_the_log_lost_its_first_events(script: Sequence[Any]) -> None:
    streams, _ = service(script, max_events_per_stream=5)
    reader = begin(streams, "g" * 16)  # not read: it would fall behind the log
    wait_for(lambda: streams.info("g" * 16, OWNER).last_event_id >= 20)
    with pytest.raises(errors.PositionGone) as gone:
        streams.message("g" * 16, OWNER)
    assert (gone.value.status, gone.value.message) == (
        410, "the first events of this stream are no longer kept: its message cannot be "
             "assembled")
    streams.drain(0)
    reader.close()
    settled(streams)


# --- Redis: a producer that died, declared lost by a sweep, calls the hooks once --------------

def dead_stream(streams: Streams, tokens: Sequence[str], **info: Any) -> tuple[str, float]:
    """A stream created and written as a producer would, which then never ticks
    again (the process died): its public id and created time."""
    sid = secrets.token_urlsafe(12)
    key = scoped(OWNER, sid)
    created = round(time.time(), 3)
    broker = streams.broker
    assert broker.create(StreamInfo(key, owner=OWNER, model="scripted/a", created=created,
                                    **info))
    broker.append(key, events.start(0, sid, "scripted/a", created))
    for i, text in enumerate(tokens, start=1):
        broker.append(key, events.token(i, text))
    return sid, created


@pytest.fixture
def redis_pair() -> Iterator[tuple[Streams, Streams]]:
    """Two processes' services on one Redis, each sweeping every 0.2 s."""
    config = StreamsConfig(redis_url=SWEEP_REDIS_URL, models=("scripted/a",),
                           producer_timeout_s=0.4, heartbeat_s=0.05, max_events_per_stream=5)
    pair = (Streams(config, providers={"scripted": Scripted(HELLO)}),
            Streams(config, providers={"scripted": Scripted(HELLO)}))
    yield pair
    for streams in pair:
        streams.close()


@pytest.mark.redis
def test_a_lost_streams_hooks_run_once_in_the_process_that_declared_it(
        redis_pair: tuple[Streams, Streams]) -> None:
    a, b = redis_pair
    calls = {a: Calls(), b: Calls()}
    for streams in redis_pair:
        streams.on_end(calls[streams])  # and starts its sweeper
    sid, created = dead_stream(a, ["Hel", "lo"], metadata={"conversation": "42"})
    wait_for(lambda: calls[a] or calls[b], timeout=10)
    for streams in redis_pair:  # one more sweep each: nothing is declared twice
        streams.broker.sweep()
        streams.hooks.join(5)
    results = calls[a] + calls[b]
    assert len(results) == 1
    (result,) = results
    assert (result.stream_id, result.owner, result.status, result.reason, result.text,
            result.usage, result.metrics, result.metadata, result.model, result.created) == (
        sid, OWNER, "error", "stream_lost", "Hello", None, None, {"conversation": "42"},
        "scripted/a", created)
    assert result.terminal == stream_lost(3, "scripted/a").payload()
    assert created <= result.ended <= time.time() + 0.001


@pytest.mark.redis
def test_a_lost_stream_whose_log_lost_its_start_still_calls_its_hooks(
        redis_pair: tuple[Streams, Streams]) -> None:
    a, _ = redis_pair
    calls = Calls()
    a.on_end(calls)
    errors_before = hook_calls("error")
    sid, _ = dead_stream(a, [f"{i} " for i in range(10)])  # the log keeps the last 5
    wait_for(lambda: calls, timeout=10)
    a.hooks.join(5)
    (result,) = calls
    assert (result.stream_id, result.status, result.reason, result.text) == (
        sid, "error", "stream_lost", "")
    assert result.terminal["code"] == "stream_lost"
    assert hook_calls("error") == errors_before
