"""Ended streams: their results for the completion hooks, their assembled messages,
and the sweep that ends the streams whose producer died.

A result is built by the process that stored the stream's terminal event:
from the producer's own state (it kept the text), or, for a stream declared
lost, from the stored events (as far as they are kept).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import gevent

from sse_gateway.broker import Broker, BrokerError, PositionGone, StreamInfo
from sse_gateway.events import Event
from sse_gateway.pump.state import Outcome, StreamState
from sse_gateway.results import Message, StreamResult, assemble

log = logging.getLogger(__name__)


def from_state(state: StreamState, outcome: Outcome, owner: str,
               metadata: dict[str, str], ended_at: float) -> StreamResult:
    """The result of a stream this process produced (its end stored at ``ended_at``,
    wall-clock seconds)."""
    data = outcome.data
    usage = state.usage_body()
    return StreamResult(
        stream_id=state.public_id, owner=owner, status=outcome.status, reason=outcome.reason,
        model=state.model, message=state.message(),
        usage=usage if any(v is not None for v in usage.values()) else None,
        metrics=data.get("metrics"), metadata=metadata, created=state.created,
        ended=ended_at, terminal=data)


def from_store(broker: Broker, key: str, public_id: str,
               ended_at: float) -> StreamResult | None:
    """The result of an ended stream, from what the store keeps (None: it is gone);
    ``ended_at``: when its end was stored (wall-clock seconds).

    A stream whose first events are no longer kept (a long answer) cannot have
    its text assembled: its hooks still run, with an empty message, and its
    terminal event (always kept) for the status and reason.
    """
    info = broker.info(key)
    if info is None:
        return None
    try:
        stored = list(read_all(broker, key))
        message = assemble(stored)
    except PositionGone:
        log.warning("stream %s: its first events are no longer kept; its completion hooks "
                    "get no text", key)
        stored = list(read_all(broker, key, after=info.last_event_id - 1))
        message = Message()
    terminal = stored[-1].payload() if stored else {}
    return StreamResult(
        stream_id=public_id, owner=info.owner, status=info.status,
        reason=str(terminal.get("reason") or terminal.get("code")
                   or terminal.get("finish_reason", "")),
        model=terminal.get("model") or info.model, message=message,
        usage=info.usage, metrics=terminal.get("metrics"), metadata=info.metadata,
        created=info.created, ended=ended_at, terminal=terminal)


def message(broker: Broker, info: StreamInfo) -> Message:
    """The message a stream has assembled so far (raises PositionGone once its
    first events are no longer kept)."""
    return assemble(read_all(broker, info.stream_id, upto=info.last_event_id))


def read_all(broker: Broker, key: str, upto: int | None = None, after: int = -1
             ) -> Iterator[Event]:
    """Every stored event of a stream after id ``after`` (from its start; up to id
    ``upto``), without waiting."""
    position = after
    while upto is None or position < upto:
        batch = broker.read(key, position, timeout=0)
        yield from batch.events
        if not batch.events or batch.ended:
            return
        position = batch.last_id


class Sweeper:
    """Every ``every_s``, let the broker end the streams whose producer went silent."""

    def __init__(self, broker: Broker, every_s: float) -> None:
        self._broker = broker
        self._every_s = every_s
        self._greenlet: gevent.Greenlet[[], None] | None = None

    def ensure(self) -> None:
        """Start sweeping (once): when this process first serves streams or
        registers a completion hook (not at import: a preloading master must not)."""
        if self._greenlet is None and self._broker.sweeps:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _run(self) -> None:
        while True:
            gevent.sleep(self._every_s)
            try:
                self._broker.sweep()
            except BrokerError:
                pass  # the store is away; the next sweep looks again
            except Exception:
                log.exception("sweeping for lost streams failed")
