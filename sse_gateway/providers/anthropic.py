"""Stream messages through the official ``anthropic`` SDK.

The request is translated from the gateway's ``ChatRequest`` into the Messages
API's plain JSON body (no SDK transform, see ``providers.sdk``):

- system messages go to ``system`` (their texts joined by a blank line);
- user content: a string stays a string, parts become ``text`` and ``image``
  blocks (an https URL as a ``url`` source, a data URL as a ``base64`` one);
- an assistant message becomes content blocks in the order Anthropic wants
  them: its thinking blocks (given back in ``provider_data``, unchanged), its
  text, then one ``tool_use`` per tool call (text alone stays a string);
- tool results become ``tool_result`` blocks of a user message; consecutive
  results share one user message, and a user message that follows them joins it;
- ``reasoning_budget`` asks for extended thinking, and ``max_tokens`` (required
  here) defaults to the configured default, plus the budget when thinking.

The stream's events become deltas: text, thinking (its text as reasoning, the
whole signed block as provider data, so a client can send it back), tool_use
blocks as tool calls numbered 0, 1, ... in order, usage (Anthropic's
``message_delta`` figures are cumulative: the last ones win) and the stop
reason. What is not relayed (server tools' blocks, citations, unknown events)
is named in ``Unrelayed``.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from typing import Any

import anthropic
import httpx2

from sse_gateway.providers.base import (
    ChatRequest,
    Delta,
    Finished,
    ImagePart,
    Message,
    NamedTool,
    Part,
    ProviderData,
    ReasoningDelta,
    TextDelta,
    TextPart,
    Tool,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Unrelayed,
    Unsupported,
    UpstreamError,
    Usage,
    error_for_event,
    error_type_of,
)
from sse_gateway.providers.sdk import ClientPools, drain, guarded, payload, sse_events

# Anthropic's stop reasons, in the gateway's vocabulary; any other is "other".
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                "model_context_window_exceeded": "length", "tool_use": "tool_calls",
                "refusal": "refusal"}
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
MIN_THINKING_BUDGET = 1024
THINKING_TYPES = frozenset({"thinking", "redacted_thinking"})
USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens",
                "cache_creation_input_tokens")
TOOL_CHOICES = {"auto": {"type": "auto"}, "required": {"type": "any"},
                "none": {"type": "none"}}


class AnthropicProvider:
    """The ``anthropic/<model>`` provider; SDK clients built once per process, reused."""

    name = "anthropic"

    def __init__(self, *, api_key: str, base_url: str, max_connections: int,
                 connect_timeout: float, default_max_tokens: int) -> None:
        self._configured = bool(api_key)
        self._default_max_tokens = default_max_tokens
        self._clients = ClientPools(lambda http: anthropic.Anthropic(
            api_key=api_key or "unset",
            base_url=base_url or None,
            max_retries=0,  # retries are the gateway's, before the first token only
            **http,
        ), anthropic.DefaultHttpxClient, max_connections=max_connections,
            connect_timeout=connect_timeout)

    @property
    def available(self) -> bool:
        return self._configured

    def check(self, request: ChatRequest) -> None:
        """Raise Unsupported for the first field the Messages API cannot take.

        ``stream`` relies on it: arguments and thinking blocks are valid after it.
        """
        if request.seed is not None:
            raise Unsupported("seed", "anthropic has no seed")
        if request.response_format is not None:
            raise Unsupported("response_format", "anthropic has no response_format")
        for i, tool in enumerate(request.tools):
            if tool.strict:
                raise Unsupported(f"tools.{i}.function.strict",
                                  "anthropic has no strict tools")
        budget = request.reasoning_budget
        if request.reasoning_effort is not None and budget is None:
            raise Unsupported("reasoning.effort", "anthropic extended thinking takes "
                              "reasoning.budget_tokens, not an effort")
        if budget is not None:
            if budget < MIN_THINKING_BUDGET:
                raise Unsupported("reasoning.budget_tokens", "anthropic extended thinking "
                                  f"takes a budget of at least {MIN_THINKING_BUDGET} tokens")
            if request.max_tokens is not None and request.max_tokens <= budget:
                raise Unsupported("max_tokens", "anthropic extended thinking needs max_tokens "
                                  "greater than reasoning.budget_tokens")
        for n, message in enumerate(request.messages):
            _check_message(n, message)

    def stream(self, request: ChatRequest) -> Generator[Delta, None, None]:
        return guarded(self.name, anthropic, self._clients.next(), "/v1/messages",
                       self._body(request), self._deltas)

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        """The Messages API body for a request that passed ``check``."""
        max_tokens = request.max_tokens
        budget = request.reasoning_budget
        if max_tokens is None:
            max_tokens = self._default_max_tokens + (budget or 0)
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": max_tokens,
            "messages": _messages(request.messages),
            "stream": True,
        }
        system = "\n\n".join(m.text for m in request.messages if m.role == "system")
        if system:
            body["system"] = system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if budget is not None:
            body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if request.tools:
            body["tools"] = [_tool(t) for t in request.tools]
        choice = request.tool_choice
        if isinstance(choice, NamedTool):
            body["tool_choice"] = {"type": "tool", "name": choice.name}
        elif choice is not None:
            body["tool_choice"] = TOOL_CHOICES[choice]
        return body

    def _deltas(self, response: httpx2.Response) -> Iterator[Delta]:
        answer = _Answer()
        chunks = response.iter_bytes()
        for _, data in sse_events(chunks):
            event = payload(self.name, data)
            kind = event.get("type")
            if kind == "content_block_delta":  # the hot path: text costs one more lookup
                delta = event.get("delta") or {}
                delta_type = delta.get("type")
                if delta_type == "text_delta":
                    if delta.get("text"):
                        yield TextDelta(delta["text"])
                else:
                    yield from answer.delta(event.get("index"), delta_type, delta)
            elif kind == "message_stop":
                drain(chunks)
                yield from answer.end()
                return
            elif kind == "error":
                raise error_for_event(self.name, error_type_of(event))
            elif kind != "ping":
                yield from answer.event(kind, event)
        raise UpstreamError("anthropic ended the stream before the model finished",
                            provider=self.name)

    def close(self) -> None:
        self._clients.close()


# ---------------------------------------------------------------------------- requests


def _check_message(n: int, message: Message) -> None:
    if not isinstance(message.content, str):
        for m, part in enumerate(message.content):
            if isinstance(part, ImagePart) and part.url.startswith("data:") \
                    and _data_image(part.url) is None:
                raise Unsupported(f"messages.{n}.content.{m}.image_url.url",
                                  "anthropic takes images as https URLs or base64 data URLs "
                                  "of image/jpeg, image/png, image/gif or image/webp")
    if message.role != "assistant":
        return
    for m, call in enumerate(message.tool_calls):
        if _arguments(call.arguments) is None:
            raise Unsupported(f"messages.{n}.tool_calls.{m}.function.arguments",
                              "anthropic takes a tool call's arguments as a JSON object")
    if _thinking_blocks(message) is None:
        raise Unsupported(f"messages.{n}.provider_data",
                          "anthropic.thinking_blocks must be the list of thinking and "
                          "redacted_thinking blocks the gateway gave out")


def _data_image(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a ``data:image/...;base64,`` URL Anthropic takes."""
    head, comma, data = url.partition(",")
    media_type, *params = head[len("data:"):].split(";")
    if not comma or "base64" not in params or media_type not in IMAGE_TYPES:
        return None
    return media_type, data


