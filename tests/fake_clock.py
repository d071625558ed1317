"""A clock for in-process tests: time moves only when the test moves it.

It implements ``sse_gateway.clock.Clock`` with gevent primitives, so the code
under test really blocks and switches greenlets; only the timers are fake.
``advance(s)`` fires the timers due within ``s`` seconds in order, letting
every greenlet run until it blocks after each; ``run_until(done)`` jumps from
timer to timer until ``done()`` holds. A stream of minutes takes milliseconds.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import TypeVar

import gevent
import gevent.event
import gevent.queue

T = TypeVar("T")


class _Expired(BaseException):
    """Thrown into a greenlet waiting in ``get`` when its timeout passes."""


class _Timer:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fire: Callable[[], None] = lambda: None
        self.alive = True  # neither fired nor closed
        self.closed = False

    def close(self) -> None:
        self.alive = False
        self.closed = True


class FakeClock:
    """Monotonic time that starts at 1000 s and advances only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._timers: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def _at(self, seconds: float, fire: Callable[[], None] | None = None) -> _Timer:
        timer = _Timer(self.now + max(0.0, seconds))
        if fire is not None:
            timer.fire = fire
        heapq.heappush(self._timers, (timer.deadline, next(self._order), timer))
        return timer

    def _thrower(self, seconds: float, exception: BaseException) -> _Timer:
        """A timer throwing into the calling greenlet from the hub, as gevent's own do
        (unless closed before the hub gets to it)."""
        greenlet = gevent.getcurrent()
        loop = gevent.get_hub().loop
        timer = self._at(seconds)

        def throw() -> None:
            if not timer.closed and not greenlet.dead:
                greenlet.throw(exception)

        timer.fire = lambda: loop.run_callback(throw)
        return timer

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            gevent.sleep(0)
            return
        woken = gevent.event.Event()
        timer = self._at(seconds, woken.set)
        try:
            woken.wait()
        finally:
            timer.close()

    def timeout(self, seconds: float, exception: BaseException) -> _Timer:
        return self._thrower(seconds, exception)

    def get(self, inbox: gevent.queue.Queue[T], timeout: float) -> T | None:
        if timeout <= 0:
            try:
                return inbox.get_nowait()
            except gevent.queue.Empty:
                return None
        timer = self._thrower(timeout, _Expired())
        try:
            return inbox.get()
        except _Expired:
            return None
        finally:
            timer.close()

    def call_later(self, seconds: float, callback: Callable[[], None]) -> _Timer:
        return self._at(seconds, callback)

    # --- driving it ------------------------------------------------------------------------

    @staticmethod
    def settle() -> None:
        """Let every greenlet run until all of them wait (for the clock, or the test)."""
        for _ in range(3):
            gevent.idle()

    def _fire_next(self) -> bool:
        while self._timers:
            deadline, _, timer = heapq.heappop(self._timers)
            if timer.alive:
                timer.alive = False
                self.now = max(self.now, deadline)
                timer.fire()
                return True
        return False

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, firing what falls due in order."""
        target = self.now + seconds
        self.settle()
        while self._timers and self._timers[0][0] <= target:
            self._fire_next()
            self.settle()
        self.now = max(self.now, target)
        self.settle()

    def run_until(self, done: Callable[[], bool], limit_s: float = 86_400.0) -> None:
        """Jump from timer to timer until ``done()``; fail if time runs out first."""
        ends = self.now + limit_s
        self.settle()
        while not done():
            if self.now > ends or not self._fire_next():
                raise AssertionError(f"still waiting at +{self.now - ends + limit_s:g} s "
                                     "with nothing left to fire")
            self.settle()
