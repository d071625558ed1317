"""What one stream has produced so far, and the events that say it.

Pure: no gevent, no broker, no clock (every time is passed in). The producer
feeds it the provider's deltas and stores the events it builds; the
supervisor asks it for the terminal event. The numbering, the assembled
output, usage and the end-of-stream metrics live here, so this is also where
batching outputs into fewer events will go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sse_gateway import events
from sse_gateway.events import Event
from sse_gateway.providers.base import Output, TextDelta, Usage

_JOIN = 256  # deltas joined into one string of the text so far


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
                 keep_text: bool = False) -> None:
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
        # The text so far, only when asked for (whoever consumes the finished
        # answer): it is a second copy of what the broker keeps, as large as the
        # answer, for as long as the stream runs. Kept as the last deltas and the
        # earlier ones joined in runs of _JOIN: keeping every delta would hold
        # an object per token (about 29 MiB for 1 MiB of one-letter words); one
        # growing buffer would be copied as it grows and fragment the heap.
        self.keep_text = keep_text
        self._joined: list[str] = []
        self._recent: list[str] = []

    @property
    def text(self) -> str:
        """The answer's text so far ("" unless the state was made with ``keep_text``)."""
        return "".join(self._joined) + "".join(self._recent)

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
        if isinstance(delta, TextDelta):
            if self.keep_text:
                recent = self._recent
                recent.append(delta.text)
                if len(recent) >= _JOIN:
                    self._joined.append("".join(recent))
                    recent.clear()
            return events.token(self.next_id, delta.text)
        raise TypeError(f"no event for output of kind {type(delta).__name__}")

    def add_usage(self, usage: Usage) -> None:
        """Merge a usage report: a later figure replaces an earlier one, None keeps it."""
        self.usage = Usage(
            usage.input_tokens if usage.input_tokens is not None else self.usage.input_tokens,
            usage.output_tokens if usage.output_tokens is not None
            else self.usage.output_tokens)

    def answered(self, model: str, provider: str) -> None:
        """This candidate answers: ``done`` names it, errors name its provider."""
        self.model, self.provider = model, provider

    def usage_body(self) -> dict[str, Any]:
        return {"input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens}

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
        return Outcome(events.done(self.next_id, finish_reason=self.finish_reason,
                                   model=self.model, usage=self.usage_body(), metrics=metrics))

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
