"""Time as the engine sees it: read it, sleep, time out a read, wait for a message,
call back later.

The pump and the candidate chain take a ``Clock`` instead of calling
``time.monotonic`` and gevent directly, so their deadlines (first token,
silence, stream length, resume grace, store outages) can be tested with a
clock that moves only when the test says (``tests/fake_clock.py``), in
milliseconds. ``REAL`` is gevent's clock; the hot path binds its methods
once, so it costs nothing per token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import gevent
import gevent.queue

T = TypeVar("T")


class Timer(Protocol):
    """A started timeout; closing it before it fires cancels it."""

    def close(self) -> None: ...


class Clock(Protocol):
    """Monotonic time, and the three ways the engine waits for it."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes back."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass (other greenlets run meanwhile)."""
        ...

    def timeout(self, seconds: float, exception: BaseException) -> Timer:
        """Throw ``exception`` into the calling greenlet after ``seconds``, unless closed."""
        ...

    def get(self, inbox: gevent.queue.Queue[T], timeout: float) -> T | None:
        """The inbox's next message, or None once ``timeout`` seconds have passed."""
        ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback`` once after ``seconds``, in the event loop (it must not block),
        unless closed before. No greenlet waits for it."""
        ...


class GeventClock:
    """The real clock: ``time.monotonic`` and gevent's timers."""

    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(gevent.sleep)

    @staticmethod
    def timeout(seconds: float, exception: BaseException) -> Timer:
        timer: Timer = gevent.Timeout.start_new(seconds, exception)
        return timer

    @staticmethod
    def get(inbox: gevent.queue.Queue[T], timeout: float) -> T | None:
        try:
            item: T = inbox.get(timeout=timeout)
        except gevent.queue.Empty:
            return None
        return item

    @staticmethod
    def call_later(seconds: float, callback: Callable[[], None]) -> Timer:
        timer: Timer = gevent.get_hub().loop.timer(max(0.0, seconds))
        timer.start(callback)  # type: ignore[attr-defined]
        return timer


REAL: Clock = GeventClock()
