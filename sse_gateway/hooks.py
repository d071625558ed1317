"""Completion hooks: call back with each stream's result, once, after its end.

The process that stores a stream's terminal event calls its hooks: the
producer, or, for a stream whose producer died, the process that declares it
lost (the store lets exactly one do so). Each hook runs in its own greenlet,
outside any request, bounded by a timeout: a hook that raises is logged and
counted, one that hangs is killed at its deadline (at its next cooperative
wait: gevent cannot stop code that never yields) and counted, and neither
changes the stream or holds up the worker.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import gevent
import gevent.pool

from sse_gateway import metrics
from sse_gateway.results import StreamResult

log = logging.getLogger(__name__)

Hook = Callable[[StreamResult], None]


class EndHooks:
    """The hooks of one streams service, and the calls of them still running."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._hooks: list[Hook] = []
        self._running = gevent.pool.Group()

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def add(self, hook: Hook) -> None:
        self._hooks.append(hook)

    def fire(self, result: Callable[[], StreamResult | None], ended_at: float) -> None:
        """Call every hook with ``result()`` (built in the background; None: skip).

        ``ended_at`` is ``time.monotonic()`` when the terminal event was stored.
        """
        if self._hooks:
            self._running.spawn(self._call_all, result, ended_at)

    def join(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the hook calls still running."""
        self._running.join(timeout=timeout_s)

    def _call_all(self, result: Callable[[], StreamResult | None], ended_at: float) -> None:
        try:
            built = result()
        except Exception:
            log.exception("completion hooks skipped: the stream's result could not be read")
            metrics.END_HOOKS.labels("error").inc(len(self._hooks))
            return
        if built is None:
            return
        metrics.END_HOOK_DELAY.observe(time.monotonic() - ended_at)
        calls = [gevent.spawn(self._call, hook, built) for hook in self._hooks]
        gevent.joinall(calls)

    def _call(self, hook: Hook, result: StreamResult) -> None:
        name = getattr(hook, "__qualname__", repr(hook))
        began = time.monotonic()
        outcome = "ok"
        try:
            with gevent.Timeout(self.timeout_s):
                # Its own copy of the metadata: a hook that changes it cannot
                # change what the next hook sees.
                hook(dataclasses.replace(result, metadata=dict(result.metadata)))
        except gevent.Timeout:
            outcome = "timeout"
            log.error("completion hook %s: stream %s: still running after %g s; stopped",
                      name, result.stream_id, self.timeout_s)
        except Exception:
            outcome = "error"
            log.exception("completion hook %s failed for stream %s", name, result.stream_id)
        finally:
            metrics.END_HOOKS.labels(outcome).inc()
            metrics.END_HOOK_DURATION.labels(outcome).observe(time.monotonic() - began)
