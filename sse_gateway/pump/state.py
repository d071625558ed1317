"""What one stream has produced so far, and the events that say it.

Pure: no gevent, no broker, no clock (every time is passed in). The producer
feeds it the provider's deltas and stores the events it builds; the
supervisor asks it for the terminal event. The numbering, the assembled
output, usage and the end-of-stream metrics live here, and so does batching
outputs into fewer events (``batching.Batcher``): one place for every
transport and every kind of output.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

from sse_gateway import events
from sse_gateway.events import Event
from sse_gateway.providers.base import (
    Finished,
    Output,
    ProviderData,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from sse_gateway.pump.batching import NONE, Batcher, Key, Piece
from sse_gateway.results import Message

_JOIN = 256  # deltas joined into one string of the text so far
_USAGE_FIELDS = tuple(f.name for f in fields(Usage))
_ALWAYS_REPORTED = ("input_tokens", "output_tokens")  # in done.usage even when None


class _Text:
    """Text kept as it streams: the last deltas and the earlier ones joined in runs
    of _JOIN (keeping every delta would hold an object per token, about 29 MiB
    for 1 MiB of one-letter words; one growing buffer would be copied as it
    grows and fragment the heap)."""

    __slots__ = ("_joined", "_recent")

    def __init__(self) -> None:
        self._joined: list[str] = []
        self._recent: list[str] = []

    def add(self, text: str) -> None:
        recent = self._recent
        recent.append(text)
        if len(recent) >= _JOIN:
            self._joined.append("".join(recent))
            recent.clear()

    def __str__(self) -> str:
        return "".join(self._joined) + "".join(self._recent)

    def __bool__(self) -> bool:
        return bool(self._recent or self._joined)


class _Call:
    """One tool call as it builds (always kept: ``tool_call_done`` repeats it whole)."""

    __slots__ = ("arguments", "done", "id", "name")

    def __init__(self, call_id: str, name: str) -> None:
        self.id, self.name = call_id, name
        self.arguments = _Text()
        self.done = False

    def public(self) -> dict[str, Any]:
        """OpenAI's shape, as a client sends it back."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": str(self.arguments)}}


_TOKEN: Key = (events.TOKEN, -1)
_REASONING: Key = (events.REASONING, -1)
_REFUSAL: Key = (events.REFUSAL, -1)


def _event(key: Key, text: str, event_id: int) -> Event:
    """The event of one batched piece of output."""
    name, index = key
    if name == events.TOKEN:
        return events.token(event_id, text)
    if name == events.REASONING:
        return events.reasoning(event_id, text)
    if name == events.REFUSAL:
        return events.refusal(event_id, text)
    return events.tool_call_delta(event_id, index, text)


@dataclass(frozen=True)
class Outcome:
    """How a stream ended: its terminal event (renumbered when it is stored)."""

    terminal: Event

    @property
    def status(self) -> str:
        """The stream's final status: the terminal event's name."""
        return self.terminal.name

    @property
    def data(self) -> dict[str, Any]:
        """The terminal event's payload."""
        payload: dict[str, Any] = self.terminal.payload()
        return payload

    @property
    def reason(self) -> str:
        """The cancel reason, the error code or the finish reason: for logs and metrics."""
        data = self.data
        return str(data.get("reason") or data.get("code") or data.get("finish_reason", ""))


