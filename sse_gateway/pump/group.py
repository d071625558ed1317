"""The pumps of one process: counted for the worker's limit, drained at shutdown."""

from __future__ import annotations

import logging

import gevent

from sse_gateway.pump.supervisor import Pump

log = logging.getLogger("sse_gateway.pump")


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
