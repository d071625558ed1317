"""Check a ``POST /v1/streams`` body and turn it into plain values.

Strict types (``"5"`` is not a number, ``true`` is not an integer), unknown
fields refused (a typo such as ``max_token`` should not be silently ignored),
and one clear message naming the first offending field.

The top-level scalars are checked by pydantic; the nested shapes of the
richer request (messages with parts and tool calls, ``tools``,
``tool_choice``, ``reasoning``, ``response_format``, ``stop``) by hand, so
that each message names the exact place (``messages.2.content.1.image_url.url``)
and the rules that join fields (a tool result answers an earlier call,
``tool_choice`` names a declared tool) are checked where they apply. Types
are said the way pydantic says them ("Input should be a valid string").
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sse_gateway.config import StreamsConfig
from sse_gateway.providers.base import (
    ChatRequest,
    ImagePart,
    Message,
    NamedTool,
    Part,
    TextPart,
    Tool,
    ToolCall,
)

# The metadata a stream keeps: a few short strings (contract, "Richer requests").
MAX_METADATA_ITEMS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
# A client's own stream id: a URL path segment and a header value as it is, and
# no "." (a broker key is "<owner>.<id>": an id with one could name another
# owner's key).
STREAM_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")
# An event id a client last saw (Last-Event-ID): ASCII digits only (a str
# pattern's \d takes any script's digits).
EVENT_ID = re.compile(r"[0-9]{1,18}")
# Nesting of the free-form JSON a request carries (a tool's parameters, a
# response schema, provider_data): real schemas are a few levels deep; a bound
# keeps every later walk over them (the size of the tools, the SDKs' encoding)
# far from Python's recursion limit.
MAX_JSON_DEPTH = 64
# A function's name (a tool, a JSON schema's name), as OpenAI defines it.
NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
DATA_URL = re.compile(r"data:image/([A-Za-z0-9][A-Za-z0-9.+-]{0,126});base64,(.*)", re.DOTALL)

ROLES = ("system", "user", "assistant", "tool")
_FIELDS = {  # the fields each role's messages take
    "system": frozenset({"role", "content"}),
    "user": frozenset({"role", "content"}),
    "assistant": frozenset({"role", "content", "tool_calls", "refusal", "reasoning",
                            "provider_data"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
}
_ROLE_OF = {"tool_calls": "assistant", "refusal": "assistant", "reasoning": "assistant",
            "provider_data": "assistant", "tool_call_id": "tool"}
REASONING_EFFORTS = ("low", "medium", "high")
TOOL_CHOICES = ("auto", "none", "required")
MAX_STOP = 4


class InvalidBody(ValueError):
    """The body is not acceptable; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BodyTooLarge(InvalidBody):
    """A part of the body is over its size bound (answered 413 payload_too_large)."""


@dataclass(frozen=True)
class StreamRequest:
    """A validated request to start a stream: what the gateway keeps of it, and the
    generation to ask each candidate for (``request``, whose model is filled in per
    candidate by ``chat``)."""

    model: str
    fallbacks: tuple[str, ...]
    resume_grace_s: float | None
    request: ChatRequest
    metadata: dict[str, str] = field(default_factory=dict)
    detach: bool = False  # start with no reader (answered at once, read later)

    @property
    def messages(self) -> tuple[Message, ...]:
        return self.request.messages

    def chat(self, provider_model: str) -> ChatRequest:
        return replace(self.request, model=provider_model)


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    model: Annotated[str, Field(min_length=3, max_length=256)]
    messages: Any = None  # checked by _messages
    prompt: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    seed: Annotated[int, Field(ge=-2**63, le=2**63 - 1)] | None = None
    # checked by hand, below
    tools: Any = None
    tool_choice: Any = None
    reasoning: Any = None
    response_format: Any = None
    stop: Any = None
    fallbacks: list[Annotated[str, Field(min_length=3, max_length=256)]] = []
    resume_grace_s: Annotated[float, Field(ge=0)] | None = None
    metadata: dict[Annotated[str, Field(min_length=1, max_length=MAX_METADATA_KEY)],
                   Annotated[str, Field(max_length=MAX_METADATA_VALUE)]] = {}
    detach: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> _Body:
        if self.messages is None and self.prompt is None:
            raise ValueError("one of 'messages' or 'prompt' is required")
        if self.messages is not None and self.prompt is not None:
            raise ValueError("give 'messages' or 'prompt', not both")
        return self


