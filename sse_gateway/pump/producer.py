"""The producer: a stream's hot loop, provider deltas straight into the broker.

It iterates the candidate chain and appends each output as a numbered,
once-encoded event itself, so a token costs one greenlet wake-up (the
provider's socket) and no hand-off. It tells the supervisor only how it ended
(``ProducerDone``, ``ProducerFailed``). The supervisor stops it early by
interrupting it only while it is inside the provider read (never inside an
append, so no event is half written): the interruption lands in the socket
read and the adapter's ``finally`` closes the provider's HTTP response.

With batching (``StreamState.batcher``) an output may be held instead of
stored; held output is sent by the producer's next output after its window,
else, a window later, by the supervisor (``held`` tells it; ``send_due``). A
lock keeps the two from numbering events at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.lock

from sse_gateway import metrics
from sse_gateway.broker import Broker, BrokerUnavailable, StreamEnded
from sse_gateway.clock import Clock
from sse_gateway.events import Event
from sse_gateway.providers.base import (
    Finished,
    Output,
    ProviderData,
    ProviderError,
    Unrelayed,
    Usage,
)
from sse_gateway.pump.outage import RETRY_FIRST_S, Outage
from sse_gateway.pump.state import StreamState
from sse_gateway.upstream import Answering, Candidate, Retrying, RetryPolicy, stream_deltas

log = logging.getLogger("sse_gateway.pump")

_END = object()  # the provider's iterator is exhausted
_FAIR_SHARE_S = 0.005  # the longest a busy greenlet runs before letting others in
_WAITED_S = 0.001  # a pause this long between two items means the producer blocked


@dataclass(frozen=True, slots=True)
class ProducerDone:
    """The provider's stream ended normally."""


@dataclass(frozen=True, slots=True)
class ProducerFailed:
    """The producer stopped on ``error`` (a provider's, the store's, or a bug: None)."""

    error: ProviderError | BrokerUnavailable | StreamEnded | None


class _Interrupted(BaseException):
    """Thrown into the producer's provider read when the supervisor ends the stream."""


