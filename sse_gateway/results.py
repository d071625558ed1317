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

from sse_gateway import events
from sse_gateway.events import Event


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
    """The message the events among ``stored`` add up to (as far as they go): the
    output events' text per kind, the tool calls by index, and ``done``'s
    ``provider_data``."""
    text: list[str] = []
    reasoning: list[str] = []
    refusal: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    arguments: dict[int, list[str]] = {}
    provider_data = None
    for event in stored:
        name = event.name
        if name not in events.OUTPUT:
            if name == events.DONE:
                provider_data = json.loads(event.data).get("provider_data")
            continue
        data = json.loads(event.data)
        if name == events.TOKEN:
            text.append(data["content"])
        elif name == events.REASONING:
            reasoning.append(data["content"])
        elif name == events.REFUSAL:
            refusal.append(data["content"])
        elif name == events.TOOL_CALL:
            calls[data["index"]] = {"id": data["id"], "type": "function",
                                    "function": {"name": data["name"], "arguments": ""}}
            arguments[data["index"]] = []
        elif name == events.TOOL_CALL_DELTA:
            arguments[data["index"]].append(data["arguments"])
        elif name == events.TOOL_CALL_DONE:
            arguments[data["index"]] = [data["arguments"]]
    for index, call in calls.items():
        call["function"]["arguments"] = "".join(arguments[index])
    return Message("".join(text), [calls[i] for i in sorted(calls)] or None,
                   "".join(reasoning) if reasoning else None,
                   "".join(refusal) if refusal else None, provider_data)


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