def parse_stream_request(raw: bytes | Mapping[str, Any], *, max_tokens_limit: int,
                         max_messages: int, max_resume_grace_s: float,
                         max_fallbacks: int, max_tools: int = StreamsConfig.max_tools,
                         max_tools_bytes: int = StreamsConfig.max_tools_bytes,
                         max_image_bytes: int = StreamsConfig.max_image_bytes
                         ) -> StreamRequest:
    """Validate a request body (JSON text, or its value); raise InvalidBody with a
    message for the client (BodyTooLarge for a part over its size bound)."""
    data = dict(raw) if isinstance(raw, Mapping) else json_object(raw)
    try:
        body = _Body.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc) from None
    for param, model in (("model", body.model),
                         *((f"fallbacks.{i}", m) for i, m in enumerate(body.fallbacks))):
        if _has_control(model):
            raise InvalidBody(f"{param}: must not contain control characters", param)
    if body.messages is not None:
        messages = _messages(body.messages, max_messages, max_image_bytes)
    else:
        messages = (Message("user", body.prompt or ""),)
    if body.max_tokens is not None and body.max_tokens > max_tokens_limit:
        raise InvalidBody(f"max_tokens: must be at most {max_tokens_limit}", "max_tokens")
    if body.resume_grace_s is not None and body.resume_grace_s > max_resume_grace_s:
        raise InvalidBody(f"resume_grace_s: must be at most {max_resume_grace_s:g}",
                          "resume_grace_s")
    _check_fallbacks(body.model, body.fallbacks, max_fallbacks)
    if len(body.metadata) > MAX_METADATA_ITEMS:
        raise InvalidBody(f"metadata: at most {MAX_METADATA_ITEMS} entries are accepted",
                          "metadata")
    tools = _tools(body.tools, max_tools, max_tools_bytes)
    effort, budget = _reasoning(body.reasoning)
    request = ChatRequest("", messages, body.max_tokens, body.temperature, tools,
                          _tool_choice(body.tool_choice, tools), effort, budget,
                          _response_format(body.response_format), _stop(body.stop),
                          body.top_p, body.seed)
    return StreamRequest(body.model, tuple(body.fallbacks), body.resume_grace_s, request,
                         dict(body.metadata), body.detach)


def _fail(param: str, message: str) -> NoReturn:
    raise InvalidBody(f"{param}: {message}", param)


def _one_of(values: Iterable[str]) -> str:
    """``'a', 'b' or 'c'``, as pydantic lists a literal's values."""
    quoted = [f"'{value}'" for value in values]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}" if len(quoted) > 1 else quoted[0]


def _object(value: Any, param: str, fields: Iterable[str],
            required: Iterable[str] = ()) -> dict[str, Any]:
    """``value`` as a JSON object with only ``fields``, and each of ``required``."""
    if not isinstance(value, dict):
        _fail(param, "Input should be a valid dictionary")
    allowed = frozenset(fields)
    for key in value:
        if key not in allowed:
            _fail(f"{param}.{key}", "unknown field")
    for key in required:
        if key not in value:
            _fail(f"{param}.{key}", "is required")
    return value


