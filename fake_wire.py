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
  A token is plain text (a ``str``) or one of the stream items below; each is
  one "token" for the counts and the timing, whatever it becomes on the wire:
  ``Reasoning``, ``Refusal``, ``ToolCall`` (a call starts), ``ToolArgs`` (the
  next fragment of its arguments), ``RedactedThinking`` (Anthropic only) and
  ``Raw`` (one SSE event sent as it is).
* ``recorded``: a Behaviour that serves a real recorded stream verbatim.
* ``thinking_signature``: the signature the fake gives an Anthropic thinking
  block, and checks when a later request sends the block back.
* ``http_chunk``: one event as one HTTP/1.1 chunk, as both fakes write them.
* ``lorem_tokens``: the tokens both fakes stream by default.

Each dialect object serves one request and keeps that stream's state (which
Anthropic content block is open, the thinking text to sign). It also checks a
request as the real API does (``request_error``: unsigned or forged thinking
blocks, tool results that answer no call, calls left unanswered).

Standard library only. The gateway's own wire format (what it sends browsers)
is not here: it is ``sse_gateway.transports.sse``, which tests and bench read
with its ``Decoder``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeAlias

__all__ = [
    "ANTHROPIC_PATH",
    "DIALECTS",
    "JSON",
    "LAST_CHUNK",
    "OPENAI_PATH",
    "SIGNATURE_KEY",
    "AnthropicDialect",
    "Behaviour",
    "Dialect",
    "OpenAIDialect",
    "Raw",
    "Reasoning",
    "RedactedThinking",
    "Refusal",
    "Token",
    "ToolArgs",
    "ToolCall",
    "http_chunk",
    "json_bytes",
    "lorem_tokens",
    "recorded",
    "sse_events",
    "thinking_signature",
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


# --------------------------------------------------------------------------- stream items


@dataclass(frozen=True, slots=True)
class Reasoning:
    """Reasoning text. OpenAI-compatible: the delta field ``Behaviour.reasoning_field``
    names; Anthropic: a ``thinking_delta`` in a thinking block (signed when it closes)."""

    text: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """Refusal text. OpenAI: ``delta.refusal``; Anthropic: text, and the stop reason
    becomes ``refusal`` (when ``finish_reason`` is "stop")."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call starts: OpenAI: ``tool_calls[{index, id, type, function: {name,
    arguments}}]``; Anthropic: a ``tool_use`` block (``index`` is only this fake's key for
    the ``ToolArgs`` that follow; the block gets Anthropic's own content index) and its
    first ``input_json_delta`` (``arguments``, "" as Anthropic sends first)."""

    index: int
    id: str
    name: str
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ToolArgs:
    """The next fragment of call ``index``'s arguments. OpenAI: ``tool_calls[{index,
    function: {arguments}}]``, also before that call's ``ToolCall`` (arguments before the
    name); Anthropic: an ``input_json_delta``, only right after the call's block opened."""

    index: int
    fragment: str


@dataclass(frozen=True, slots=True)
class RedactedThinking:
    """Anthropic only: a ``redacted_thinking`` block carrying ``data`` (start, then stop)."""

    data: str


@dataclass(frozen=True, slots=True)
class Raw:
    """One whole SSE event (ending in a blank line), sent as it is."""

    event: bytes


Token: TypeAlias = str | Reasoning | Refusal | ToolCall | ToolArgs | RedactedThinking | Raw
_ITEMS = (str, Reasoning, Refusal, ToolCall, ToolArgs, RedactedThinking, Raw)

Wire = Literal["openai", "anthropic"]
ReasoningField = Literal["reasoning_content", "reasoning", "list"]


@dataclass
class Behaviour:
    """What one upstream request does. Counts ("after K tokens") are tokens already sent."""

    # Sequence, not list: a list[str] is a valid argument (list is invariant).
    tokens: Sequence[Token] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
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
    # OpenAI's word; None: no finish chunk at all (the stream still ends with [DONE]).
    # Anthropic: stop->end_turn (tool_use if the answer made a call, refusal if it refused),
    # length->max_tokens, tool_calls->tool_use, refusal->refusal, anything else as it is.
    finish_reason: str | None = "stop"
    input_tokens: int = 7
    output_tokens: int | None = None  # None: len(tokens)
    include_usage: bool = True  # OpenAI: usage chunk only if this AND stream_options.include_usage
    # OpenAI: prompt_tokens_details.cached_tokens; Anthropic: cache_read_input_tokens
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0  # Anthropic only
    # OpenAI: completion_tokens_details.reasoning_tokens; Anthropic (when > 0):
    # message_delta usage.output_tokens_details.thinking_tokens
    reasoning_tokens: int = 0
    # Anthropic: message_delta's usage also carries the final (cumulative) input_tokens and
    # the cache figures, as current API versions send them; None: output_tokens only.
    final_input_tokens: int | None = None
    # OpenAI-compatible: where Reasoning goes: delta.reasoning_content (DeepSeek, xAI),
    # delta.reasoning (Groq, OpenRouter, vLLM) or "list": Mistral's list-shaped content
    # [{"type": "thinking", "thinking": [{"type": "text", "text": ...}]}].
    reasoning_field: ReasoningField = "reasoning_content"
    list_content: bool = False  # OpenAI-compatible: text as [{"type": "text", "text": ...}]
    wire: Wire | None = None  # served only on that API's path (404 on the other)
    verbatim: bool = False  # no generated preamble or epilogue: the tokens are the whole stream
    check_requests: bool = True  # answer 400 as the real API does to an invalid history

    def __post_init__(self) -> None:
        if isinstance(self.tokens, str | bytes):
            raise TypeError("tokens is a sequence of stream items, not one string")
        for token in self.tokens:
            if not isinstance(token, _ITEMS):
                raise TypeError(f"not a stream item: {token!r}")
        if self.reasoning_field not in ("reasoning_content", "reasoning", "list"):
            raise ValueError(f"unknown reasoning_field {self.reasoning_field!r}")

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens) if self.output_tokens is None else self.output_tokens

    @property
    def plain(self) -> bool:
        """Text tokens only, generated around: what a non-streamed answer can give."""
        return not self.verbatim and all(type(token) is str for token in self.tokens)


