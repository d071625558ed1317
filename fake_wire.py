"""The providers' streaming wire formats, as the project's fake providers write them.

One module for both fakes: the test suite's threaded one
(``tests/fake_provider``, which watches how its peer leaves) and the
benchmark's asyncio one (``bench/provider.py``, which must never be the
bottleneck). Both serve these bytes, so the benchmark measures the gateway on
exactly the stream its tests check, and neither imports the other.

* ``OpenAIDialect``: chat-completions chunks (the role chunk, one chunk per
  token, the finish chunk, the usage chunk when asked, ``[DONE]``);
  ``AnthropicDialect``: messages events (``message_start`` ... ``message_stop``).
  Both as the real APIs send them, byte for byte where the SDKs care.
* ``Behaviour``: what one upstream request does (its tokens, timing, faults).
* ``http_chunk``: one event as one HTTP/1.1 chunk, as both fakes write them.
* ``lorem_tokens``: the tokens both fakes stream by default.

Standard library only. The gateway's own wire format (what it sends browsers)
is not here: it is ``sse_gateway.transports.sse``, which tests and bench read
with its ``Decoder``.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "ANTHROPIC_PATH",
    "DIALECTS",
    "JSON",
    "LAST_CHUNK",
    "OPENAI_PATH",
    "AnthropicDialect",
    "Behaviour",
    "Dialect",
    "OpenAIDialect",
    "http_chunk",
    "json_bytes",
    "lorem_tokens",
]

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"

JSON = dict[str, Any]

LOREM = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua"
)


def lorem_tokens(n: int) -> list[str]:
    """``n`` tokens of lorem ipsum, each word after the first with its leading space."""
    words = itertools.islice(itertools.cycle(LOREM.split()), n)
    return [word if i == 0 else f" {word}" for i, word in enumerate(words)]


def http_chunk(event: bytes) -> bytes:
    """Frame one event as one HTTP/1.1 chunk (``Transfer-Encoding: chunked``)."""
    return b"%x\r\n%s\r\n" % (len(event), event)


LAST_CHUNK = http_chunk(b"")  # the zero-length chunk that ends a chunked body


@dataclass
class Behaviour:
    """What one upstream request does. Counts ("after K tokens") are tokens already sent."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    delay: float = 0.0  # seconds between two tokens
    ttft: float = 0.0  # seconds after the preamble events, before the first token
    header_delay: float = 0.0  # seconds before the status line is sent
    status: int | None = None  # answer this HTTP error (the provider's JSON body), no stream
    retry_after: float | None = None  # `retry-after` header sent with an error status
    drop_after: int | None = None  # after K tokens close the TCP connection, no terminator
    stall_after: int | None = None  # after K tokens go silent for stall_s seconds, then go on
    stall_s: float = 0.0
    error_event_after: int | None = None  # after K tokens send an in-stream error event, then end
    error_event_type: str | None = None  # that event's error type (default: the dialect's usual)
    finish_reason: str = "stop"  # OpenAI's; Anthropic: "stop"->"end_turn", "length"->"max_tokens"
    input_tokens: int = 7
    output_tokens: int | None = None  # None: len(tokens)
    include_usage: bool = True  # OpenAI: usage chunk only if this AND stream_options.include_usage

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens) if self.output_tokens is None else self.output_tokens


# --------------------------------------------------------------------------- dialects


def json_bytes(obj: object) -> bytes:
    """Compact JSON, UTF-8 as the APIs send it."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # lone surrogates: let JSON escape them instead
        return json.dumps(obj, separators=(",", ":")).encode()


class Dialect:
    """One provider's wire format for one request."""

    request_id_header: ClassVar[str]

    def __init__(self, model: str, body: JSON) -> None:
        self.model = model
        self.body = body
        self.request_id = f"req_{uuid.uuid4().hex[:24]}"

    def error_body(self, status: int, message: str) -> JSON:
        raise NotImplementedError

    def preamble(self, b: Behaviour) -> list[bytes]:
        raise NotImplementedError

    def token(self, text: str) -> bytes:
        raise NotImplementedError

    def error_event(self, b: Behaviour) -> bytes:
        raise NotImplementedError

    def epilogue(self, b: Behaviour) -> list[bytes]:
        raise NotImplementedError

    def complete_body(self, b: Behaviour) -> JSON:
        """The whole answer of a request without ``"stream": true``."""
        raise NotImplementedError


