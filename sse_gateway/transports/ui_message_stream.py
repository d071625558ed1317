"""The Vercel AI SDK's UI message stream: the dialect ``useChat`` reads.

``useChat`` (``DefaultChatTransport``) POSTs its chat (``id``, ``messages``
made of ``parts``, ``trigger``, ``messageId``) and reads an event stream whose
every ``data`` is one JSON *chunk* (``start``, ``text-delta``, ...), ending
with ``data: [DONE]``. This module is both halves, sans-IO:

- ``UIMessageStreamRenderer`` renders a stream's gateway events as chunks.
  Each chunk is one SSE block ``id: <gateway event id>\\ndata: <json>\\n\\n``;
  the chunks one event gives all carry its id, so ``Last-Event-ID`` resumes
  work as for the gateway's own events. Text and reasoning are blocks
  (``text-start``/``-delta``/``-end``): the renderer remembers which one is
  open, so it needs the history before a resume position; block ids are
  derived from the event that opened the block, so a replay is identical.
- ``to_gateway_messages`` maps ``UIMessage`` values to the gateway's messages.

Chunks carry only fields that every AI SDK 5 and 6 client accepts: from
5.0.0 to 5.0.216 and 6.0.0 to 6.0.230 the client's chunk schemas are *strict*
objects, and 5.0.0 to 5.0.91 know no ``finishReason`` on ``finish`` nor a
``reason`` on ``abort``; so neither is sent. ``tool-input-error`` needs
5.0.7 or later.

Mapping (gateway event -> chunks):

- ``start``: ``start`` (``messageId``: ``msg_<stream id>``; none in the
  ``ai-sdk-continue`` dialect, where the answer continues the client's last
  assistant message, as after a tool result) and ``start-step``.
- ``token`` / ``refusal``: text (a refusal is the model's text to the user);
  ``reasoning``: reasoning. A change of kind, a tool call or the end closes
  the open block.
- ``tool_call``: ``tool-input-start``; ``tool_call_delta``:
  ``tool-input-delta``; ``tool_call_done``: ``tool-input-available`` with the
  parsed arguments (``tool-input-error`` with the raw text when they are not
  JSON).
- ``done``: ``finish-step``, ``finish``; ``error``: ``error`` (``errorText``:
  its message; useChat's ``error`` becomes an ``Error`` with that message);
  ``cancelled``: ``abort``. Then ``data: [DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sse_gateway import events
from sse_gateway.events import Event
from sse_gateway.transports import sse

DIALECT = "ai-sdk"
# The same, for an answer that continues the client's last assistant message
# (its ``start`` names no message, so useChat appends to the one it has).
DIALECT_CONTINUE = "ai-sdk-continue"
DIALECTS = (DIALECT, DIALECT_CONTINUE)

HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}

_TEXT, _REASONING = "text", "reasoning"
_KIND = {events.TOKEN: _TEXT, events.REFUSAL: _TEXT, events.REASONING: _REASONING}


def _chunk(event_id: int | None, chunk: Mapping[str, Any]) -> bytes:
    data = json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))
    body = data.encode("utf-8", "backslashreplace")
    if event_id is None:
        return b"data: %s\n\n" % body
    return b"id: %d\ndata: %s\n\n" % (event_id, body)


def _done(event_id: int | None) -> bytes:
    if event_id is None:
        return b"data: [DONE]\n\n"
    return b"id: %d\ndata: [DONE]\n\n" % event_id


class UIMessageStreamRenderer:
    """One response's renderer: gateway events in, UI message stream chunks out."""

    needs_history = True  # which block is open, which tool call an index is

    def __init__(self, *, message_id: bool = True) -> None:
        self._message_id = message_id
        self._block: tuple[str, str] | None = None  # (kind, id) of the open block
        self._calls: dict[int, tuple[str, str]] = {}  # index -> (toolCallId, toolName)

    def prime(self, history: Sequence[Event]) -> None:
        self.render(history)  # the same state a reader who never dropped has

    def open(self, retry_ms: int) -> bytes:
        return sse.encode_retry(retry_ms)  # the AI SDK's parser ignores it; browsers use it

    def ping(self) -> bytes:
        return sse.PING

    def render(self, batch: Sequence[Event]) -> bytes:
        return b"".join([self._event(event) for event in batch])

    def _event(self, event: Event) -> bytes:
        name, eid = event.name, event.id
        payload = event.payload()
        kind = _KIND.get(name)
        if kind is not None:
            out = b""
            if self._block is None or self._block[0] != kind:
                out = self._close(eid)
                block_id = f"{kind}-{eid}"
                self._block = (kind, block_id)
                out += _chunk(eid, {"type": f"{kind}-start", "id": block_id})
            return out + _chunk(eid, {"type": f"{kind}-delta", "id": self._block[1],
                                      "delta": payload["content"]})
        if name == events.START:
            start: dict[str, Any] = {"type": "start"}
            if self._message_id:
                start["messageId"] = message_id(payload["stream_id"])
            return _chunk(eid, start) + _chunk(eid, {"type": "start-step"})
        if name == events.TOOL_CALL:
            self._calls[payload["index"]] = (payload["id"], payload["name"])
            return self._close(eid) + _chunk(eid, {"type": "tool-input-start",
                                                   "toolCallId": payload["id"],
                                                   "toolName": payload["name"]})
        if name == events.TOOL_CALL_DELTA:
            call = self._calls.get(payload["index"])
            if call is None or not payload["arguments"]:
                return b""
            return _chunk(eid, {"type": "tool-input-delta", "toolCallId": call[0],
                                "inputTextDelta": payload["arguments"]})
        if name == events.TOOL_CALL_DONE:
            return self._tool_done(eid, payload)
        if name == events.DONE:
            return (self._close(eid) + _chunk(eid, {"type": "finish-step"})
                    + _chunk(eid, {"type": "finish"}) + _done(eid))
        if name == events.ERROR:
            return (self._close(eid) + _chunk(eid, {"type": "error",
                                                    "errorText": payload["message"]})
                    + _done(eid))
        if name == events.CANCELLED:
            return self._close(eid) + _chunk(eid, {"type": "abort"}) + _done(eid)
        return b""  # an event this dialect has no chunk for

    def _tool_done(self, eid: int | None, payload: dict[str, Any]) -> bytes:
        call_id, tool = payload["id"], payload["name"]
        out = b""
        if payload["index"] not in self._calls:  # no tool_call came first: open it here
            self._calls[payload["index"]] = (call_id, tool)
            out = self._close(eid) + _chunk(eid, {"type": "tool-input-start",
                                                  "toolCallId": call_id, "toolName": tool})
        arguments = payload["arguments"]
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            return out + _chunk(eid, {"type": "tool-input-error", "toolCallId": call_id,
                                      "toolName": tool, "input": arguments,
                                      "errorText": f"the arguments are not JSON: {exc}"})
        return out + _chunk(eid, {"type": "tool-input-available", "toolCallId": call_id,
                                  "toolName": tool, "input": parsed})

    def _close(self, eid: int | None) -> bytes:
        """End the open text or reasoning block, if one is open."""
        if self._block is None:
            return b""
        (kind, block_id), self._block = self._block, None
        return _chunk(eid, {"type": f"{kind}-end", "id": block_id})


