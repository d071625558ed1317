"""Run one provider stream in a greenlet and append its events to the broker.

Two greenlets per stream. The *producer* is the hot path: it iterates the
provider adapter and appends each text delta to the broker as a numbered,
once-encoded ``token`` event itself, so a token costs one greenlet wake-up
(the provider's socket) and no hand-off. The *pump* does everything else: it
sleeps until a control message (cancel, readers changed, shutdown, the
producer's end) or one of its deadlines (the producer tick, resume grace,
silence between tokens, the stream's length), and ends the stream with exactly
one terminal event. To end a stream early it interrupts the producer only
while it is inside the provider read (never inside an append, so no event is
half written): the interruption lands in the socket read and the adapter's
``finally`` closes the provider's HTTP response. The producer is dead before
the terminal event is appended, so the provider connection is closed before
readers learn the outcome. A stream-store outage is ridden through: writes and
ticks are retried (the broker's writes are idempotent) until the store has
failed for a producer timeout; then the stream ends naming the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.queue

from sse_gateway import events, metrics
from sse_gateway.broker import (
    CANCEL,
    CANCELLED,
    DONE,
    ERROR,
    READERS,
    Broker,
    BrokerUnavailable,
    StreamEnded,
)
from sse_gateway.events import Event
from sse_gateway.providers.base import Finished, ProviderError, TextDelta, Usage
from sse_gateway.upstream import Answering, Candidate, Retrying, RetryPolicy, stream_deltas

log = logging.getLogger(__name__)

_END = object()  # the provider's iterator is exhausted
_FAIR_SHARE_S = 0.005  # the longest a busy greenlet runs before letting others in
_WAITED_S = 0.001  # a pause this long between two items means the producer blocked
_STOP = "stop"  # a local request to end the stream (shutdown)
# Recording a stream's end is retried this long while the store is unreachable
# (then readers end it as stream_lost). Retries come at least every tick / 2, so
# the end lands before readers can confirm that the producer is silent.
_FINISH_RETRY_S = 60.0
_STORE_RETRY_FIRST_S = 0.05  # the first pause before asking an unreachable store again


class StoreUnreachable(BrokerUnavailable):
    """The stream store stayed unreachable longer than a stream rides through."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the stream store was unreachable for {seconds:.1f} s")
        self.seconds = seconds


class _Interrupted(BaseException):
    """Thrown into the producer's provider read when the pump ends the stream."""


@dataclass(frozen=True)
class Outcome:
    """How a stream ended: the terminal event and the final status."""

    status: str
    event: str
    data: dict[str, Any]


