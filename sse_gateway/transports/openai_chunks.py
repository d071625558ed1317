"""The OpenAI chat-completions dialect: a stream as ``chat.completion.chunk`` events,
or as one ``chat.completion`` object; errors in OpenAI's shape.

Two registered dialects, one renderer: ``openai`` and ``openai+usage`` (the
request's ``stream_options.include_usage``, which a renderer could not
otherwise know on a resume: it sees only the stream's events). Every gateway
event becomes at most one SSE event, carrying the gateway event's ``id:``
(``tool_call_done`` becomes nothing: its arguments were streamed already):

    start           the role chunk   {"role": "assistant", "content": "", "refusal": null}
    token           {"content": ...}
    reasoning       {"reasoning_content": ...}  (as DeepSeek and xAI stream it)
    refusal         {"refusal": ...}
    tool_call       {"tool_calls": [{"index", "id", "type": "function",
                                     "function": {"name", "arguments": ""}}]}
    tool_call_delta {"tool_calls": [{"index", "function": {"arguments"}}]}
    done            the finish chunk, then (openai+usage) the usage chunk with
                    ``choices: []``, then ``data: [DONE]`` (the first two with
                    the done's id, ``[DONE]`` with none)
    error           ``data: {"error": {"message", "type", "code", "param": null}}``,
                    nothing after it (the SDKs raise ``APIError`` on it)
    cancelled       the same, with code ``cancelled``

Tool calls are numbered 0, 1, ... in the order they start, whatever index the
provider gave them; that numbering, and the chunk's ``id``/``created``/``model``
(from ``start``), are why the renderer needs a resumed stream's history.

Finish reasons: the gateway's ``stop``, ``length``, ``tool_calls`` and
``content_filter`` are OpenAI's; ``refusal`` is ``stop`` (as OpenAI ends a
refusal) and ``other`` is ``stop``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sse_gateway import events
from sse_gateway.events import CODES, Event
from sse_gateway.transports import sse

OPENAI, OPENAI_USAGE = "openai", "openai+usage"
FINISH_REASONS = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
                  "content_filter": "content_filter"}
DONE_LINE = b"data: [DONE]\n\n"

# What a failed stream answers when it was not streamed (stream: false): the HTTP
# status for each in-stream code (a code with its own status keeps it).
UPSTREAM_STATUS = {
    "upstream_rate_limited": 429,
    "upstream_bad_request": 400,
    "upstream_auth": 502,
    "upstream_timeout": 504,
    "upstream_unavailable": 502,
    "upstream_error": 502,
    "stream_lost": 502,
    "cancelled": 499,  # nginx's "client closed request": the stream was cancelled
}


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "backslashreplace")


def error_type(code: str, status: int | None = None) -> str:
    """OpenAI's ``error.type`` for a gateway code: what the SDKs show; they pick the
    exception class by the HTTP status, not by this."""
    if code == "cancelled":
        return "cancelled"
    if code in ("rate_limited", "too_many_streams", "too_many_readers",
                "upstream_rate_limited"):
        return "rate_limit_error"
    if status is None:
        status = status_of(code)
    return "invalid_request_error" if status < 500 else "server_error"


def status_of(code: str) -> int:
    """The HTTP status that answers a stream that ended with ``code`` unstreamed."""
    row = CODES.get(code)
    if row is not None and row.status is not None:
        return row.status
    return UPSTREAM_STATUS.get(code, 502)


def error_body(code: str, message: str, param: str | None = None,
               status: int | None = None) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {"message", "type", "code", "param"}}``."""
    return {"error": {"message": message, "type": error_type(code, status), "code": code,
                      "param": param}}


def usage_body(usage: dict[str, Any]) -> dict[str, Any]:
    """The gateway's ``done.usage`` as OpenAI's (a figure not reported stays null)."""
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    total = prompt + completion if prompt is not None and completion is not None else None
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total,
            "prompt_tokens_details": {"cached_tokens": usage.get("cache_read_input_tokens", 0)},
            "completion_tokens_details": {"reasoning_tokens": usage.get("reasoning_tokens", 0)}}


def _cancelled_error(payload: dict[str, Any]) -> dict[str, Any]:
    reason = payload.get("reason", "")
    return error_body("cancelled", f"the stream was cancelled ({reason})")


def _stream_error(payload: dict[str, Any]) -> dict[str, Any]:
    return error_body(payload.get("code", "internal_error"), payload.get("message", ""))


