"""Check a ``POST /v1/streams`` body and turn it into plain values.

Strict types (``"5"`` is not a number, ``true`` is not an integer), unknown
fields refused (a typo such as ``max_token`` should not be silently ignored),
and one clear message naming the first offending field.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sse_gateway.providers.base import ChatRequest, Message

# The metadata a stream keeps: a few short strings (contract, "Richer requests").
MAX_METADATA_ITEMS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
# A client's own stream id: a URL path segment and a header value as it is, and
# no "." (a broker key is "<owner>.<id>": an id with one could name another
# owner's key).
STREAM_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")


class InvalidBody(ValueError):
    """The body is not acceptable; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class StreamRequest:
    """A validated request to start a stream."""

    model: str
    messages: tuple[Message, ...]
    max_tokens: int | None
    temperature: float | None
    fallbacks: tuple[str, ...]
    resume_grace_s: float | None
    metadata: dict[str, str] = field(default_factory=dict)
    detach: bool = False  # start with no reader (answered at once, read later)

    def chat(self, provider_model: str) -> ChatRequest:
        return ChatRequest(provider_model, self.messages, self.max_tokens, self.temperature)


class _Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    model: Annotated[str, Field(min_length=3, max_length=256)]
    messages: list[_Message] | None = None
    prompt: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
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
                         max_fallbacks: int) -> StreamRequest:
    """Validate a request body (JSON text, or its value); raise InvalidBody with a
    message for the client."""
    if isinstance(raw, Mapping):
        data: Any = dict(raw)
    else:
        try:
            data = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise InvalidBody("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidBody("the body must be a JSON object")
    try:
        body = _Body.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc) from None
    for param, model in (("model", body.model),
                         *((f"fallbacks.{i}", m) for i, m in enumerate(body.fallbacks))):
        if _has_control(model):
            raise InvalidBody(f"{param}: must not contain control characters", param)
    if body.messages is not None:
        if not body.messages:
            raise InvalidBody("messages: must be a non-empty list", "messages")
        if len(body.messages) > max_messages:
            raise InvalidBody(f"messages: at most {max_messages} are accepted", "messages")
        messages = tuple(Message(m.role, m.content) for m in body.messages)
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
    return StreamRequest(body.model, messages, body.max_tokens, body.temperature,
                         tuple(body.fallbacks), body.resume_grace_s, dict(body.metadata),
                         body.detach)


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