def sse_events(data: bytes) -> list[bytes]:
    """Split an SSE body into its events, each with its blank line (``b"".join`` is ``data``)."""
    events = [event + b"\n\n" for event in data.split(b"\n\n")]
    events[-1] = events[-1][:-2]
    if not events[-1]:
        events.pop()
    return events


def recorded(path: str | Path, *, wire: Wire | None = None, **fields: Any) -> Behaviour:
    """A Behaviour serving the recorded stream at ``path`` verbatim, one SSE event per token.

    ``wire`` defaults to the recording's directory name (``openai`` or ``anthropic``, as in
    ``tests/recordings``); the other API's path answers 404. ``fields`` set the rest
    (``delay``, ``drop_after``, ...); nothing is generated before or after the events.
    """
    path = Path(path)
    if wire is None:
        name = path.parent.name
        if name not in ("openai", "anthropic"):
            raise ValueError(f"say which API {path} was recorded from: wire='openai'|'anthropic'")
        wire = "openai" if name == "openai" else "anthropic"
    events = sse_events(path.read_bytes())
    return Behaviour(tokens=[Raw(event) for event in events], wire=wire, verbatim=True, **fields)


# --------------------------------------------------------------------------- signatures

SIGNATURE_KEY = b"fake-provider/thinking-signature/v1"