def _arguments(text: str) -> dict[str, Any] | None:
    """A tool call's arguments as the object ``tool_use.input`` takes ("" is {})."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _thinking_blocks(message: Message) -> list[dict[str, Any]] | None:
    """The thinking blocks given back with an assistant message ([] for none), or
    None when they are not a list of thinking blocks."""
    data = message.provider_data
    if not data or "anthropic" not in data:
        return []
    mine = data["anthropic"]
    if not isinstance(mine, dict):
        return None
    blocks = mine.get("thinking_blocks", [])
    if not isinstance(blocks, list) or not all(
            isinstance(b, dict) and b.get("type") in THINKING_TYPES for b in blocks):
        return None
    return blocks


def _part(part: Part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    image = _data_image(part.url) if part.url.startswith("data:") else None
    if image is None:
        return {"type": "image", "source": {"type": "url", "url": part.url}}
    media_type, data = image
    return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                        "data": data}}


def _blocks(content: str | tuple[Part, ...]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [_part(p) for p in content]


def _messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """The ``messages`` list: everything but the system messages, translated."""
    out: list[dict[str, Any]] = []
    results: list[dict[str, Any]] | None = None  # the open user message of tool results
    for message in messages:
        role = message.role
        if role == "system":
            continue
        if role == "tool":
            content = message.content
            block = {"type": "tool_result", "tool_use_id": message.tool_call_id,
                     "content": content if isinstance(content, str) else
                     [_part(p) for p in content]}
            if results is None:
                results = [block]
                out.append({"role": "user", "content": results})
            else:
                results.append(block)
            continue
        if role == "user":
            if results is not None:
                results.extend(_blocks(message.content))
            else:
                out.append({"role": "user", "content": message.content
                            if isinstance(message.content, str) else
                            [_part(p) for p in message.content]})
        else:
            out.append({"role": role, "content": _assistant(message)})
        results = None
    return out


def _assistant(message: Message) -> str | list[dict[str, Any]]:
    """Thinking blocks, text, tool_use blocks; only text stays a string (as it came)."""
    thinking = _thinking_blocks(message)
    text = message.text
    if not thinking and not message.tool_calls:
        return text
    blocks = list(thinking or ())
    if text:
        blocks.append({"type": "text", "text": text})
    blocks.extend({"type": "tool_use", "id": call.id, "name": call.name,
                   "input": _arguments(call.arguments)} for call in message.tool_calls)
    return blocks


def _tool(tool: Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    out["input_schema"] = (tool.parameters if tool.parameters is not None
                           else {"type": "object", "properties": {}})
    return out


# ---------------------------------------------------------------------------- the stream


class _Thinking:
    """A thinking block being streamed: its text and signature so far."""

    __slots__ = ("signature", "text")

    def __init__(self, text: str, signature: str) -> None:
        self.text = [text]
        self.signature = [signature]


class _Call:
    """A tool_use block being streamed as the gateway's call ``index``."""

    __slots__ = ("has_arguments", "index", "input")

    def __init__(self, index: int, input: Any) -> None:
        self.index = index
        self.input = input  # what content_block_start carried
        self.has_arguments = False