class Producer:
    """Run the candidate chain into the broker until it ends or is stopped."""

    def __init__(self, *, broker: Broker, stream_id: str, candidates: Sequence[Candidate],
                 policy: RetryPolicy, state: StreamState, outage: Outage, clock: Clock,
                 tell: Callable[[ProducerDone | ProducerFailed], None],
                 held: Callable[[float], None] = lambda due: None) -> None:
        self._broker = broker
        self._stream_id = stream_id
        self._candidates = candidates
        self._policy = policy
        self._state = state
        self._outage = outage
        self._clock = clock
        self._tell = tell
        self._held = held  # batching: output is held until this time
        self._numbering = gevent.lock.Semaphore()  # batching: one of us appends at a time
        self._ending = False  # set by stop(): the producer must stop
        self._reading = False  # inside the provider read, where it may be interrupted
        self._greenlet: gevent.Greenlet[Any, None] | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Make the producer stop and wait until it has (and closed the provider)."""
        producer = self._greenlet
        if producer is None:
            return
        self._ending = True
        if not producer.dead:
            gevent.get_hub().loop.run_callback(self._interrupt_reading)
            producer.join(timeout=5)  # real seconds: only a wedged broker takes this long
            if not producer.dead:  # stuck in an append: the broker is wedged
                producer.kill(block=True, timeout=5)

    def _interrupt_reading(self) -> None:
        """Runs in the hub, where the producer is parked: throw only into a provider read."""
        producer = self._greenlet
        if self._reading and producer is not None and not producer.dead:
            producer.throw(_Interrupted)

    def _run(self) -> None:
        clock = self._clock
        items = stream_deltas(self._candidates, self._policy, clock=clock.monotonic,
                              sleep=clock.sleep, timeout=clock.timeout)
        state = self._state
        monotonic = clock.monotonic
        batching = state.batcher is not None
        try:
            busy_since = last = monotonic()
            while not self._ending:
                self._reading = True
                try:
                    item = next(items, _END)
                finally:
                    self._reading = False
                if self._ending:
                    return
                now = monotonic()
                if now - last > _WAITED_S:
                    busy_since = now  # this item was waited for: others ran meanwhile
                last = now
                if isinstance(item, Output):
                    if state.first_output_at is None:
                        metrics.TIME_TO_FIRST_TOKEN.labels(state.provider).observe(
                            now - state.started)
                    if batching:
                        self._batched(item, now)
                    else:
                        self._append(state.output(item, now))
                elif item is _END:
                    self._tell(ProducerDone())
                    return
                else:
                    self._note(item)
                if now - busy_since > _FAIR_SHARE_S:
                    # A socket that always has data never makes gevent switch:
                    # without this one fast provider would starve the worker.
                    gevent.sleep(0)
                    busy_since = monotonic()
        except _Interrupted:
            pass
        except (ProviderError, BrokerUnavailable, StreamEnded) as exc:
            self._tell(ProducerFailed(exc))
        except Exception:
            log.exception("stream %s: provider adapter failed", self._stream_id)
            self._tell(ProducerFailed(None))
        finally:
            items.close()  # closes the provider's HTTP response, whatever happened

    def _batched(self, item: Output, now: float) -> None:
        state = self._state
        with self._numbering:  # the supervisor may be sending held output
            for event in state.batched(item, now):
                self._append(event)
        due = state.flush_due
        if due is not None:
            self._held(due)

    def send_due(self) -> None:
        """Store the held output that is due (the supervisor calls this at its due time)."""
        with self._numbering:
            for event in self._state.due_events(self._clock.monotonic()):
                self._append(event)

    def _note(self, item: object) -> None:
        """What the producer keeps of the items that are not output."""
        state = self._state
        if isinstance(item, Usage):
            state.add_usage(item)
        elif isinstance(item, Finished):
            state.finished(item)
        elif isinstance(item, Unrelayed):
            state.unrelayed[item.what] += 1
        elif isinstance(item, ProviderData):
            state.add_provider_data(item)
        elif isinstance(item, Answering):
            provider = self._provider_of(item.model)
            if item.model != state.model:
                metrics.FALLBACKS.labels(provider).inc()
            state.answered(item.model, provider)
        elif isinstance(item, Retrying):
            state.retries += 1
            metrics.RETRIES.labels(item.error.provider).inc()
            metrics.PROVIDER_ERRORS.labels(item.error.provider, item.error.code).inc()
            log.info("stream %s: %s failed before its first token (%s); retrying in "
                     "%.2f s", self._stream_id, item.model, item.error.code, item.delay)

    def _provider_of(self, model: str) -> str:
        return next(c.provider.name for c in self._candidates if c.model == model)

    def _append(self, event: Event) -> None:
        try:
            self._broker.append(self._stream_id, event)
        except BrokerUnavailable:
            self._append_again(event)  # the slow path: the hot one costs nothing more
        self._state.next_id += 1  # stored: the next event takes the next id

    def _append_again(self, event: Event) -> None:
        """Ride through a store outage: send the same append again until it lands.

        Appends are idempotent, so one that timed out here but was applied by
        the store after all is simply confirmed. Raises StoreUnreachable when
        the outage lasts too long, _Interrupted when the stream is being ended.
        """
        pause = RETRY_FIRST_S
        # The failed call began when its output came (set just before the append).
        failed_at = self._state.last_output_at or self._clock.monotonic()
        while True:
            self._outage.failed(failed_at)
            self._clock.sleep(pause)
            pause = min(pause * 2, self._outage.retry_max_s)
            if self._ending:
                raise _Interrupted
            failed_at = self._clock.monotonic()
            try:
                self._broker.append(self._stream_id, event)
            except BrokerUnavailable:
                continue
            self._outage.answered()
            return