def thinking_signature(thinking: str) -> str:
    """The fake's signature of a thinking block's whole text: base64 HMAC-SHA256."""
    digest = hmac.new(SIGNATURE_KEY, thinking.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


# --------------------------------------------------------------------------- dialects


def json_bytes(obj: object) -> bytes:
    """Compact JSON, UTF-8 as the APIs send it."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # lone surrogates: let JSON escape them instead
        return json.dumps(obj, separators=(",", ":")).encode()


RequestError = tuple[str, str | None]  # (message, param)


def _messages(body: JSON) -> list[JSON]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    return [m if isinstance(m, dict) else {} for m in messages]


def _blocks(message: JSON) -> list[JSON]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [b if isinstance(b, dict) else {} for b in content]


class Dialect:
    """One provider's wire format for one request (and that stream's state)."""

    request_id_header: ClassVar[str]
    wire: ClassVar[Wire]
    path: ClassVar[str]

    def __init__(self, model: str, body: JSON) -> None:
        self.model = model
        self.body = body
        self.request_id = f"req_{uuid.uuid4().hex[:24]}"

    def error_body(self, status: int, message: str, param: str | None = None) -> JSON:
        raise NotImplementedError

    def unservable(self, b: Behaviour) -> str | None:
        """Why ``b`` cannot be streamed in this format, or None."""
        if b.wire is not None and b.wire != self.wire:
            return f"it is a recorded {b.wire} stream"
        return None

    def request_error(self, body: JSON) -> RequestError | None:
        """The 400 the real API answers to this request body, or None."""
        raise NotImplementedError

    def preamble(self, b: Behaviour) -> list[bytes]:
        raise NotImplementedError

    def token(self, text: str) -> bytes:
        """One text delta (the plain-text hot path; ``render`` is the general one)."""
        raise NotImplementedError

    def render(self, item: Token, b: Behaviour) -> list[bytes]:
        """The events of one token, in this stream's state."""
        raise NotImplementedError

    def error_event(self, b: Behaviour) -> bytes:
        raise NotImplementedError

    def epilogue(self, b: Behaviour) -> list[bytes]:
        raise NotImplementedError

    def complete_body(self, b: Behaviour) -> JSON:
        """The whole answer of a request without ``"stream": true`` (text tokens only)."""
        raise NotImplementedError


class OpenAIDialect(Dialect):
    """``POST /v1/chat/completions``: ``data:`` chunks, then ``data: [DONE]``."""

    request_id_header = "x-request-id"
    wire = "openai"
    path = OPENAI_PATH
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

    def error_body(self, status: int, message: str, param: str | None = None) -> JSON:
        default = ("server_error" if status >= 500 else "invalid_request_error", None)
        kind, code = self._error_kinds.get(status, default)
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}

    def unservable(self, b: Behaviour) -> str | None:
        if any(isinstance(token, RedactedThinking) for token in b.tokens):
            return "redacted thinking exists only in Anthropic messages"
        return super().unservable(b)

    def request_error(self, body: JSON) -> RequestError | None:
        """Tool messages must answer the calls of the assistant message before them, all."""
        messages = _messages(body)
        for i, message in enumerate(messages):
            role = message.get("role")
            if role == "assistant" and message.get("tool_calls"):
                answered = set()
                for later in messages[i + 1:]:
                    if later.get("role") != "tool":
                        break
                    answered.add(later.get("tool_call_id"))
                missing = [str(call.get("id")) for call in _calls(message)
                           if call.get("id") not in answered]
                if missing:
                    return ("An assistant message with 'tool_calls' must be followed by tool "
                            "messages responding to each 'tool_call_id'. The following "
                            f"tool_call_ids did not have response messages: {', '.join(missing)}",
                            f"messages.[{i}].role")
            elif role == "tool":
                j = i - 1
                while j >= 0 and messages[j].get("role") == "tool":
                    j -= 1
                before = messages[j] if j >= 0 else {}
                if before.get("role") != "assistant" or not before.get("tool_calls"):
                    return ("Invalid parameter: messages with role 'tool' must be a response to "
                            "a preceeding message with 'tool_calls'.", f"messages.[{i}].role")
                call_id = message.get("tool_call_id")
                if call_id not in {call.get("id") for call in _calls(before)}:
                    return (f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in "
                            "'tool_calls' of previous message.", None)
        return None

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
                "prompt_tokens_details": {"cached_tokens": b.cache_read_input_tokens},
                "completion_tokens_details": {"reasoning_tokens": b.reasoning_tokens}}

    def preamble(self, b: Behaviour) -> list[bytes]:
        if b.verbatim:
            return []
        return [self._chunk([self._choice({"role": "assistant", "content": "", "refusal": None})])]

    def token(self, text: str) -> bytes:
        return self._chunk([self._choice({"content": text})])

    def render(self, item: Token, b: Behaviour) -> list[bytes]:
        delta: JSON
        if type(item) is str:
            if not b.list_content:
                return [self.token(item)]
            delta = {"content": [{"type": "text", "text": item}]}
        elif isinstance(item, Reasoning):
            if b.reasoning_field == "reasoning_content":
                delta = {"content": None, "reasoning_content": item.text}  # as DeepSeek sends it
            elif b.reasoning_field == "reasoning":
                delta = {"reasoning": item.text}
            else:
                delta = {"content": [{"type": "thinking",
                                      "thinking": [{"type": "text", "text": item.text}]}]}
        elif isinstance(item, Refusal):
            delta = {"refusal": item.text}
        elif isinstance(item, ToolCall):
            delta = {"tool_calls": [{"index": item.index, "id": item.id, "type": "function",
                                     "function": {"name": item.name,
                                                  "arguments": item.arguments}}]}
        elif isinstance(item, ToolArgs):
            delta = {"tool_calls": [{"index": item.index,
                                     "function": {"arguments": item.fragment}}]}
        elif isinstance(item, Raw):
            return [item.event]
        else:
            raise ValueError(f"{item!r} cannot be streamed as chat completions")
        return [self._chunk([self._choice(delta)])]

    def error_event(self, b: Behaviour) -> bytes:
        message = "The server had an error while processing your request. Sorry about that!"
        body = self.error_body(500, message)
        if b.error_event_type is not None:
            body["error"]["type"] = b.error_event_type
        return b"data: " + json_bytes(body) + b"\n\n"

    def epilogue(self, b: Behaviour) -> list[bytes]:
        if b.verbatim:
            return []
        events = []
        if b.finish_reason is not None:
            events.append(self._chunk([self._choice({}, b.finish_reason)]))
        if self.usage_requested and b.include_usage:
            events.append(self._chunk([], usage=self._usage(b)))
        events.append(b"data: [DONE]\n\n")
        return events

    def complete_body(self, b: Behaviour) -> JSON:
        message = {"role": "assistant", "content": "".join(map(str, b.tokens)), "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None,
                  "finish_reason": b.finish_reason}
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model, "system_fingerprint": "fp_fake", "choices": [choice],
                "usage": self._usage(b)}