class StreamState:
    """One stream's numbering, output, usage, model and timings."""

    def __init__(self, public_id: str, model: str, provider: str, created: float, *,
                 keep_text: bool = False, coalesce_s: float = 0.0,
                 chunking: str = NONE) -> None:
        self.public_id = public_id  # the id its client knows
        self.created = created  # wall-clock seconds, as the start event says
        self.model = model  # the candidate that answered (the first until one does)
        self.provider = provider  # the provider named by an error event
        self.next_id = 0  # the id of the next event stored
        self.started = 0.0  # monotonic seconds at the start event
        self.first_output_at: float | None = None
        self.last_output_at: float | None = None
        self.output_deltas = 0
        self.retries = 0
        self.usage = Usage()
        self.finish_reason = "stop"
        self.provider_finish_reason: str | None = None
        self.refused = False  # a refusal was streamed: done says "refusal"
        self.calls: dict[int, _Call] = {}  # tool calls by index
        self.provider_data: dict[str, dict[str, list[Any]]] = {}
        self.unrelayed: Counter[str] = Counter()  # what was not relayed, by name
        # The text, reasoning and refusal so far, only when asked for (whoever
        # consumes the finished answer): a second copy of what the broker keeps,
        # as large as the answer, for as long as the stream runs.
        self.keep_text = keep_text
        self._text, self._reasoning, self._refusal = _Text(), _Text(), _Text()
        # Batching (None: every output delta is its own event, ``output``'s path).
        self.batcher = (Batcher(coalesce_s, chunking) if coalesce_s > 0 or chunking != NONE
                        else None)
        self._output_sent = False  # with batching: the first output event is never held

    @property
    def text(self) -> str:
        """The answer's text so far ("" unless the state was made with ``keep_text``)."""
        return str(self._text)

    def message(self) -> Message:
        """The answer so far (text, reasoning and refusal only with ``keep_text``)."""
        return Message(str(self._text),
                       [c.public() for _, c in sorted(self.calls.items())] or None,
                       str(self._reasoning) if self._reasoning else None,
                       str(self._refusal) if self._refusal else None,
                       self.provider_data or None)

    def start(self, now: float) -> Event:
        """The ``start`` event (id 0)."""
        self.started = now
        return events.start(self.next_id, self.public_id, self.model, self.created)

    def output(self, delta: Output, now: float) -> Event:
        """Count one output delta and build its event (the hot path: keep it lean)."""
        self.output_deltas += 1
        self.last_output_at = now
        if self.first_output_at is None:
            self.first_output_at = now
        kind = type(delta)
        if kind is TextDelta:
            if self.keep_text:
                self._text.add(delta.text)  # type: ignore[attr-defined]
            return events.token(self.next_id, delta.text)  # type: ignore[attr-defined]
        return self._rich_output(delta)

    def _rich_output(self, delta: Output) -> Event:
        """Every output but text (off the plain-text hot path)."""
        event_id = self.next_id
        if isinstance(delta, ReasoningDelta):
            if self.keep_text:
                self._reasoning.add(delta.text)
            return events.reasoning(event_id, delta.text)
        if isinstance(delta, ToolCallDelta):
            self.calls[delta.index].arguments.add(delta.arguments)
            return events.tool_call_delta(event_id, delta.index, delta.arguments)
        if isinstance(delta, ToolCallStart):
            if delta.index in self.calls:
                raise ValueError(f"tool call {delta.index} started twice")
            self.calls[delta.index] = _Call(delta.id, delta.name)
            return events.tool_call(event_id, delta.index, delta.id, delta.name)
        if isinstance(delta, ToolCallEnd):
            call = self.calls[delta.index]
            call.done = True
            return events.tool_call_done(event_id, delta.index, call.id, call.name,
                                         str(call.arguments))
        if isinstance(delta, RefusalDelta):
            self.refused = True
            if self.keep_text:
                self._refusal.add(delta.text)
            return events.refusal(event_id, delta.text)
        raise TypeError(f"no event for output of kind {type(delta).__name__}")

    def batched(self, delta: Output, now: float) -> list[Event]:
        """Count one output delta; the events due now, numbered from ``next_id`` (with
        batching: none while it is held, two when another kind's held run goes first).

        The first output of a stream is never held: it is its own event at once.
        """
        batcher = self.batcher
        assert batcher is not None
        self.output_deltas += 1
        self.last_output_at = now
        if self.first_output_at is None:
            self.first_output_at = now
        kind = type(delta)
        key: Key
        if kind is TextDelta:
            key, text = _TOKEN, delta.text  # type: ignore[attr-defined]
            if self.keep_text:
                self._text.add(text)
        elif kind is ReasoningDelta:
            key, text = _REASONING, delta.text  # type: ignore[attr-defined]
            if self.keep_text:
                self._reasoning.add(text)
        elif kind is RefusalDelta:
            key, text = _REFUSAL, delta.text  # type: ignore[attr-defined]
            self.refused = True
            if self.keep_text:
                self._refusal.add(text)
        elif kind is ToolCallDelta:
            index, text = delta.index, delta.arguments  # type: ignore[attr-defined]
            self.calls[index].arguments.add(text)
            key = (events.TOOL_CALL_DELTA, index)
        else:  # a tool call starts or ends: nothing is merged across it
            held = batcher.flush()
            built = self._built([held] if held is not None else [])
            built.append(self._rich_output(delta)._replace(id=self.next_id + len(built)))
            self._output_sent = True
            return built
        if not self._output_sent and text:
            self._output_sent = True
            return [_event(key, text, self.next_id)]
        return self._built(batcher.add(key, text, now))

    @property
    def flush_due(self) -> float | None:
        """When held output is due to be sent by ``due_events`` (None: nothing is due)."""
        return self.batcher.due if self.batcher is not None else None

    def due_events(self, now: float) -> list[Event]:
        """The held output that is due at ``now``, numbered from ``next_id``."""
        return self._built(self.batcher.tick(now)) if self.batcher is not None else []

    def held_event(self) -> Event | None:
        """Everything batching still holds, as one event under ``next_id`` (the end of a
        stream, whatever the end: nothing produced is lost)."""
        held = self.batcher.flush() if self.batcher is not None else None
        return _event(*held, self.next_id) if held is not None else None

    def _built(self, pieces: list[Piece]) -> list[Event]:
        return [_event(key, text, self.next_id + i) for i, (key, text) in enumerate(pieces)]

    def add_usage(self, usage: Usage) -> None:
        """Merge a usage report: a later figure replaces an earlier one, None keeps it."""
        self.usage = Usage(*(
            new if new is not None else old
            for new, old in ((getattr(usage, name), getattr(self.usage, name))
                             for name in _USAGE_FIELDS)))

    def finished(self, finished: Finished) -> None:
        """The provider's end: its normalized reason and its own word."""
        self.finish_reason = finished.reason
        self.provider_finish_reason = finished.provider_reason

    def add_provider_data(self, data: ProviderData) -> None:
        self.provider_data.setdefault(data.provider, {}).setdefault(data.key, []).append(
            data.item)

    def answered(self, model: str, provider: str) -> None:
        """This candidate answers: ``done`` names it, errors name its provider."""
        self.model, self.provider = model, provider

    def usage_body(self) -> dict[str, Any]:
        """``done.usage``: input and output always (None when unreported), the cache
        and reasoning counts when the provider reported them."""
        usage = self.usage
        return {name: getattr(usage, name) for name in _USAGE_FIELDS
                if name in _ALWAYS_REPORTED or getattr(usage, name) is not None}

    def ttft_ms(self) -> float | None:
        if self.first_output_at is None:
            return None
        return round((self.first_output_at - self.started) * 1000, 1)

    def done(self, now: float) -> Outcome:
        """The stream ended normally at ``now``."""
        output_tokens = self.usage.output_tokens
        if output_tokens is None:
            output_tokens = self.output_deltas
        # The generation rate, from the first output on; undefined for fewer than two.
        generating = (now - self.first_output_at
                      if self.first_output_at is not None and self.output_deltas > 1 else None)
        metrics = {
            "ttft_ms": self.ttft_ms(),
            "duration_ms": round((now - self.started) * 1000, 1),
            "tokens_per_second": (round(output_tokens / generating, 1)
                                  if generating and output_tokens else None),
        }
        finish_reason = self.finish_reason
        if self.refused and finish_reason == "stop":
            finish_reason = "refusal"  # OpenAI ends a streamed refusal with "stop"
        return Outcome(events.done(self.next_id, finish_reason=finish_reason,
                                   model=self.model, usage=self.usage_body(), metrics=metrics,
                                   provider_finish_reason=self.provider_finish_reason,
                                   provider_data=self.provider_data or None))

    def error(self, code: str, message: str, retryable: bool) -> Outcome:
        return Outcome(events.error(self.next_id, code, message, retryable=retryable,
                                    provider=self.provider))

    def internal_error(self) -> Outcome:
        return self.error("internal_error", "the gateway failed while streaming", True)

    def cancelled(self, reason: str) -> Outcome:
        return Outcome(events.cancelled(self.next_id, reason))

    def terminal(self, outcome: Outcome) -> Event:
        """The terminal event under the next id (outputs may have been stored meanwhile)."""
        return outcome.terminal._replace(id=self.next_id)