class _Answer:
    """What one stream has told so far, beyond its text: open blocks by Anthropic's
    index, the calls counted, the usage figures and the stop reason."""

    def __init__(self) -> None:
        self.blocks: dict[Any, _Thinking | _Call] = {}  # the other blocks need no state
        self.calls = 0
        self.usage: dict[str, int] = {}
        self.stop_reason: str | None = None

    def event(self, kind: Any, event: dict[str, Any]) -> Iterator[Delta]:
        """Every event but text deltas, message_stop, error and ping."""
        if kind == "content_block_start":
            yield from self.start(event.get("index"), event.get("content_block") or {})
        elif kind == "content_block_stop":
            yield from self.stop(event.get("index"))
        elif kind == "message_delta":
            self.stop_reason = (event.get("delta") or {}).get("stop_reason") or self.stop_reason
            self.add_usage(event.get("usage"))
        elif kind == "message_start":
            self.add_usage((event.get("message") or {}).get("usage"))
        else:
            yield Unrelayed(str(kind))

    def start(self, index: Any, block: dict[str, Any]) -> Iterator[Delta]:
        kind = block.get("type")
        if kind == "text":
            if block.get("text"):
                yield TextDelta(block["text"])
        elif kind == "thinking":
            text = block.get("thinking") or ""
            self.blocks[index] = _Thinking(text, block.get("signature") or "")
            if text:
                yield ReasoningDelta(text)
        elif kind == "tool_use":
            call = _Call(self.calls, block.get("input"))
            self.calls += 1
            self.blocks[index] = call
            yield ToolCallStart(call.index, str(block.get("id") or ""),
                                str(block.get("name") or ""))
        elif kind == "redacted_thinking":
            yield ProviderData("anthropic", "thinking_blocks",
                               {"type": "redacted_thinking", "data": block.get("data")})
        else:  # a server tool's use or result, ...: its deltas are dropped with it
            yield Unrelayed(str(kind))

    def delta(self, index: Any, kind: Any, delta: dict[str, Any]) -> Iterator[Delta]:
        """A content_block_delta other than text."""
        block = self.blocks.get(index)
        if kind == "input_json_delta":
            fragment = delta.get("partial_json")
            if isinstance(block, _Call) and fragment:
                block.has_arguments = True
                yield ToolCallDelta(block.index, fragment)
            # else: a server tool's input (its block was counted as unrelayed)
        elif kind == "thinking_delta":
            text = delta.get("thinking")
            if text:
                if isinstance(block, _Thinking):
                    block.text.append(text)
                yield ReasoningDelta(text)
        elif kind == "signature_delta":
            if isinstance(block, _Thinking):
                block.signature.append(delta.get("signature") or "")
        elif kind == "citations_delta":
            yield Unrelayed("citations")
        else:
            yield Unrelayed(str(kind))

    def stop(self, index: Any) -> Iterator[Delta]:
        block = self.blocks.pop(index, None)
        if isinstance(block, _Call):
            if not block.has_arguments:
                # Arguments are always JSON text: the input the start carried, or {}.
                yield ToolCallDelta(block.index,
                                    json.dumps(block.input) if block.input else "{}")
            yield ToolCallEnd(block.index)
        elif isinstance(block, _Thinking):
            yield ProviderData("anthropic", "thinking_blocks",
                               {"type": "thinking", "thinking": "".join(block.text),
                                "signature": "".join(block.signature)})

    def add_usage(self, usage: Any) -> None:
        """Merge a usage object: Anthropic's counts are cumulative, the last ones win."""
        if isinstance(usage, dict):
            for name in USAGE_FIELDS:
                value = usage.get(name)
                if isinstance(value, int):
                    self.usage[name] = value

    def end(self) -> Iterator[Delta]:
        """At message_stop: the usage, then how the answer finished."""
        yield Usage(**self.usage)
        reason = self.stop_reason
        if reason is None:  # ended properly, without saying why
            yield Finished("tool_calls" if self.calls else "stop")
        else:
            yield Finished(STOP_REASONS.get(reason, "other"), reason)