def _calls(message: JSON) -> list[JSON]:
    calls = message.get("tool_calls")
    return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []


class AnthropicDialect(Dialect):
    """``POST /v1/messages``: named events, ``message_start`` to ``message_stop``.

    Content blocks open and close as the tokens change kind: text (and refusals) in a
    ``text`` block, reasoning in a ``thinking`` block that ends with a ``signature_delta``
    (``thinking_signature`` of its whole text), each ``ToolCall`` its own ``tool_use``
    block, each ``RedactedThinking`` its own ``redacted_thinking`` block.
    """

    request_id_header = "request-id"
    wire = "anthropic"
    path = ANTHROPIC_PATH
    _error_types: ClassVar[dict[int, str]] = {
        400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
        404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
        500: "api_error", 529: "overloaded_error",
    }
    _stop_reasons: ClassVar[dict[str, str]] = {
        "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
    }

    def __init__(self, model: str, body: JSON) -> None:
        super().__init__(model, body)
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self._open: str | None = None  # the open block's type
        self._index = -1  # the content index of the last block opened
        self._thinking: list[str] = []  # the open thinking block's text so far
        self._tool: int | None = None  # the open tool_use block's ToolCall.index
        self._refused = False
        self._called = False

    def error_body(self, status: int, message: str, param: str | None = None) -> JSON:
        kind = self._error_types.get(
            status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message},
                "request_id": self.request_id}

    def unservable(self, b: Behaviour) -> str | None:
        tool: int | None = None
        for token in b.tokens:
            if isinstance(token, ToolCall):
                tool = token.index
            elif isinstance(token, ToolArgs):
                if token.index != tool:
                    return (f"ToolArgs({token.index}) does not follow its ToolCall: Anthropic "
                            "streams one tool_use block at a time, its id and name first")
            elif not isinstance(token, Raw):
                tool = None
        return super().unservable(b)

    def request_error(self, body: JSON) -> RequestError | None:
        messages = _messages(body)
        for n, message in enumerate(messages):  # the schema first, as the API does
            if message.get("role") != "assistant":
                continue
            for m, block in enumerate(_blocks(message)):
                kind = block.get("type")
                if kind == "thinking":
                    for name in ("thinking", "signature"):
                        if name not in block:
                            return f"messages.{n}.content.{m}.thinking.{name}: Field required", None
                elif kind == "redacted_thinking" and "data" not in block:
                    return f"messages.{n}.content.{m}.redacted_thinking.data: Field required", None
        last_calls: tuple[int, list[JSON]] | None = None
        for n, message in enumerate(messages):
            blocks = _blocks(message)
            if message.get("role") == "assistant":
                for m, block in enumerate(blocks):
                    if block.get("type") == "thinking" and block.get("signature") != (
                            thinking_signature(str(block.get("thinking")))):
                        return f"messages.{n}.content.{m}: Invalid `signature` in `thinking` block", None
                uses = [str(b.get("id")) for b in blocks if b.get("type") == "tool_use"]
                if uses:
                    last_calls = (n, blocks)
                    after = _blocks(messages[n + 1]) if n + 1 < len(messages) else []
                    answered = {b.get("tool_use_id") for b in after if b.get("type") == "tool_result"}
                    missing = [use for use in uses if use not in answered]
                    if missing:
                        return (f"messages.{n}: `tool_use` ids were found without `tool_result` "
                                f"blocks immediately after: {', '.join(missing)}. Each `tool_use` "
                                "block must have a corresponding `tool_result` block in the next "
                                "message.", None)
            elif message.get("role") == "user":
                before = _blocks(messages[n - 1]) if n > 0 else []
                uses_before = {b.get("id") for b in before if b.get("type") == "tool_use"}
                for m, block in enumerate(blocks):
                    if block.get("type") == "tool_result" and (
                            block.get("tool_use_id") not in uses_before):
                        return (f"messages.{n}.content.{m}: unexpected `tool_use_id` found in "
                                f"`tool_result` blocks: {block.get('tool_use_id')}. Each "
                                "`tool_result` block must have a corresponding `tool_use` block "
                                "in the previous message.", None)
        thinking = body.get("thinking")
        enabled = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
        if enabled and last_calls is not None and last_calls[0] == _last_assistant(messages):
            n, blocks = last_calls
            first = blocks[0].get("type")
            if first not in ("thinking", "redacted_thinking"):
                return (f"messages.{n}.content.0.type: Expected `thinking` or `redacted_thinking`, "
                        f"but found `{first}`. When `thinking` is enabled, a final `assistant` "
                        "message must start with a thinking block (preceeding the lastmost set of "
                        "`tool_use` and `tool_result` blocks). We recommend you include thinking "
                        "blocks from previous turns. To avoid this requirement, disable "
                        "`thinking`. Please consult our documentation at "
                        "https://docs.claude.com/en/docs/build-with-claude/extended-thinking", None)
        return None

    @staticmethod
    def _event(data: JSON) -> bytes:
        return b"event: " + str(data["type"]).encode() + b"\ndata: " + json_bytes(data) + b"\n\n"

    def _message(self, b: Behaviour, content: list[JSON], stop_reason: str | None,
                 output_tokens: int) -> JSON:
        usage = {"input_tokens": b.input_tokens,
                 "cache_creation_input_tokens": b.cache_creation_input_tokens,
                 "cache_read_input_tokens": b.cache_read_input_tokens,
                 "output_tokens": output_tokens}
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": content, "stop_reason": stop_reason, "stop_sequence": None,
                "usage": usage}

    def _stop_reason(self, b: Behaviour) -> str | None:
        if b.finish_reason == "stop" and (self._refused or self._called):
            return "refusal" if self._refused else "tool_use"
        if b.finish_reason is None:
            return None
        return self._stop_reasons.get(b.finish_reason, b.finish_reason)

    # blocks

    def _start(self, block: JSON) -> list[bytes]:
        """Close the open block, open ``block``."""
        events = self._close()
        self._index += 1
        self._open = str(block["type"])
        events.append(self._event({"type": "content_block_start", "index": self._index,
                                   "content_block": block}))
        return events

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        events = []
        if self._open == "thinking":
            signature = thinking_signature("".join(self._thinking))
            events.append(self._delta({"type": "signature_delta", "signature": signature}))
            self._thinking = []
        self._open = None
        self._tool = None
        events.append(self._event({"type": "content_block_stop", "index": self._index}))
        return events

    def _delta(self, delta: JSON) -> bytes:
        return self._event({"type": "content_block_delta", "index": self._index, "delta": delta})

    _TEXT: ClassVar[JSON] = {"type": "text", "text": ""}
    _THINKING: ClassVar[JSON] = {"type": "thinking", "thinking": "", "signature": ""}

    def preamble(self, b: Behaviour) -> list[bytes]:
        if b.verbatim:
            return []
        events = [self._event({"type": "message_start", "message": self._message(b, [], None, 1)})]
        first = b.tokens[0] if b.tokens else ""
        if isinstance(first, str | Refusal):
            events += self._start(self._TEXT)
        elif isinstance(first, Reasoning):
            events += self._start(self._THINKING)
        events.append(self._event({"type": "ping"}))
        return events

    def token(self, text: str) -> bytes:
        return self._delta({"type": "text_delta", "text": text})

    def render(self, item: Token, b: Behaviour) -> list[bytes]:
        if type(item) is str:
            if self._open == "text":
                return [self.token(item)]
            return [*self._start(self._TEXT), self.token(item)]
        if isinstance(item, Refusal):
            self._refused = True
            return self.render(item.text, b)
        if isinstance(item, Reasoning):
            events = [] if self._open == "thinking" else self._start(self._THINKING)
            self._thinking.append(item.text)
            events.append(self._delta({"type": "thinking_delta", "thinking": item.text}))
            return events
        if isinstance(item, ToolCall):
            self._called = True
            events = self._start({"type": "tool_use", "id": item.id, "name": item.name,
                                  "input": {}})
            self._tool = item.index
            events.append(self._delta({"type": "input_json_delta",
                                       "partial_json": item.arguments}))
            return events
        if isinstance(item, ToolArgs):
            if self._open != "tool_use" or self._tool != item.index:
                raise ValueError(f"{item!r} does not follow its ToolCall")
            return [self._delta({"type": "input_json_delta", "partial_json": item.fragment})]
        if isinstance(item, RedactedThinking):
            events = self._start({"type": "redacted_thinking", "data": item.data})
            return events + self._close()
        if isinstance(item, Raw):
            return [item.event]
        raise ValueError(f"{item!r} cannot be streamed as Anthropic messages")

    def error_event(self, b: Behaviour) -> bytes:
        kind = b.error_event_type or "overloaded_error"
        return self._event({"type": "error", "error": {"type": kind, "message": "Overloaded"}})

    def epilogue(self, b: Behaviour) -> list[bytes]:
        if b.verbatim:
            return []
        usage: JSON = {"output_tokens": b.completion_tokens}
        if b.final_input_tokens is not None:
            usage = {"input_tokens": b.final_input_tokens,
                     "cache_creation_input_tokens": b.cache_creation_input_tokens,
                     "cache_read_input_tokens": b.cache_read_input_tokens, **usage}
        if b.reasoning_tokens:
            usage["output_tokens_details"] = {"thinking_tokens": b.reasoning_tokens}
        return [
            *self._close(),
            self._event({"type": "message_delta",
                         "delta": {"stop_reason": self._stop_reason(b), "stop_sequence": None},
                         "usage": usage}),
            self._event({"type": "message_stop"}),
        ]

    def complete_body(self, b: Behaviour) -> JSON:
        content = [{"type": "text", "text": "".join(map(str, b.tokens))}]
        return self._message(b, content, self._stop_reason(b), b.completion_tokens)


def _last_assistant(messages: list[JSON]) -> int:
    for n in range(len(messages) - 1, -1, -1):
        if messages[n].get("role") == "assistant":
            return n
    return -1


DIALECTS: dict[str, type[Dialect]] = {OPENAI_PATH: OpenAIDialect, ANTHROPIC_PATH: AnthropicDialect}