class ChunkRenderer:
    """One response's ``chat.completion.chunk`` events (stateful: needs history)."""

    needs_history = True

    def __init__(self, include_usage: bool = False) -> None:
        self.include_usage = include_usage
        self._head = b""  # the chunk's JSON up to the delta
        self._envelope: dict[str, Any] = {}
        self._calls: dict[int, int] = {}  # the gateway's tool call index -> OpenAI's

    def prime(self, history: Sequence[Event]) -> None:
        for event in history:
            self._one(event)

    def open(self, retry_ms: int) -> bytes:
        return sse.encode_retry(retry_ms)

    def render(self, batch: Sequence[Event]) -> bytes:
        return b"".join([self._one(event) for event in batch])

    def ping(self) -> bytes:
        return sse.PING

    def _one(self, event: Event) -> bytes:
        name = event.name
        payload = event.payload()
        if name == events.TOKEN:
            return self._delta(event.id, {"content": payload["content"]})
        if name == events.REASONING:
            return self._delta(event.id, {"reasoning_content": payload["content"]})
        if name == events.REFUSAL:
            return self._delta(event.id, {"refusal": payload["content"]})
        if name == events.TOOL_CALL:
            index = self._calls.setdefault(payload["index"], len(self._calls))
            return self._delta(event.id, {"tool_calls": [{
                "index": index, "id": payload["id"], "type": "function",
                "function": {"name": payload["name"], "arguments": ""}}]})
        if name == events.TOOL_CALL_DELTA:
            index = self._calls.setdefault(payload["index"], len(self._calls))
            return self._delta(event.id, {"tool_calls": [{
                "index": index, "function": {"arguments": payload["arguments"]}}]})
        if name == events.START:
            self._start(payload)
            return self._delta(event.id, {"role": "assistant", "content": "", "refusal": None})
        if name == events.DONE:
            reason = FINISH_REASONS.get(payload.get("finish_reason"), "stop")
            out = self._delta(event.id, {}, reason)
            if self.include_usage:
                out += self._frame(event.id, _json(
                    {**self._envelope, "choices": [],
                     "usage": usage_body(payload.get("usage") or {})}))
            return out + DONE_LINE
        if name == events.ERROR:
            return self._frame(event.id, _json(_stream_error(payload)))
        if name == events.CANCELLED:
            return self._frame(event.id, _json(_cancelled_error(payload)))
        return b""  # tool_call_done (its arguments are streamed), or a name unknown here

    def _start(self, payload: dict[str, Any]) -> None:
        self._envelope = {"id": f"chatcmpl-{payload['stream_id']}",
                          "object": "chat.completion.chunk",
                          "created": int(payload["created"]), "model": payload["model"],
                          "system_fingerprint": None}
        self._head = _json(self._envelope)[:-1] + b',"choices":[{"index":0,"delta":'

    def _delta(self, event_id: int | None, delta: dict[str, Any],
               finish_reason: str | None = None) -> bytes:
        tail = b',"logprobs":null,"finish_reason":%s}]}' % _json(finish_reason)
        return self._frame(event_id, self._head + _json(delta) + tail)

    @staticmethod
    def _frame(event_id: int | None, data: bytes) -> bytes:
        if event_id is None:
            return b"data: %s\n\n" % data
        return b"id: %d\ndata: %s\n\n" % (event_id, data)


class Completion:
    """A stream's events read to the end, as one ``chat.completion`` object (stream: false)."""

    def __init__(self) -> None:
        self.envelope: dict[str, Any] = {}
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.done: dict[str, Any] | None = None
        self.failure: dict[str, Any] | None = None  # OpenAI's error body
        self.status = 200

    @property
    def ended(self) -> bool:
        return self.done is not None or self.failure is not None

    def add(self, batch: Sequence[Event]) -> None:
        for event in batch:
            name, payload = event.name, event.payload()
            if name == events.START:
                self.envelope = {"id": f"chatcmpl-{payload['stream_id']}",
                                 "object": "chat.completion",
                                 "created": int(payload["created"]), "model": payload["model"]}
            elif name == events.TOKEN:
                self.text.append(payload["content"])
            elif name == events.REASONING:
                self.reasoning.append(payload["content"])
            elif name == events.REFUSAL:
                self.refusal.append(payload["content"])
            elif name == events.TOOL_CALL_DONE:
                self.calls[payload["index"]] = {
                    "id": payload["id"], "type": "function",
                    "function": {"name": payload["name"], "arguments": payload["arguments"]}}
            elif name == events.DONE:
                self.done = payload
            elif name == events.ERROR:
                self.failure = _stream_error(payload)
                self.status = status_of(payload.get("code", "internal_error"))
            elif name == events.CANCELLED:
                self.failure = _cancelled_error(payload)
                self.status = status_of("cancelled")

    def body(self) -> dict[str, Any]:
        """The ``chat.completion`` (after ``done``), or the error body (``status`` says which)."""
        if self.failure is not None or self.done is None:
            return self.failure or error_body("internal_error", "the stream ended unfinished")
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text) or None,
                                   "refusal": "".join(self.refusal) or None}
        if self.calls:
            message["tool_calls"] = [call for _, call in sorted(self.calls.items())]
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        done = self.done
        return {**self.envelope, "system_fingerprint": None,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": FINISH_REASONS.get(str(done.get("finish_reason")),
                                                                 "stop")}],
                "usage": usage_body(done.get("usage") or {})}

