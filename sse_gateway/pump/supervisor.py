"""Supervise one stream: deadlines, control messages, exactly one terminal event.

Two greenlets per stream. The producer (``producer.py``) is the hot path. The
supervisor, ``Pump``, does everything else: it sleeps until a typed control
message (``Control``: a cancel, readers changed, shutdown, the producer's end)
or one of its deadlines (the producer tick, resume grace, silence between
outputs, the stream's length), and ends the stream with exactly one terminal
event. The producer is stopped, and so the provider connection closed, before
the terminal event is stored: readers learn the outcome last. A stream-store
outage is ridden through (``outage.py``); recording the end is retried while
the store is unreachable. Time comes from an injected ``Clock``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.queue

from sse_gateway import metrics
from sse_gateway.broker import CANCEL, Broker, BrokerUnavailable, StreamEnded
from sse_gateway.clock import REAL, Clock, Timer
from sse_gateway.providers.base import ProviderError
from sse_gateway.pump.outage import RETRY_FIRST_S, Outage
from sse_gateway.pump.producer import Producer, ProducerDone, ProducerFailed
from sse_gateway.pump.state import Outcome, StreamState
from sse_gateway.upstream import Candidate, RetryPolicy

log = logging.getLogger("sse_gateway.pump")

# Recording a stream's end is retried this long while the store is unreachable
# (then readers end it as stream_lost). Retries come at least every tick / 2, so
# the end lands before readers can confirm that the producer is silent.
FINISH_RETRY_S = 60.0


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """The stream was cancelled in the store (the reason is read from there)."""


@dataclass(frozen=True, slots=True)
class ReadersChanged:
    """A reader attached or left: count them again."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """End the stream with ``cancelled``/``reason`` (this process is stopping)."""

    reason: str


@dataclass(frozen=True, slots=True)
class HeldDue:
    """Batched output is overdue and no output came to send it: send it."""


Control = (CancelRequested | ReadersChanged | Shutdown | HeldDue | ProducerDone
           | ProducerFailed)


class Pump:
    """Produce one stream: provider deltas in, numbered events out."""

    def __init__(self, *, broker: Broker, candidates: Sequence[Candidate], policy: RetryPolicy,
                 stream_id: str, created: float, grace_s: float, tick_s: float,
                 stream_timeout_s: float, slot_owner: str | None = None, caller: str = "",
                 on_exit: Callable[[Pump], None] = lambda pump: None,
                 public_id: str | None = None, clock: Clock = REAL,
                 keep_text: bool = False, detached: bool = False,
                 on_end: Callable[[StreamState, Outcome], None] | None = None,
                 coalesce_s: float = 0.0, chunking: str = "none",
                 on_ending: Callable[[StreamState, Outcome], None] | None = None) -> None:
        self.stream_id = stream_id  # the broker's key
        self.public_id = public_id or stream_id  # the id its client knows
        self.state = StreamState(self.public_id, candidates[0].model,
                                 candidates[0].provider.name, created, keep_text=keep_text,
                                 coalesce_s=coalesce_s, chunking=chunking)
        self._broker = broker
        self._policy = policy
        self._grace_s = grace_s
        self._tick_s = tick_s
        self._stream_timeout_s = stream_timeout_s
        self._slot_owner = slot_owner
        self._caller = caller
        self._on_exit = on_exit
        self._on_end = on_end  # called once its terminal event is stored (by this pump)
        # Called just before the terminal event is stored: what must be done
        # by the time a reader learns that the stream ended (its answer added
        # to its conversation, so the client's next request finds it there).
        self._on_ending = on_ending
        self._detached = detached  # no reader yet: the resume grace runs from the start
        self._clock = clock
        self._inbox: gevent.queue.Queue[Control] = gevent.queue.Queue()
        self._outage = Outage(stream_id, tick_s, clock)
        self._producer = Producer(broker=broker, stream_id=stream_id, candidates=candidates,
                                  policy=policy, state=self.state, outage=self._outage,
                                  clock=clock, tell=self._inbox.put, held=self._held)
        self._coalesce_s = coalesce_s
        self._overdue: Timer | None = None  # batching: wakes the supervisor for held output
        self._stop_noticed: float | None = None  # when a cancel/disconnect/shutdown was seen
        self._counted = 0  # outputs already added to the tokens metric
        self.greenlet: gevent.Greenlet[Any, None] | None = None

    def start(self) -> None:
        """Append the ``start`` event, then produce in the background."""
        self._broker.append(self.stream_id, self.state.start(self._clock.monotonic()))
        self.state.next_id = 1  # stored (failing: the view answers 503)
        self._unwatch = self._broker.watch(self.stream_id, self._heard)
        self.greenlet = gevent.spawn(self._run)
        metrics.STREAMS_STARTED.labels(self.state.provider).inc()
        metrics.STREAMS_ACTIVE.inc()

    def stop(self, reason: str) -> None:
        """End the stream with ``cancelled``/``reason`` (used at shutdown)."""
        self._inbox.put(Shutdown(reason))

    def _held(self, due: float) -> None:
        """The producer holds output until ``due`` (the producer's own next output
        after that sends it, at no extra cost): make sure it goes out a window later
        if none comes (one timer at a time, in the event loop: no greenlet wakes)."""
        if self._overdue is None:
            self._overdue = self._clock.call_later(
                due + self._coalesce_s - self._clock.monotonic(), self._check_held)

    def _check_held(self) -> None:
        """In the event loop: wake the supervisor for held output a window overdue."""
        if self._overdue is not None:
            self._overdue.close()
            self._overdue = None
        due = self.state.flush_due
        if due is None:
            return
        if self._clock.monotonic() >= due + self._coalesce_s:
            self._inbox.put(HeldDue())
        else:  # another run, held since
            self._held(due)

    def _heard(self, what: str) -> None:
        """The broker's watch: a cancel, or the readers changed."""
        self._inbox.put(CancelRequested() if what == CANCEL else ReadersChanged())

    def _run(self) -> None:
        self._producer.start()
        outcome = None
        ended_elsewhere = False
        try:
            outcome = self._supervise()
        except StreamEnded:
            ended_elsewhere = True
        except BrokerUnavailable as exc:
            message = f"the stream store was unreachable for {self._outage.lasted(exc):.1f} s"
            log.warning("stream %s: %s; closing the provider", self.stream_id, message)
            outcome = self.state.error("internal_error", message, retryable=True)
        except Exception:
            log.exception("stream %s: pump failed", self.stream_id)
        finally:
            self._producer.stop()  # closes the provider connection
            if self._overdue is not None:
                self._overdue.close()
            if self._stop_noticed is not None and outcome is not None:
                metrics.CANCEL_TO_CLOSED.labels(outcome.reason).observe(
                    self._clock.monotonic() - self._stop_noticed)
            self._unwatch()
            if ended_elsewhere:
                log.warning("stream %s: it was ended elsewhere while this worker could not "
                            "reach the stream store; its provider is closed", self.stream_id)
                outcome = self.state.error("stream_lost", "ended elsewhere", retryable=True)
            outcome = outcome or self.state.internal_error()
            self._account(outcome)
            if not ended_elsewhere and self._on_ending is not None:
                try:
                    self._on_ending(self.state, outcome)
                except Exception:  # the end is recorded all the same
                    log.exception("stream %s: its end hook failed", self.stream_id)
            try:
                if not ended_elsewhere:
                    self._finish(outcome)
                    if self._on_end is not None:
                        self._on_end(self.state, outcome)
            except StreamEnded:
                log.warning("stream %s: its end could not be recorded: the stream was "
                            "ended elsewhere meanwhile, or its record is gone", self.stream_id)
            except BrokerUnavailable:
                log.warning("stream %s: could not record its end: the stream store stayed "
                            "unreachable for %g s (its readers will see stream_lost)",
                            self.stream_id, FINISH_RETRY_S)
            except Exception:
                log.exception("stream %s: could not record its end", self.stream_id)
            self._release_slot()
            self._on_exit(self)

    def _supervise(self) -> Outcome:
        """Wait for control messages and deadlines; return how the stream ends."""
        state, clock, policy = self.state, self._clock, self._policy
        # Set while no reader is attached (a detached stream starts without one).
        grace_ends = clock.monotonic() + self._grace_s if self._detached else None
        next_tick = clock.monotonic() + self._tick_s
        gives_up = state.started + self._stream_timeout_s
        while True:
            now = clock.monotonic()
            if grace_ends is not None and now >= grace_ends:
                return self._cancelled("client_disconnected")
            # After the first output the next one is due within the token timeout.
            silence_ends = (state.last_output_at + policy.token_timeout_s
                            if state.last_output_at is not None else gives_up)
            if now >= silence_ends:
                return state.error("upstream_timeout", f"{state.provider} sent no token "
                                   f"within {policy.token_timeout_s:g} s", retryable=True)
            if now >= gives_up:
                return state.error("upstream_timeout", f"the stream ran longer than "
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
                    self._outage.failed(now)  # raises once it has been too long
                    next_tick = clock.monotonic() + self._outage.retry_max_s
                    continue
                self._outage.answered()
                if cancel_reason:
                    return self._cancelled(cancel_reason)
                grace_ends = self._grace(grace_ends, readers)
                continue
            due = state.flush_due
            if due is not None and now >= due:
                self._producer.send_due()  # held output no output came to send
                if state.flush_due is not None:  # what chunking keeps waits on
                    self._held(state.flush_due)
                continue
            wake = min(next_tick, gives_up, grace_ends or gives_up, silence_ends)
            match clock.get(self._inbox, wake - now):
                case None | HeldDue():
                    continue
                case ProducerDone():
                    return state.done(clock.monotonic())
                case ProducerFailed(error=ProviderError() as error):
                    state.provider = error.provider
                    metrics.PROVIDER_ERRORS.labels(error.provider, error.code).inc()
                    return state.error(error.code, error.message, error.retryable)
                case ProducerFailed(error=BrokerUnavailable() | StreamEnded() as error):
                    raise error
                case ProducerFailed():
                    return state.internal_error()
                case CancelRequested():
                    return self._cancelled(self._cancel_reason())
                case ReadersChanged():
                    try:
                        readers = self._broker.readers(self.stream_id)
                    except BrokerUnavailable:
                        continue  # the next tick counts them again
                    grace_ends = self._grace(grace_ends, readers)
                case Shutdown(reason):
                    return self._cancelled(reason)

    def _cancel_reason(self) -> str:
        try:
            info = self._broker.info(self.stream_id)
        except BrokerUnavailable:
            info = None  # the cancel came by pub/sub: it was asked for
        return info.cancel_reason if info and info.cancel_reason else "deleted"

    def _grace(self, grace_ends: float | None, readers: int) -> float | None:
        """When generation must stop for want of readers (None: someone listens)."""
        if readers > 0:
            return None
        return grace_ends if grace_ends is not None else self._clock.monotonic() + self._grace_s

    def _cancelled(self, reason: str) -> Outcome:
        self._stop_noticed = self._clock.monotonic()
        return self.state.cancelled(reason)

    def _count_tokens(self) -> None:
        """Add the outputs relayed since the last call to the tokens metric.

        Counted at each tick and at the end, not per token: the metric lags by
        at most one tick, and the hot path does no shared-memory write.
        """
        relayed = self.state.output_deltas
        if relayed > self._counted:
            metrics.TOKENS.labels(self.state.provider).inc(relayed - self._counted)
            self._counted = relayed

    def _finish(self, outcome: Outcome) -> None:
        """Record what batching still holds, then the terminal event; retried while the
        store is unreachable.

        If an append the producer gave up on was stored after all, these
        events take the next ids instead.
        """
        state, clock = self.state, self._clock
        usage = state.usage_body()
        gives_up = clock.monotonic() + FINISH_RETRY_S
        pause = RETRY_FIRST_S
        resynced = False
        held = state.held_event()
        while True:
            try:
                if held is not None:
                    self._broker.append(self.stream_id, held._replace(id=state.next_id))
                    state.next_id += 1
                    held = None
                self._broker.finish(self.stream_id, state.terminal(outcome), outcome.status,
                                    usage if any(v is not None for v in usage.values())
                                    else None)
            except StreamEnded:
                raise
            except ValueError:
                info = None if resynced else self._broker.info(self.stream_id)
                if info is None or info.last_event_id < state.next_id:
                    raise
                state.next_id, resynced = info.last_event_id + 1, True
                continue
            except BrokerUnavailable:
                if clock.monotonic() + pause > gives_up:
                    raise
                clock.sleep(pause)
                pause = min(pause * 2, self._outage.retry_max_s)
                continue
            state.next_id += 1
            return

    def _release_slot(self) -> None:
        if self._slot_owner is None:
            return
        try:
            self._broker.release_slot(self._slot_owner, self.stream_id)
        except BrokerUnavailable:
            log.warning("stream %s: could not release its slot; it lapses by itself",
                        self.stream_id)

    def _account(self, outcome: Outcome) -> None:
        """Metrics and the one structured log line of a stream's end."""
        state = self.state
        duration = self._clock.monotonic() - state.started
        self._count_tokens()
        reason = outcome.reason
        metrics.STREAMS_ACTIVE.dec()
        metrics.STREAMS_ENDED.labels(state.provider, outcome.status, reason).inc()
        metrics.STREAM_DURATION.labels(state.provider, outcome.status).observe(duration)
        log.info("stream %s ended: %s (%s)", self.public_id, outcome.status, reason, extra={
            "stream_id": self.public_id, "caller": self._caller, "model": state.model,
            "outcome": outcome.status, "reason": reason, "ttft_ms": state.ttft_ms(),
            "tokens": state.output_deltas, "duration_ms": round(duration * 1000, 1),
            "retries": state.retries,
            "unrelayed": ",".join(f"{what}:{n}" for what, n in sorted(state.unrelayed.items()))
            or None})