class OpenAIDialect(Dialect):
    """``POST /v1/chat/completions``: ``data:`` chunks, then ``data: [DONE]``."""

    request_id_header = "x-request-id"
    _error_kinds: ClassVar[dict[int, tuple[str, str | None]]] = {
        400: ("invalid_request_error", None),
        401: ("invalid_request_error", "invalid_api_key"),
        403: ("invalid_request_error", "unsupported_country_region_territory"),
        404: ("invalid_request_error", "model_not_found"),
        429: ("requests", "rate_limit_exceeded"),
    }

    def __init__(self, model: str, body: JSON) -> None:
        super().__init__(model, body)
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        options = body.get("stream_options")
        self.usage_requested = isinstance(options, dict) and options.get("include_usage") is True

    def error_body(self, status: int, message: str) -> JSON:
        default = ("server_error" if status >= 500 else "invalid_request_error", None)
        kind, code = self._error_kinds.get(status, default)
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def _chunk(self, choices: list[JSON], **extra: Any) -> bytes:
        chunk: JSON = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                       "model": self.model, "system_fingerprint": "fp_fake", "choices": choices}
        if self.usage_requested:
            chunk["usage"] = None  # as the real API does on every chunk but the usage one
        chunk.update(extra)
        return b"data: " + json_bytes(chunk) + b"\n\n"

    @staticmethod
    def _choice(delta: JSON, finish_reason: str | None = None) -> JSON:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def _usage(self, b: Behaviour) -> JSON:
        return {"prompt_tokens": b.input_tokens, "completion_tokens": b.completion_tokens,
                "total_tokens": b.input_tokens + b.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0}}

    def preamble(self, b: Behaviour) -> list[bytes]:
        return [self._chunk([self._choice({"role": "assistant", "content": "", "refusal": None})])]

    def token(self, text: str) -> bytes:
        return self._chunk([self._choice({"content": text})])

    def error_event(self, b: Behaviour) -> bytes:
        message = "The server had an error while processing your request. Sorry about that!"
        body = self.error_body(500, message)
        if b.error_event_type is not None:
            body["error"]["type"] = b.error_event_type
        return b"data: " + json_bytes(body) + b"\n\n"

    def epilogue(self, b: Behaviour) -> list[bytes]:
        events = [self._chunk([self._choice({}, b.finish_reason)])]
        if self.usage_requested and b.include_usage:
            events.append(self._chunk([], usage=self._usage(b)))
        events.append(b"data: [DONE]\n\n")
        return events

    def complete_body(self, b: Behaviour) -> JSON:
        message = {"role": "assistant", "content": "".join(b.tokens), "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None,
                  "finish_reason": b.finish_reason}
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model, "system_fingerprint": "fp_fake", "choices": [choice],
                "usage": self._usage(b)}


class AnthropicDialect(Dialect):
    """``POST /v1/messages``: named events, ``message_start`` to ``message_stop``."""

    request_id_header = "request-id"
    _error_types: ClassVar[dict[int, str]] = {
        400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
        404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
        500: "api_error", 529: "overloaded_error",
    }
    _stop_reasons: ClassVar[dict[str, str]] = {"stop": "end_turn", "length": "max_tokens"}

    def __init__(self, model: str, body: JSON) -> None:
        super().__init__(model, body)
        self.id = f"msg_{uuid.uuid4().hex[:24]}"

    def error_body(self, status: int, message: str) -> JSON:
        kind = self._error_types.get(
            status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message},
                "request_id": self.request_id}

    @staticmethod
    def _event(data: JSON) -> bytes:
        return b"event: " + str(data["type"]).encode() + b"\ndata: " + json_bytes(data) + b"\n\n"

    def _message(self, b: Behaviour, content: list[JSON], stop_reason: str | None,
                 output_tokens: int) -> JSON:
        usage = {"input_tokens": b.input_tokens, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0, "output_tokens": output_tokens}
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": content, "stop_reason": stop_reason, "stop_sequence": None,
                "usage": usage}

    def _stop_reason(self, b: Behaviour) -> str:
        return self._stop_reasons.get(b.finish_reason, b.finish_reason)

    def preamble(self, b: Behaviour) -> list[bytes]:
        return [
            self._event({"type": "message_start", "message": self._message(b, [], None, 1)}),
            self._event({"type": "content_block_start", "index": 0,
                         "content_block": {"type": "text", "text": ""}}),
            self._event({"type": "ping"}),
        ]

    def token(self, text: str) -> bytes:
        return self._event({"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": text}})

    def error_event(self, b: Behaviour) -> bytes:
        kind = b.error_event_type or "overloaded_error"
        return self._event({"type": "error", "error": {"type": kind, "message": "Overloaded"}})

    def epilogue(self, b: Behaviour) -> list[bytes]:
        return [
            self._event({"type": "content_block_stop", "index": 0}),
            self._event({"type": "message_delta",
                         "delta": {"stop_reason": self._stop_reason(b), "stop_sequence": None},
                         "usage": {"output_tokens": b.completion_tokens}}),
            self._event({"type": "message_stop"}),
        ]

    def complete_body(self, b: Behaviour) -> JSON:
        content = [{"type": "text", "text": "".join(b.tokens)}]
        return self._message(b, content, self._stop_reason(b), b.completion_tokens)


DIALECTS: dict[str, type[Dialect]] = {OPENAI_PATH: OpenAIDialect, ANTHROPIC_PATH: AnthropicDialect}