def _string(value: Any, param: str, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        _fail(param, "Input should be a valid string")
    if not empty and not value:
        _fail(param, "must not be empty")
    return value


def _optional_string(value: Any, param: str) -> str | None:
    return None if value is None else _string(value, param)


def _literal(value: Any, param: str, values: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in values:
        _fail(param, f"Input should be {_one_of(values)}")
    return value


def _json_object(value: Any, param: str) -> dict[str, Any]:
    """A JSON object of free form (a schema, provider data): JSON values only,
    nested at most MAX_JSON_DEPTH deep. Walked without recursion, so no
    nesting (nor a cycle in a host's Python value) can raise RecursionError."""
    if not isinstance(value, dict):
        _fail(param, "Input should be a valid dictionary")
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                _fail(param, f"must not be nested more than {MAX_JSON_DEPTH} levels deep")
            if isinstance(item, dict):
                if not all(isinstance(key, str) for key in item):
                    _fail(param, "must be JSON: every key a string")
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                _fail(param, "must be JSON: no NaN or Infinity")
        elif not (item is None or isinstance(item, str | int)):  # bool is an int
            _fail(param, "must be JSON: objects, lists, strings, numbers, booleans, null")
    return value


# -- messages --------------------------------------------------------------------------------

def _messages(raw: Any, max_messages: int, max_image_bytes: int) -> tuple[Message, ...]:
    if not isinstance(raw, list):
        _fail("messages", "Input should be a valid list")
    if not raw:
        _fail("messages", "must be a non-empty list")
    if len(raw) > max_messages:
        _fail("messages", f"at most {max_messages} are accepted")
    called: set[str] = set()  # the ids of the tool calls made so far
    messages = []
    for i, item in enumerate(raw):
        message = _message(item, f"messages.{i}", called, max_image_bytes)
        called.update(call.id for call in message.tool_calls)
        messages.append(message)
    return tuple(messages)


def _message(raw: Any, param: str, called: set[str], max_image_bytes: int) -> Message:
    if not isinstance(raw, dict):
        _fail(param, "Input should be a valid dictionary")
    if "role" not in raw:
        _fail(f"{param}.role", "is required")
    role = _literal(raw["role"], f"{param}.role", ROLES)
    for key in raw:
        if key not in _FIELDS[role]:
            owner = _ROLE_OF.get(key)
            _fail(f"{param}.{key}", f"only {owner} messages carry it" if owner
                  else "unknown field")
    tool_calls: tuple[ToolCall, ...] = ()
    if role == "assistant":
        tool_calls = _tool_calls(raw.get("tool_calls"), f"{param}.tool_calls")
    content = raw.get("content")
    if content is None:
        if role != "assistant" or not tool_calls:
            if "content" not in raw:
                _fail(f"{param}.content", "is required")
            _fail(f"{param}.content", "may be null only in an assistant message with "
                  "tool_calls")
        content = ""
    parts = _content(content, f"{param}.content", role, max_image_bytes)
    if role == "tool":
        if "tool_call_id" not in raw:
            _fail(f"{param}.tool_call_id", "is required")
        call_id = _string(raw["tool_call_id"], f"{param}.tool_call_id", empty=False)
        if call_id not in called:
            _fail(f"{param}.tool_call_id", f"{call_id!r} answers no tool call of an earlier "
                  "assistant message")
        return Message(role, parts, tool_call_id=call_id)
    if role != "assistant":
        return Message(role, parts)
    # ``reasoning`` is accepted so that a client may send back the ``message`` of
    # GET /v1/streams/<id>?include=message unchanged, and not sent on: what a
    # provider needs of its reasoning to continue travels in provider_data
    # (Anthropic's signed thinking blocks); OpenAI-compatible servers take none back.
    _optional_string(raw.get("reasoning"), f"{param}.reasoning")
    provider_data = raw.get("provider_data")
    if provider_data is not None:
        provider_data = _json_object(provider_data, f"{param}.provider_data")
    return Message(role, parts, tool_calls=tool_calls,
                   refusal=_optional_string(raw.get("refusal"), f"{param}.refusal"),
                   provider_data=provider_data)


def _content(raw: Any, param: str, role: str, max_image_bytes: int) -> str | tuple[Part, ...]:
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        _fail(param, "Input should be a string or a list of parts")
    if not raw:
        _fail(param, "must be a non-empty list of parts")
    return tuple(_part(item, f"{param}.{j}", role, max_image_bytes)
                 for j, item in enumerate(raw))


def _part(raw: Any, param: str, role: str, max_image_bytes: int) -> Part:
    if not isinstance(raw, dict):
        _fail(param, "Input should be a valid dictionary")
    if "type" not in raw:
        _fail(f"{param}.type", "is required")
    kind = _literal(raw["type"], f"{param}.type", ("text", "image_url"))
    if kind == "text":
        part = _object(raw, param, ("type", "text"), ("text",))
        return TextPart(_string(part["text"], f"{param}.text"))
    if role != "user":
        _fail(param, "images are accepted only in user messages")
    part = _object(raw, param, ("type", "image_url"), ("image_url",))
    image = _object(part["image_url"], f"{param}.image_url", ("url", "detail"), ("url",))
    if "detail" in image:
        # Not in ImagePart: only the value that equals leaving it out (both
        # providers' default) may be given, so that nothing asked is dropped.
        _literal(image["detail"], f"{param}.image_url.detail", ("auto",))
    url = _string(image["url"], f"{param}.image_url.url")
    return ImagePart(_image_url(url, param, max_image_bytes))


def _image_url(url: str, param: str, max_image_bytes: int) -> str:
    """An ``https://`` URL, or a ``data:image/<type>;base64,`` URL whose data is
    well-formed base64 of at most ``max_image_bytes`` bytes (BodyTooLarge over it)."""
    url_param = f"{param}.image_url.url"
    if url[:8].lower() == "https://":
        host = url[8:].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        if not host or any(char.isspace() or unicodedata.category(char) == "Cc"
                           for char in url):
            _fail(url_param, "must be a valid https:// URL")
        return url
    found = DATA_URL.fullmatch(url)
    if found is None:
        _fail(url_param, "must be an https:// URL or a data:image/<type>;base64,<data> URL")
    data = found.group(2)
    size = len(data) * 3 // 4 - (len(data) - len(data.rstrip("=")))
    if size > max_image_bytes:
        raise BodyTooLarge(f"{param}: the image is {size} bytes; at most {max_image_bytes} "
                           "are accepted", param)
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        _fail(url_param, "the data URL's base64 data is malformed")
    if not decoded:
        _fail(url_param, "the data URL holds no data")
    return url


def _tool_calls(raw: Any, param: str) -> tuple[ToolCall, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        _fail(param, "Input should be a valid list")
    calls: list[ToolCall] = []
    seen: dict[str, int] = {}
    for k, item in enumerate(raw):
        at = f"{param}.{k}"
        call = _object(item, at, ("id", "type", "function"), ("id", "type", "function"))
        call_id = _string(call["id"], f"{at}.id", empty=False)
        if call_id in seen:
            _fail(f"{at}.id", f"{call_id!r} repeats the id of {param}.{seen[call_id]}")
        seen[call_id] = k
        _literal(call["type"], f"{at}.type", ("function",))
        function = _object(call["function"], f"{at}.function", ("name", "arguments"),
                           ("name", "arguments"))
        calls.append(ToolCall(call_id, _string(function["name"], f"{at}.function.name",
                                               empty=False),
                              _string(function["arguments"], f"{at}.function.arguments")))
    return tuple(calls)


# -- tools and the other fields of the generation ---------------------------------------------

def _tools(raw: Any, max_tools: int, max_tools_bytes: int) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        _fail("tools", "Input should be a valid list")
    if len(raw) > max_tools:
        _fail("tools", "are not accepted here" if max_tools == 0
              else f"at most {max_tools} are accepted")
    tools: list[Tool] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        at = f"tools.{i}"
        if isinstance(item, dict) and "type" not in item:
            _fail(f"{at}.type", "is required")
        tool = _object(item, at, ("type", "function"), ("type", "function"))
        _literal(tool["type"], f"{at}.type", ("function",))
        function = _object(tool["function"], f"{at}.function",
                           ("name", "description", "parameters", "strict"), ("name",))
        name = _name(function["name"], f"{at}.function.name")
        if name in seen:
            _fail(f"{at}.function.name", f"{name!r} repeats tools.{seen[name]}")
        seen[name] = i
        parameters = function.get("parameters")
        if parameters is not None:
            parameters = _json_object(parameters, f"{at}.function.parameters")
        strict = function.get("strict")
        if strict is not None and not isinstance(strict, bool):
            _fail(f"{at}.function.strict", "Input should be a valid boolean")
        tools.append(Tool(name, _optional_string(function.get("description"),
                                                 f"{at}.function.description"), parameters,
                          strict))
    # Every value is JSON and shallow by now: its encoding cannot fail.
    size = len(json.dumps(raw, ensure_ascii=False, separators=(",", ":")).encode())
    if size > max_tools_bytes:
        raise BodyTooLarge(f"tools: {size} bytes of JSON; at most {max_tools_bytes} are "
                           "accepted", "tools")
    return tuple(tools)


def _name(value: Any, param: str) -> str:
    name = _string(value, param)
    if not NAME.fullmatch(name):
        _fail(param, "must be 1 to 64 characters of a-z A-Z 0-9 _ -")
    return name


def _tool_choice(raw: Any, tools: tuple[Tool, ...]) -> str | NamedTool | None:
    if raw is None:
        return None
    choice: str | NamedTool
    if isinstance(raw, dict):
        named = _object(raw, "tool_choice", ("type", "function"), ("type", "function"))
        _literal(named["type"], "tool_choice.type", ("function",))
        function = _object(named["function"], "tool_choice.function", ("name",), ("name",))
        choice = NamedTool(_string(function["name"], "tool_choice.function.name"))
    elif isinstance(raw, str) and raw in TOOL_CHOICES:
        choice = raw
    else:
        _fail("tool_choice", "Input should be 'auto', 'none', 'required' or "
              '{"type": "function", "function": {"name": ...}}')
    if not tools:
        _fail("tool_choice", "is given without tools")
    if isinstance(choice, NamedTool) and choice.name not in {tool.name for tool in tools}:
        _fail("tool_choice.function.name", f"{choice.name!r} is not one of the tools")
    return choice


def _reasoning(raw: Any) -> tuple[str | None, int | None]:
    if raw is None:
        return None, None
    reasoning = _object(raw, "reasoning", ("effort", "budget_tokens"))
    if not reasoning:
        _fail("reasoning", "give effort, budget_tokens or both")
    effort = budget = None
    if "effort" in reasoning:
        effort = _literal(reasoning["effort"], "reasoning.effort", REASONING_EFFORTS)
    if "budget_tokens" in reasoning:
        budget = reasoning["budget_tokens"]
        if not isinstance(budget, int) or isinstance(budget, bool):
            _fail("reasoning.budget_tokens", "Input should be a valid integer")
        if budget < 1:
            _fail("reasoning.budget_tokens", "Input should be greater than or equal to 1")
    return effort, budget


def _response_format(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        _fail("response_format", "Input should be a valid dictionary")
    if "type" not in raw:
        _fail("response_format.type", "is required")
    kind = _literal(raw["type"], "response_format.type", ("text", "json_object", "json_schema"))
    if kind != "json_schema":
        return _object(raw, "response_format", ("type",))
    _object(raw, "response_format", ("type", "json_schema"), ("json_schema",))
    at = "response_format.json_schema"
    spec = _object(raw["json_schema"], at, ("name", "description", "schema", "strict"),
                   ("name",))
    _name(spec["name"], f"{at}.name")
    _optional_string(spec.get("description"), f"{at}.description")
    if spec.get("schema") is not None:
        _json_object(spec["schema"], f"{at}.schema")
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        _fail(f"{at}.strict", "Input should be a valid boolean")
    return raw


def _stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (_string(raw, "stop", empty=False),)
    if not isinstance(raw, list):
        _fail("stop", "Input should be a string or a list of strings")
    if not 1 <= len(raw) <= MAX_STOP:
        _fail("stop", f"must be a list of 1 to {MAX_STOP} strings")
    return tuple(_string(item, f"stop.{i}", empty=False) for i, item in enumerate(raw))


# -- the rest --------------------------------------------------------------------------------

def _has_control(text: str) -> bool:
    """True if ``text`` has a C0/C1 control character (CR, LF, ESC, NEL...): a model
    name is logged and sent on, and such characters forge log lines."""
    return any(unicodedata.category(char) == "Cc" for char in text)


def _check_fallbacks(model: str, fallbacks: list[str], max_fallbacks: int) -> None:
    """A short list of distinct models: each fallback may cost provider requests."""
    if len(fallbacks) > max_fallbacks:
        if max_fallbacks == 0:
            raise InvalidBody("fallbacks: are not accepted here", "fallbacks")
        raise InvalidBody(f"fallbacks: at most {max_fallbacks} are accepted", "fallbacks")
    seen = {model}
    for i, fallback in enumerate(fallbacks):
        if fallback in seen:
            what = "the model" if fallback == model else "an earlier fallback"
            raise InvalidBody(f"fallbacks.{i}: {fallback!r} repeats {what}", f"fallbacks.{i}")
        seen.add(fallback)


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object (strict JSON: no NaN or Infinity), or InvalidBody."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidBody("the body is nested too deeply") from None
    except ValueError:
        raise InvalidBody("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidBody("the body must be a JSON object")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _first_error(exc: ValidationError) -> InvalidBody:
    error: Any = exc.errors(include_url=False, include_input=False)[0]
    location = [str(part) for part in error["loc"]]
    message = error["msg"]
    if "[key]" in location:  # a mapping's key (its value, in the location before it)
        location = location[:location.index("[key]") - 1]
        message = f"each key: {message[0].lower()}{message[1:]}"
    param = ".".join(location) if location else None
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "missing":
        message = "is required"
    if param is None:
        return InvalidBody(message.removeprefix("Value error, "))
    return InvalidBody(f"{param}: {message}", param)
