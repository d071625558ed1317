"""Every event a stream carries, its payload, and the one table of error codes.

Sans-IO: no Flask, no broker, no sockets. A stream is a numbered log of
``Event`` values (ids from 0): ``start``, then output (``token``,
``reasoning``, ``refusal``, ``tool_call``, ``tool_call_delta``,
``tool_call_done``), then exactly one terminal event (``done``, ``error`` or
``cancelled``). The producer builds each event once, here, with its payload
serialised once as one line of UTF-8 JSON; the broker stores it as is; a
transport renders it (``transports.sse`` today). Rendering is a pure function of the event, so a replay is
byte-identical for a given transport.

Error codes, in a stream (the ``error`` event's ``code``) and outside one (an
HTTP answer's ``error.code``), are the rows of ``CODES``: nothing else names one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

# Event names.
START, TOKEN, DONE, ERROR, CANCELLED = "start", "token", "done", "error", "cancelled"
REASONING, REFUSAL = "reasoning", "refusal"
TOOL_CALL, TOOL_CALL_DELTA, TOOL_CALL_DONE = "tool_call", "tool_call_delta", "tool_call_done"
OUTPUT = frozenset({TOKEN, REASONING, REFUSAL, TOOL_CALL, TOOL_CALL_DELTA, TOOL_CALL_DONE})
TERMINAL = frozenset({DONE, ERROR, CANCELLED})

# A stream's status: running, or the name of its terminal event.
RUNNING = "running"
ENDED = (DONE, ERROR, CANCELLED)


class Event(NamedTuple):
    """One event of a stream (a tuple: cheap to build on the hot path).

    ``id`` is its position in the stream's log; None only for an event a
    reader sends without storing it (the store is unreachable), which must not
    move the client's last event id.
    """

    id: int | None
    name: str
    data: bytes  # the payload: one line of UTF-8 JSON

    def payload(self) -> Any:
        return json.loads(self.data)


def encode(payload: Any) -> bytes:
    """A payload as one line of UTF-8 JSON.

    ``json.dumps`` escapes every line break, so no content can break a
    line-based framing. Only lone surrogates fail to encode; backslashreplace
    writes them as the JSON escapes they were, so any Python string
    round-trips.
    """
    return json.dumps(payload, ensure_ascii=False).encode("utf-8", "backslashreplace")


def make(event_id: int | None, name: str, payload: Any) -> Event:
    return Event(event_id, name, encode(payload))


def start(event_id: int, stream_id: str, model: str, created: float) -> Event:
    return make(event_id, START, {"stream_id": stream_id, "model": model, "created": created})


def token(event_id: int, content: str) -> Event:
    """Text output (once per token: built directly, without ``make``'s extra call)."""
    return Event(event_id, TOKEN, encode({"content": content}))


def reasoning(event_id: int, content: str) -> Event:
    return Event(event_id, REASONING, encode({"content": content}))


def refusal(event_id: int, content: str) -> Event:
    return Event(event_id, REFUSAL, encode({"content": content}))


def tool_call(event_id: int, index: int, call_id: str, name: str) -> Event:
    return make(event_id, TOOL_CALL, {"index": index, "id": call_id, "name": name})


def tool_call_delta(event_id: int, index: int, arguments: str) -> Event:
    return Event(event_id, TOOL_CALL_DELTA, encode({"index": index, "arguments": arguments}))


def tool_call_done(event_id: int, index: int, call_id: str, name: str, arguments: str) -> Event:
    return make(event_id, TOOL_CALL_DONE, {"index": index, "id": call_id, "name": name,
                                           "arguments": arguments})


def done(event_id: int, *, finish_reason: str, model: str, usage: dict[str, Any],
         metrics: dict[str, Any], provider_finish_reason: str | None = None,
         provider_data: dict[str, Any] | None = None) -> Event:
    """``done``; ``provider_data`` is there only when the provider gave some."""
    payload = {"finish_reason": finish_reason, "provider_finish_reason": provider_finish_reason,
               "model": model, "usage": usage, "metrics": metrics}
    if provider_data:
        payload["provider_data"] = provider_data
    return make(event_id, DONE, payload)


def error(event_id: int | None, code: str, message: str, *, retryable: bool | None = None,
          provider: str) -> Event:
    """An ``error`` event; ``retryable`` defaults to the code's row in ``CODES``."""
    row = CODES[code]
    return make(event_id, ERROR, {"code": code, "message": message,
                                  "retryable": row.retryable if retryable is None else retryable,
                                  "provider": provider})


def cancelled(event_id: int, reason: str) -> Event:
    return make(event_id, CANCELLED, {"reason": reason})


def stream_lost(event_id: int, model: str) -> Event:
    """The terminal event of a stream whose producer died (written by a reader's look)."""
    return error(event_id, "stream_lost", "the process producing this stream stopped",
                 provider=model.partition("/")[0])


def store_unreachable(provider: str) -> Event:
    """What a reader sends, unnumbered, when the stream store cannot be reached: the
    client's last event id stays where it was, so a resume later loses nothing."""
    return error(None, "internal_error", "the stream store is unreachable; resume later",
                 retryable=True, provider=provider)


@dataclass(frozen=True)
class Code:
    """One error code: the HTTP status that answers it outside a stream (None:
    only ever in a stream), whether retrying may help, and what it means."""

    status: int | None
    retryable: bool
    meaning: str


CODES: dict[str, Code] = {
    # Answers to a request (also usable in a stream where noted).
    "invalid_request": Code(400, False, "the request is malformed; `param` names the field"),
    "unknown_model": Code(400, False, "the model is not served here"),
    "unauthorized": Code(401, False, "a valid API key is required"),
    "not_found": Code(404, False, "no such route or stream (or another owner's)"),
    "method_not_allowed": Code(405, False, "this method is not allowed on this route"),
    "request_timeout": Code(408, True, "the request body did not arrive in time"),
    "stream_exists": Code(409, False, "a stream with this id exists (with another request)"),
    "position_gone": Code(410, False, "the events after this position are no longer kept"),
    "payload_too_large": Code(413, False, "the request body is too large"),
    "unsupported_media_type": Code(415, False, "the body must be JSON"),
    "rate_limited": Code(429, True, "too many requests; wait for Retry-After"),
    "too_many_streams": Code(429, True, "the owner runs as many streams as allowed"),
    "too_many_readers": Code(429, True, "the stream or owner has as many readers as allowed"),
    "internal_error": Code(500, True, "the gateway failed, or its stream store is unreachable"),
    "overloaded": Code(503, True, "the worker is full or shutting down; retry"),
    # In a stream only: how its provider, or its producer, failed.
    "upstream_rate_limited": Code(None, True, "the provider answered 429"),
    "upstream_timeout": Code(None, True, "the provider was silent too long, or the stream "
                                         "ran too long"),
    "upstream_unavailable": Code(None, True, "the provider could not be reached, or answered "
                                             "5xx or 529"),
    "upstream_auth": Code(None, False, "the provider refused the gateway's credentials"),
    "upstream_bad_request": Code(None, False, "the provider refused the request"),
    "upstream_error": Code(None, True, "the provider failed otherwise (e.g. a truncated "
                                       "stream)"),
    "stream_lost": Code(None, True, "the process producing the stream stopped"),
}
