"""Ride through a stream-store outage, for as long as a stream can afford to.

A store call failing with BrokerUnavailable is retried (the broker's writes
are idempotent) for up to a producer timeout (4 ticks) after the first
failure; then the stream ends, naming the store. Readers elsewhere cannot
declare the stream lost meanwhile: they cannot reach the store either. The
producer's appends and the supervisor's ticks share one outage.
"""

from __future__ import annotations

import logging

from sse_gateway.broker import BrokerUnavailable
from sse_gateway.clock import Clock

log = logging.getLogger("sse_gateway.pump")

RETRY_FIRST_S = 0.05  # the first pause before asking an unreachable store again


class StoreUnreachable(BrokerUnavailable):
    """The stream store stayed unreachable longer than a stream rides through."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the stream store was unreachable for {seconds:.1f} s")
        self.seconds = seconds


class Outage:
    """When the store stopped answering one stream, and whether it has been too long."""

    def __init__(self, stream_id: str, tick_s: float, clock: Clock) -> None:
        self._stream_id = stream_id
        self._clock = clock
        self.wait_s = 4 * tick_s  # a producer timeout
        self.retry_max_s = tick_s / 2  # retries come at least this often
        self._since: float | None = None  # the first failing call began
        self._seen: float | None = None  # ... and failed

    def failed(self, began: float) -> None:
        """A store call that began at ``began`` failed; raise once the outage is too long."""
        now = self._clock.monotonic()
        if self._since is None or self._seen is None:
            self._since, self._seen = began, now
            log.warning("stream %s: the stream store is unreachable; retrying until it has "
                        "failed for %g s", self._stream_id, self.wait_s)
        elif now - self._seen >= self.wait_s:
            raise StoreUnreachable(now - self._since)

    def answered(self) -> None:
        """A store call succeeded: any outage is over."""
        if self._since is not None:
            log.info("stream %s: the stream store answers again after %.1f s", self._stream_id,
                     self._clock.monotonic() - self._since)
            self._since = self._seen = None

    def lasted(self, exc: BrokerUnavailable) -> float:
        """How long the outage that ended the stream with ``exc`` lasted."""
        if isinstance(exc, StoreUnreachable):
            return exc.seconds
        now = self._clock.monotonic()
        return now - (self._since if self._since is not None else now)