def message_id(stream_id: str) -> str:
    """The assistant message id a stream's ``start`` chunk names."""
    return f"msg_{stream_id}"


# --- useChat's messages -> the gateway's -----------------------------------------------


class MessagesError(ValueError):
    """A UIMessage the gateway cannot send; ``param`` names its place."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


def continues_assistant(messages: Sequence[Any]) -> bool:
    """The answer continues the last message: it is the assistant's (a tool result
    was added to it, say), and useChat appends what follows to it."""
    return bool(messages) and isinstance(messages[-1], Mapping) \
        and messages[-1].get("role") == "assistant"


def to_gateway_messages(ui_messages: Any) -> list[dict[str, Any]]:
    """``UIMessage`` values as the gateway's ``messages``.

    User: ``text`` parts as text, ``file`` parts of an ``image/*`` media type
    as ``image_url`` (their URL or data URL); other files are refused. System:
    its text. Assistant: its text (reasoning is dropped); each step's tool parts
    with a result (``output-available``: the output, a string as it is, any
    other value as JSON; ``output-error``: the error text) become ``tool_calls``
    and the ``tool`` messages after it; calls without a result yet are left out
    (a provider refuses a call without its result). Other parts (``step-start``,
    ``source-*``, ``data-*``) carry nothing for the model.
    """
    if not isinstance(ui_messages, list):
        raise MessagesError("messages", "must be a list of UI messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(ui_messages):
        param = f"messages.{i}"
        if not isinstance(message, Mapping):
            raise MessagesError(param, "must be an object")
        parts = message.get("parts")
        if not isinstance(parts, list):
            raise MessagesError(f"{param}.parts", "must be a list")
        for j, part in enumerate(parts):
            if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                raise MessagesError(f"{param}.parts.{j}", "must be an object with a type")
        role = message.get("role")
        if role == "user":
            out.append({"role": "user", "content": _user_content(parts, param)})
        elif role == "system":
            out.append({"role": "system", "content": "".join(_texts(parts, param))})
        elif role == "assistant":
            out.extend(_assistant(parts, param))
        else:
            raise MessagesError(f"{param}.role", "must be 'system', 'user' or 'assistant'")
    return out


def _texts(parts: Iterable[Mapping[str, Any]], param: str) -> list[str]:
    texts = []
    for j, part in enumerate(parts):
        if part["type"] == "text":
            texts.append(_string(part.get("text"), f"{param}.parts.{j}.text"))
    return texts


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise MessagesError(param, "must be a string")
    return value


def _user_content(parts: Sequence[Mapping[str, Any]], param: str) -> str | list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        where = f"{param}.parts.{j}"
        if part["type"] == "text":
            content.append({"type": "text", "text": _string(part.get("text"), f"{where}.text")})
        elif part["type"] == "file":
            media = _string(part.get("mediaType"), f"{where}.mediaType")
            if not media.startswith("image/"):
                raise MessagesError(f"{where}.mediaType",
                                    f"only image files can be sent to a model, not {media!r}")
            content.append({"type": "image_url",
                            "image_url": {"url": _string(part.get("url"), f"{where}.url")}})
    if len(content) == 1 and content[0]["type"] == "text":
        return str(content[0]["text"])
    return content


def _tool_name(part: Mapping[str, Any]) -> str | None:
    """The tool a part calls, or None when it is not a tool part."""
    kind: str = part["type"]
    if kind == "dynamic-tool":
        name = part.get("toolName")
        return name if isinstance(name, str) else None
    if kind.startswith("tool-"):
        return kind[len("tool-"):]
    return None


def _assistant(parts: Sequence[Mapping[str, Any]], param: str) -> list[dict[str, Any]]:
    """One assistant message per step (a step ends at ``step-start``, or at text
    after the step's tool calls), each followed by its tool results."""
    out: list[dict[str, Any]] = []
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []

    def flush() -> None:
        if text or calls:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
            if calls:
                message["tool_calls"] = list(calls)
            out.append(message)
            out.extend(results)
        text.clear()
        calls.clear()
        results.clear()

    for j, part in enumerate(parts):
        where = f"{param}.parts.{j}"
        kind = part["type"]
        if kind == "step-start":
            flush()
        elif kind == "text":
            if calls:
                flush()
            text.append(_string(part.get("text"), f"{where}.text"))
        elif (name := _tool_name(part)) is not None:
            state = part.get("state")
            if state not in ("output-available", "output-error"):
                continue  # no result: the provider would refuse the call
            call_id = _string(part.get("toolCallId"), f"{where}.toolCallId")
            arguments = json.dumps(part.get("input", {}), ensure_ascii=False,
                                   separators=(",", ":"))
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": arguments}})
            if state == "output-available":
                output = part.get("output")
                content = output if isinstance(output, str) else json.dumps(
                    output, ensure_ascii=False, separators=(",", ":"))
            else:
                content = _string(part.get("errorText"), f"{where}.errorText")
            results.append({"role": "tool", "tool_call_id": call_id, "content": content})
    flush()
    return out
