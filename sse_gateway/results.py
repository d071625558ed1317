"""What a stream produced, assembled: for completion hooks and ``?include=message``.

Events are the stream; this is the answer they add up to. The producer knows
it as it goes (``StreamState``); anyone else assembles it from the stored
events (``assemble``), e.g. the process that declares a stream lost, or a
status request on another host.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sse_gateway.events import TOKEN, Event


@dataclass(frozen=True)
class Message:
    """The assistant message a stream assembled (as far as it got)."""

    content: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    reasoning: str | None = None
    refusal: str | None = None
    provider_data: dict[str, Any] | None = None

    def public(self) -> dict[str, Any]:
        """The ``message`` of the status body (``?include=message``)."""
        return {"role": "assistant", "content": self.content, "tool_calls": self.tool_calls,
                "reasoning": self.reasoning, "refusal": self.refusal,
                "provider_data": self.provider_data}


def assemble(stored: Iterable[Event]) -> Message:
    """The message the output events among ``stored`` add up to."""
    return Message("".join(json.loads(e.data)["content"] for e in stored if e.name == TOKEN))


@dataclass(frozen=True)
class StreamResult:
    """One ended stream, as a completion hook receives it."""

    stream_id: str  # the id its client knows
    owner: str
    status: str  # done, error or cancelled
    reason: str  # the finish reason, the error code or the cancel reason
    model: str  # the model that answered (else the one asked for)
    message: Message
    usage: dict[str, Any] | None
    metrics: dict[str, Any] | None  # done's metrics (ttft_ms, duration_ms, tokens_per_second)
    metadata: dict[str, str]
    created: float  # wall-clock seconds
    ended: float  # wall-clock seconds at which its terminal event was stored (unrounded)
    terminal: dict[str, Any] = field(default_factory=dict)  # the terminal event's payload

    @property
    def text(self) -> str:
        """The answer's text (``message.content``)."""
        return self.message.content