class Pump:
    """Produce one stream: provider deltas in, numbered events out."""

    def __init__(self, *, broker: Broker, candidates: Sequence[Candidate], policy: RetryPolicy,
                 stream_id: str, created: float, grace_s: float, tick_s: float,
                 stream_timeout_s: float, slot_owner: str | None = None, caller: str = "",
                 on_exit: Callable[[Pump], None] = lambda pump: None,
                 public_id: str | None = None) -> None:
        self.stream_id = stream_id  # the broker's key
        self.public_id = public_id or stream_id  # the id its client knows
        self._broker = broker
        self._candidates = candidates
        self._policy = policy
        self._model = candidates[0].model  # until another one answers
        self._provider_name = candidates[0].provider.name
        self._created = created
        self._grace_s = grace_s
        self._tick_s = tick_s
        self._stream_timeout_s = stream_timeout_s
        self._slot_owner = slot_owner
        self._caller = caller
        self._on_exit = on_exit
        self._stop_noticed: float | None = None  # when a cancel/disconnect/shutdown was seen
        self._inbox: gevent.queue.Queue[Any] = gevent.queue.Queue()  # control, not tokens
        self._next_id = 0
        self._started = 0.0
        self._first_token_at: float | None = None
        self._last_token_at: float | None = None
        self._text_deltas = 0
        self._counted = 0  # text deltas already added to the tokens metric
        self._retries = 0
        self._usage = Usage()
        self._finish_reason = "stop"
        self._ending = False  # set by the pump: the producer must stop
        self._reading = False  # the producer is inside the provider read
        self._producer: gevent.Greenlet[Any, None] | None = None
        self.greenlet: gevent.Greenlet[Any, None] | None = None
        # Store trouble: a call failing with BrokerUnavailable is retried for
        # up to a producer timeout (4 ticks) after the first failure; then the
        # stream ends, naming the store. Readers elsewhere cannot declare the
        # stream lost meanwhile: they cannot reach the store either.
        self._store_wait_s = 4 * tick_s
        self._store_retry_max_s = tick_s / 2
        self._unreachable_since: float | None = None  # the first failing call began
        self._unreachable_seen: float | None = None  # ... and failed

    def start(self) -> None:
        """Append the ``start`` event, then produce in the background."""
        self._started = time.monotonic()
        start = events.start(0, self.public_id, self._model, self._created)
        self._broker.append(self.stream_id, start)  # failing: the view answers 503
        self._next_id = 1
        self._unwatch = self._broker.watch(self.stream_id, self._inbox.put)
        self.greenlet = gevent.spawn(self._run)
        metrics.STREAMS_STARTED.labels(self._provider_name).inc()
        metrics.STREAMS_ACTIVE.inc()

    def stop(self, reason: str) -> None:
        """End the stream with ``cancelled``/``reason`` (used at shutdown)."""
        self._inbox.put((_STOP, reason))

    def _run(self) -> None:
        self._producer = gevent.spawn(self._produce)
        outcome = None
        ended_elsewhere = False
        try:
            outcome = self._relay()
        except StreamEnded:
            ended_elsewhere = True
        except BrokerUnavailable as exc:
            outcome = self._store_lost(exc)
        except Exception:
            log.exception("stream %s: pump failed", self.stream_id)
        finally:
            self._stop_producer()  # closes the provider connection
            if self._stop_noticed is not None and outcome is not None:
                metrics.CANCEL_TO_CLOSED.labels(outcome.data["reason"]).observe(
                    time.monotonic() - self._stop_noticed)
            self._unwatch()
            if ended_elsewhere:
                log.warning("stream %s: it was ended elsewhere while this worker could not "
                            "reach the stream store; its provider is closed", self.stream_id)
                outcome = self._error("stream_lost", "ended elsewhere", retryable=True)
            outcome = outcome or self._internal_error()
            self._account(outcome)
            try:
                if not ended_elsewhere:
                    self._finish(outcome)
            except StreamEnded:
                log.warning("stream %s: its end could not be recorded: the stream was "
                            "ended elsewhere meanwhile, or its record is gone", self.stream_id)
            except BrokerUnavailable:
                log.warning("stream %s: could not record its end: the stream store stayed "
                            "unreachable for %g s (its readers will see stream_lost)",
                            self.stream_id, _FINISH_RETRY_S)
            except Exception:
                log.exception("stream %s: could not record its end", self.stream_id)
            self._release_slot()
            self._on_exit(self)

    def _stop_producer(self) -> None:
        """Make the producer stop and wait until it has (and closed the provider)."""
        producer = self._producer
        if producer is None:
            return
        self._ending = True
        if not producer.dead:
            gevent.get_hub().loop.run_callback(self._interrupt_reading)
            producer.join(timeout=5)
            if not producer.dead:  # stuck in an append: the broker is wedged
                producer.kill(block=True, timeout=5)

    def _interrupt_reading(self) -> None:
        """Runs in the hub, where the producer is parked: throw only into a provider read."""
        producer = self._producer
        if self._reading and producer is not None and not producer.dead:
            producer.throw(_Interrupted)

    def _release_slot(self) -> None:
        if self._slot_owner is None:
            return
        try:
            self._broker.release_slot(self._slot_owner, self.stream_id)
        except BrokerUnavailable:
            log.warning("stream %s: could not release its slot; it lapses by itself",
                        self.stream_id)

    def _produce(self) -> None:
        """The producer: provider deltas straight into the broker, until the end or told."""
        items = stream_deltas(self._candidates, self._policy)
        try:
            busy_since = last = time.monotonic()
            while not self._ending:
                self._reading = True
                try:
                    item = next(items, _END)
                finally:
                    self._reading = False
                if self._ending:
                    return
                now = time.monotonic()
                if now - last > _WAITED_S:
                    busy_since = now  # this item was waited for: others ran meanwhile
                last = now
                if isinstance(item, TextDelta):
                    self._relay_text(item.text, now)
                elif item is _END:
                    self._inbox.put(_END)
                    return
                else:
                    self._note(item)
                if now - busy_since > _FAIR_SHARE_S:
                    # A socket that always has data never makes gevent switch:
                    # without this one fast provider would starve the worker.
                    gevent.sleep(0)
                    busy_since = time.monotonic()
        except _Interrupted:
            pass
        except (ProviderError, BrokerUnavailable, StreamEnded) as exc:
            self._inbox.put(exc)
        except Exception:
            log.exception("stream %s: provider adapter failed", self.stream_id)
            self._inbox.put(RuntimeError("adapter failed"))
        finally:
            items.close()  # closes the provider's HTTP response, whatever happened

    def _note(self, item: Any) -> None:
        """What the producer keeps of the items that are not text."""
        if isinstance(item, Usage):
            self._usage = Usage(item.input_tokens if item.input_tokens is not None
                                else self._usage.input_tokens,
                                item.output_tokens if item.output_tokens is not None
                                else self._usage.output_tokens)
        elif isinstance(item, Finished):
            self._finish_reason = item.reason
        elif isinstance(item, Answering):
            if item.model != self._model:
                metrics.FALLBACKS.labels(self._provider_of(item.model)).inc()
            self._model = item.model
            self._provider_name = self._provider_of(item.model)
        elif isinstance(item, Retrying):
            self._retries += 1
            metrics.RETRIES.labels(item.error.provider).inc()
            metrics.PROVIDER_ERRORS.labels(item.error.provider, item.error.code).inc()
            log.info("stream %s: %s failed before its first token (%s); retrying in "
                     "%.2f s", self.stream_id, item.model, item.error.code, item.delay)

    def _relay(self) -> Outcome:
        """The pump: wait for control messages and deadlines; return how the stream ends."""
        grace_ends: float | None = None  # set while no reader is attached
        next_tick = time.monotonic() + self._tick_s
        gives_up = self._started + self._stream_timeout_s
        while True:
            now = time.monotonic()
            if grace_ends is not None and now >= grace_ends:
                return self._cancelled("client_disconnected")
            # After the first token the next one is due within the token timeout.
            silence_ends = (self._last_token_at + self._policy.token_timeout_s
                            if self._last_token_at is not None else gives_up)
            if now >= silence_ends:
                timeout = self._policy.token_timeout_s
                return self._error("upstream_timeout", f"{self._provider_name} sent no token "
                                   f"within {timeout:g} s", retryable=True)
            if now >= gives_up:
                return self._error("upstream_timeout", f"the stream ran longer than "
                                   f"{self._stream_timeout_s:g} s", retryable=True)
            if now >= next_tick:
                # Say we are alive, and catch a cancel or reader change whose
                # notification was lost (pub/sub delivers at most once).
                next_tick = now + self._tick_s
                self._count_tokens()
                try:
                    cancel_reason, readers = self._broker.producer_tick(self.stream_id,
                                                                        self._slot_owner)
                except BrokerUnavailable:
                    self._store_failed(now)  # raises once it has been too long
                    next_tick = time.monotonic() + self._store_retry_max_s
                    continue
                self._store_answered()
                if cancel_reason:
                    return self._cancelled(cancel_reason)
                grace_ends = self._grace(grace_ends, readers)
                continue
            wake = min(next_tick, gives_up, grace_ends or gives_up, silence_ends)
            try:
                item = self._inbox.get(timeout=wake - now)
            except gevent.queue.Empty:
                continue
            if item is _END:
                return self._done()
            elif isinstance(item, ProviderError):
                self._provider_name = item.provider
                metrics.PROVIDER_ERRORS.labels(item.provider, item.code).inc()
                return self._error(item.code, item.message, item.retryable)
            elif isinstance(item, (BrokerUnavailable, StreamEnded)):
                raise item
            elif isinstance(item, Exception):
                return self._internal_error()
            elif item == CANCEL:
                try:
                    info = self._broker.info(self.stream_id)
                except BrokerUnavailable:
                    info = None  # the cancel came by pub/sub: it was asked for
                return self._cancelled(info.cancel_reason if info and info.cancel_reason
                                       else "deleted")
            elif item == READERS:
                try:
                    readers = self._broker.readers(self.stream_id)
                except BrokerUnavailable:
                    continue  # the next tick counts them again
                grace_ends = self._grace(grace_ends, readers)
            elif isinstance(item, tuple) and item[0] == _STOP:
                return self._cancelled(item[1])

    def _grace(self, grace_ends: float | None, readers: int) -> float | None:
        """When generation must stop for want of readers (None: someone listens)."""
        if readers > 0:
            return None
        return grace_ends if grace_ends is not None else time.monotonic() + self._grace_s

    def _relay_text(self, text: str, now: float) -> None:
        """Append one ``token`` event (the producer's hot path)."""
        self._text_deltas += 1
        self._last_token_at = now
        if self._first_token_at is None:
            self._first_token_at = now
            metrics.TIME_TO_FIRST_TOKEN.labels(self._provider_name).observe(
                now - self._started)
        self._append(events.token(self._next_id, text))

    def _count_tokens(self) -> None:
        """Add the text deltas relayed since the last call to the tokens metric.

        Counted at each tick and at the end, not per token: the metric lags by
        at most one tick, and the hot path does no shared-memory write.
        """
        relayed = self._text_deltas
        if relayed > self._counted:
            metrics.TOKENS.labels(self._provider_name).inc(relayed - self._counted)
            self._counted = relayed

    def _append(self, event: Event) -> None:
        try:
            self._broker.append(self.stream_id, event)
        except BrokerUnavailable:
            self._append_again(event)  # the slow path: the hot one costs nothing more
        self._next_id += 1

    def _append_again(self, event: Event) -> None:
        """Ride through a store outage: send the same append again until it lands.

        Appends are idempotent, so one that timed out here but was applied by
        the store after all is simply confirmed. Raises StoreUnreachable when
        the outage lasts too long, _Interrupted when the pump ends the stream.
        """
        pause = _STORE_RETRY_FIRST_S
        # The failed call began when its token came (set just before the append).
        failed_at = self._last_token_at or time.monotonic()
        while True:
            self._store_failed(failed_at)
            gevent.sleep(pause)
            pause = min(pause * 2, self._store_retry_max_s)
            if self._ending:
                raise _Interrupted
            failed_at = time.monotonic()
            try:
                self._broker.append(self.stream_id, event)
            except BrokerUnavailable:
                continue
            self._store_answered()
            return

    def _store_failed(self, began: float) -> None:
        """A store call that began at ``began`` failed; raise once the outage is too long."""
        now = time.monotonic()
        if self._unreachable_since is None or self._unreachable_seen is None:
            self._unreachable_since, self._unreachable_seen = began, now
            log.warning("stream %s: the stream store is unreachable; retrying until it has "
                        "failed for %g s", self.stream_id, self._store_wait_s)
        elif now - self._unreachable_seen >= self._store_wait_s:
            raise StoreUnreachable(now - self._unreachable_since)

    def _store_answered(self) -> None:
        if self._unreachable_since is not None:
            log.info("stream %s: the stream store answers again after %.1f s", self.stream_id,
                     time.monotonic() - self._unreachable_since)
            self._unreachable_since = self._unreachable_seen = None

    def _finish(self, outcome: Outcome) -> None:
        """Record the terminal event; retried while the store is unreachable.

        If an append this pump gave up on was stored after all, the terminal
        event takes the next id instead.
        """
        usage = self._usage_body()
        gives_up = time.monotonic() + _FINISH_RETRY_S
        pause = _STORE_RETRY_FIRST_S
        resynced = False
        while True:
            event = events.make(self._next_id, outcome.event, outcome.data)
            try:
                self._broker.finish(self.stream_id, event, outcome.status,
                                    usage if any(v is not None for v in usage.values())
                                    else None)
            except StreamEnded:
                raise
            except ValueError:
                info = None if resynced else self._broker.info(self.stream_id)
                if info is None or info.last_event_id < self._next_id:
                    raise
                self._next_id, resynced = info.last_event_id + 1, True
                continue
            except BrokerUnavailable:
                if time.monotonic() + pause > gives_up:
                    raise
                gevent.sleep(pause)
                pause = min(pause * 2, self._store_retry_max_s)
                continue
            self._next_id += 1
            return

    def _store_lost(self, exc: BrokerUnavailable) -> Outcome:
        """The outcome of a stream ended because its store was unreachable."""
        seconds = (exc.seconds if isinstance(exc, StoreUnreachable) else
                   time.monotonic() - (self._unreachable_since or time.monotonic()))
        message = f"the stream store was unreachable for {seconds:.1f} s"
        log.warning("stream %s: %s; closing the provider", self.stream_id, message)
        return self._error("internal_error", message, retryable=True)

    def _usage_body(self) -> dict[str, Any]:
        return {"input_tokens": self._usage.input_tokens,
                "output_tokens": self._usage.output_tokens}

    def _done(self) -> Outcome:
        now = time.monotonic()
        output_tokens = self._usage.output_tokens
        if output_tokens is None:
            output_tokens = self._text_deltas
        ttft = None if self._first_token_at is None else self._first_token_at - self._started
        # The generation rate, from the first token on; undefined for fewer than two.
        generating = (now - self._first_token_at
                      if self._first_token_at is not None and self._text_deltas > 1 else None)
        metrics = {
            "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
            "duration_ms": round((now - self._started) * 1000, 1),
            "tokens_per_second": (round(output_tokens / generating, 1)
                                  if generating and output_tokens else None),
        }
        return Outcome(DONE, "done", {"finish_reason": self._finish_reason, "model": self._model,
                                      "usage": self._usage_body(), "metrics": metrics})

    def _error(self, code: str, message: str, retryable: bool) -> Outcome:
        return Outcome(ERROR, "error", {"code": code, "message": message,
                                        "retryable": retryable,
                                        "provider": self._provider_name})

    def _internal_error(self) -> Outcome:
        return self._error("internal_error", "the gateway failed while streaming", True)

    def _cancelled(self, reason: str) -> Outcome:
        self._stop_noticed = time.monotonic()
        return Outcome(CANCELLED, "cancelled", {"reason": reason})

    def _provider_of(self, model: str) -> str:
        return next(c.provider.name for c in self._candidates if c.model == model)

    def _account(self, outcome: Outcome) -> None:
        """Metrics and the one structured log line of a stream's end."""
        duration = time.monotonic() - self._started
        self._count_tokens()
        reason = outcome.data.get("reason") or outcome.data.get("code") or outcome.data.get(
            "finish_reason", "")
        metrics.STREAMS_ACTIVE.dec()
        metrics.STREAMS_ENDED.labels(self._provider_name, outcome.status, reason).inc()
        metrics.STREAM_DURATION.labels(self._provider_name, outcome.status).observe(duration)
        ttft = (None if self._first_token_at is None
                else round((self._first_token_at - self._started) * 1000, 1))
        log.info("stream %s ended: %s (%s)", self.public_id, outcome.status, reason, extra={
            "stream_id": self.public_id, "caller": self._caller, "model": self._model,
            "outcome": outcome.status, "reason": reason, "ttft_ms": ttft,
            "tokens": self._text_deltas, "duration_ms": round(duration * 1000, 1),
            "retries": self._retries})


class PumpGroup:
    """The pumps of this process: counted for the worker's limit, drained at shutdown."""

    def __init__(self) -> None:
        self._pumps: set[Pump] = set()
        self.draining = False

    def __len__(self) -> int:
        return len(self._pumps)

    def start(self, pump: Pump) -> None:
        self._pumps.add(pump)
        pump.start()

    def discard(self, pump: Pump) -> None:
        self._pumps.discard(pump)

    def drain(self, deadline_s: float) -> None:
        """Let running streams finish for ``deadline_s``, then end them with ``shutdown``."""
        if not self.draining:
            self.draining = True
            gevent.spawn(self._drain, deadline_s)

    def _drain(self, deadline_s: float) -> None:
        running = [p.greenlet for p in self._pumps if p.greenlet is not None]
        gevent.joinall(running, timeout=deadline_s)
        for pump in list(self._pumps):
            log.warning("stream %s: ended by shutdown", pump.stream_id)
            pump.stop("shutdown")
        gevent.joinall([p.greenlet for p in self._pumps if p.greenlet is not None], timeout=5)
