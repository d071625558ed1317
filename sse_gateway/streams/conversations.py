"""Conversations the gateway keeps: what a turn is, and what a provider is sent of one.

A request with ``conversation_id`` has its messages added to that conversation
(its owner's: another owner's of the same id is another conversation) when
its stream starts, and the stream's answer when it ends, so the next request
sends only its new messages. The broker keeps each turn as compact JSON text
in the request's own message shape, plus markers that say where it came from:

    {"role":"user","content":"Hi","stream_id":"..."}
    {"role":"assistant","content":"Hello","tool_calls":null,"reasoning":null,
     "refusal":null,"provider_data":null,"stream_id":"...","status":"done"}

An answer is the assistant message of ``?include=message``; ``status`` says how
its stream ended (``done``, ``cancelled``: kept as far as it got, ``error``).
An answer that did not fit within the conversation's bytes is kept as a marker
(``"omitted": "too_large"``, no content). Markers are taken off before the
turns go to a provider, and an answer with nothing in it (an error before any
output, an omitted one) is not sent at all: providers refuse an empty
assistant message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sse_gateway.results import Message

MARKERS = ("stream_id", "status", "omitted")
ANSWER = "#answer"  # the name of a stream's answer's addition: the stream's key + this


def text(turn: Mapping[str, Any]) -> bytes:
    """A turn as the broker keeps it: compact UTF-8 JSON."""
    return json.dumps(turn, ensure_ascii=False, separators=(",", ":")).encode()


def sent(messages: Iterable[Mapping[str, Any]], stream_id: str) -> list[bytes]:
    """A request's own messages as turns, marked with the stream they started."""
    return [text({**message, "stream_id": stream_id}) for message in messages]


def answer(message: Message, status: str, stream_id: str) -> bytes:
    """A stream's answer as a turn, marked with the stream and how it ended."""
    return text({**message.public(), "stream_id": stream_id, "status": status})


def omitted(status: str, stream_id: str) -> bytes:
    """What is kept of an answer that does not fit: that there was one."""
    return text({"role": "assistant", "content": "", "stream_id": stream_id,
                 "status": status, "omitted": "too_large"})


def turns(kept: Iterable[bytes]) -> list[dict[str, Any]]:
    """The kept turns, as stored (markers included)."""
    return [json.loads(turn) for turn in kept]


def for_provider(kept: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The turns as messages of a request: markers off, empty answers left out."""
    messages = []
    for turn in kept:
        message = {k: v for k, v in turn.items() if k not in MARKERS}
        if message.get("role") == "assistant" and not (
                message.get("content") or message.get("tool_calls") or message.get("refusal")):
            continue
        messages.append(message)
    return messages
