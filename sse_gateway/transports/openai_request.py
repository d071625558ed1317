"""An OpenAI chat-completions request body, mapped onto the gateway's own (``POST /v1/streams``).

The mapped body is then validated by ``Streams.parse``, so the same limits and
400s apply; ``param_of`` names a refused field as the client sent it
(``reasoning_effort``, not ``reasoning.effort``).

Fields (a ``null`` value is the field left out, as OpenAI takes it, even for a field
not listed here):

- as they are: ``model`` (``provider/model``), ``messages``, ``tools``,
  ``tool_choice``, ``response_format``, ``stop``, ``top_p``, ``seed``,
  ``temperature``, ``metadata``; a ``developer`` message is a ``system`` one, and
  an assistant message's ``reasoning_content`` (what this dialect answers) is
  taken back as its ``reasoning``.
- ``reasoning_effort`` -> ``reasoning: {"effort": ...}``; ``max_tokens`` or
  ``max_completion_tokens`` -> ``max_tokens``.
- ``stream`` (default false), ``stream_options: {"include_usage"}`` (only with
  ``stream: true``; ``include_obfuscation`` is accepted: no padding is sent).
- accepted only at OpenAI's default, which is what the gateway does: ``n: 1``,
  ``parallel_tool_calls: true``, ``logprobs: false``.
- ``user`` is accepted and ignored (OpenAI uses it for its abuse monitoring).
- the gateway's own extensions (``extra_body`` in the SDKs): ``fallbacks``,
  ``resume_grace_s``, ``reasoning`` (not with ``reasoning_effort``),
  ``coalesce_ms``, ``chunking``.
- anything else: 400 naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sse_gateway.validation import InvalidBody, json_object

_AS_IS = ("model", "messages", "tools", "tool_choice", "response_format", "stop", "top_p",
          "seed", "temperature", "metadata", "fallbacks", "resume_grace_s", "reasoning",
          "coalesce_ms", "chunking")
_OWN = ("stream", "stream_options", "reasoning_effort", "max_tokens", "max_completion_tokens",
        "n", "parallel_tool_calls", "logprobs", "user")
KNOWN = frozenset(_AS_IS + _OWN)


@dataclass(frozen=True)
class ChatCompletionRequest:
    """What the dialect needs of the request; ``body`` is the gateway's own."""

    body: dict[str, Any]
    stream: bool
    include_usage: bool
    renamed: dict[str, str]  # the gateway's param -> the field the client sent


def parse(raw: bytes) -> ChatCompletionRequest:
    """Map an OpenAI body; raise InvalidBody for what OpenAI's shape itself refuses."""
    data = {key: value for key, value in json_object(raw).items() if value is not None}
    for key in data:
        if key not in KNOWN:
            raise InvalidBody(f"{key}: unknown field", key)
    body = {key: data[key] for key in _AS_IS if key in data}
    renamed: dict[str, str] = {}
    stream = _bool(data.get("stream", False), "stream")
    include_usage = False
    if "stream_options" in data:
        if not stream:
            raise InvalidBody("stream_options: only allowed when stream is true",
                              "stream_options")
        options = data["stream_options"]
        if not isinstance(options, dict):
            raise InvalidBody("stream_options: Input should be a valid dictionary",
                              "stream_options")
        for key in options:
            if key not in ("include_usage", "include_obfuscation"):
                raise InvalidBody(f"stream_options.{key}: unknown field", f"stream_options.{key}")
            _bool(options[key], f"stream_options.{key}")
        include_usage = bool(options.get("include_usage", False))
    if "reasoning_effort" in data:
        if "reasoning" in data:
            raise InvalidBody("reasoning_effort: give reasoning_effort or reasoning, not both",
                              "reasoning_effort")
        body["reasoning"] = {"effort": data["reasoning_effort"]}
        renamed["reasoning.effort"] = "reasoning_effort"
    if "max_tokens" in data and "max_completion_tokens" in data:
        raise InvalidBody("max_completion_tokens: give max_tokens or max_completion_tokens, "
                          "not both", "max_completion_tokens")
    for key in ("max_tokens", "max_completion_tokens"):
        if key in data:
            body["max_tokens"] = data[key]
            renamed["max_tokens"] = key
    _default_only(data, "n", 1)
    _default_only(data, "parallel_tool_calls", True)
    _default_only(data, "logprobs", False)
    if "user" in data and not isinstance(data["user"], str):
        raise InvalidBody("user: Input should be a valid string", "user")
    if isinstance(body.get("messages"), list):
        body["messages"] = [_message(m) for m in body["messages"]]
    return ChatCompletionRequest(body, stream, include_usage, renamed)


def param_of(param: str | None, message: str, renamed: dict[str, str]) -> tuple[str | None, str]:
    """A refusal's param and message, naming the field as the client sent it."""
    if param is None:
        return param, message
    for ours, theirs in renamed.items():
        if param == ours or param.startswith(ours + "."):
            new = theirs + param[len(ours):]
            return new, message.replace(param, new, 1)
    return param, message


def _message(raw: Any) -> Any:
    if not isinstance(raw, dict):
        return raw  # refused by the gateway's validation, naming the place
    message = dict(raw)
    if message.get("role") == "developer":
        message["role"] = "system"
    if message.get("role") == "assistant" and "reasoning_content" in message:
        content = message.pop("reasoning_content")
        message.setdefault("reasoning", content)
    return message


def _bool(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidBody(f"{param}: Input should be a valid boolean", param)
    return value


def _default_only(data: dict[str, Any], key: str, default: bool | int) -> None:
    """``key`` may be given only as its default (what the gateway does anyway)."""
    if key in data and (data[key] != default or type(data[key]) is not type(default)):
        raise InvalidBody(f"{key}: only {json.dumps(default)} is supported here", key)
