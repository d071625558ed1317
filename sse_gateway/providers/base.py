"""What every provider adapter takes, yields and raises.

An adapter turns one ``ChatRequest`` into an iterator of plain deltas (output:
``TextDelta``, ``ReasoningDelta``, ``RefusalDelta``, ``ToolCallStart``,
``ToolCallDelta``, ``ToolCallEnd``; news: ``Usage``, ``Finished``,
``ProviderData``, ``Unrelayed``) and translates its SDK's exceptions at
the boundary into one tree, so nothing above this package knows an SDK:

    ProviderError                 code                   retryable
     ├── UpstreamRateLimited       upstream_rate_limited  yes  (429; keeps retry_after)
     ├── UpstreamTimeout           upstream_timeout       yes
     ├── UpstreamUnavailable       upstream_unavailable   yes  (connection lost, 5xx, 529)
     ├── UpstreamAuth              upstream_auth          no   (401, 403)
     ├── UpstreamBadRequest        upstream_bad_request   no   (400, 404, 413, 422)
     └── UpstreamError             upstream_error         yes  (anything else, a truncated stream)

The iterator is a generator: closing it (or killing the greenlet that runs it)
closes the provider's HTTP response in the adapter's ``finally``.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True)
class TextPart:
    """A text part of a message's content."""

    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image part: an ``https://`` URL or a ``data:image/...;base64,`` URL."""

    url: str


Part = TextPart | ImagePart


@dataclass(frozen=True)
class ToolCall:
    """A call the assistant made, as a client sends it back (OpenAI's shape)."""

    id: str
    name: str
    arguments: str  # the JSON text, as the model wrote it


@dataclass(frozen=True)
class Message:
    """One message of the conversation, provider-neutral.

    ``content`` is a string or a tuple of parts (user messages may hold
    images). Assistant messages may carry ``tool_calls``, a ``refusal`` and the
    ``provider_data`` the gateway gave out for them (e.g. Anthropic's signed
    thinking blocks); tool messages carry ``tool_call_id``.
    """

    role: str  # system, user, assistant or tool
    content: str | tuple[Part, ...]
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    refusal: str | None = None
    provider_data: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        """The text of the content (its text parts joined, images left out)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


@dataclass(frozen=True)
class Tool:
    """A function the model may call."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema object
    strict: bool | None = None  # OpenAI's structured-outputs flag (None: not given)


@dataclass(frozen=True)
class NamedTool:
    """``tool_choice`` naming one function the model must call."""

    name: str


@dataclass(frozen=True)
class ChatRequest:
    """One generation, as the provider will be asked for it.

    ``tool_choice`` is "auto", "none", "required", or a tool's name wrapped in
    ``NamedTool``. ``reasoning_effort`` is for OpenAI-compatible reasoning
    models, ``reasoning_budget`` for Anthropic extended thinking.
    ``response_format`` is OpenAI's object, unchanged.
    """

    model: str  # the provider's own model name (after 'provider/')
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: str | NamedTool | None = None
    reasoning_effort: str | None = None
    reasoning_budget: int | None = None
    response_format: dict[str, Any] | None = None
    stop: tuple[str, ...] = ()
    top_p: float | None = None
    seed: int | None = None


class Unsupported(ValueError):
    """A provider cannot honour a request field; ``param`` names it (answered 400)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


class Output:
    """A delta that is part of the answer, as opposed to news about it (usage, finish).

    The one definition of output: the first one answers the request (no retry
    or fallback after it), ends the time-to-first-token wait, and each one
    restarts the silence clock. Text, reasoning, refusals and every piece of a
    tool call are output.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class TextDelta(Output):
    """Text of the answer."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta(Output):
    """Reasoning or thinking text."""

    text: str


@dataclass(frozen=True, slots=True)
class RefusalDelta(Output):
    """Text of a refusal."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart(Output):
    """A tool call begins. ``index`` is the gateway's: 0, 1, ... in order of appearance."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta(Output):
    """The next fragment of a started call's arguments (JSON text)."""

    index: int
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCallEnd(Output):
    """A started call is complete (its arguments are all out)."""

    index: int


@dataclass(frozen=True)
class Usage:
    """Token counts as the provider reports them; a later report's figures replace
    earlier ones, None keeps them."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclass(frozen=True)
class Finished:
    """The provider's end of the answer.

    ``reason`` is normalized: stop, length, tool_calls, content_filter,
    refusal or other; ``provider_reason`` is the provider's own word (None
    when it gave none: the stream ended with its end marker only).
    """

    reason: str
    provider_reason: str | None = None


@dataclass(frozen=True)
class ProviderData:
    """What the provider needs back to continue from this answer, e.g. one of
    Anthropic's signed thinking blocks: given to the client in ``done``."""

    provider: str
    key: str  # the list under ``provider_data[provider]`` it is appended to
    item: dict[str, Any]


@dataclass(frozen=True)
class Unrelayed:
    """Something the provider sent that the gateway does not relay (citations,
    logprobs, a server tool's block...): counted, and named in the end log line."""

    what: str


Delta = (TextDelta | ReasoningDelta | RefusalDelta | ToolCallStart | ToolCallDelta
         | ToolCallEnd | Usage | Finished | ProviderData | Unrelayed)

# The normalized finish reasons (``done.finish_reason``).
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "refusal",
                            "other"})


class ProviderError(Exception):
    """A provider failed; ``code`` and ``retryable`` go into the ``error`` event."""

    code: ClassVar[str] = "upstream_error"
    retryable: ClassVar[bool] = True

    def __init__(self, message: str, *, provider: str, status_code: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status_code = status_code
        self.retry_after = retry_after


class UpstreamRateLimited(ProviderError):
    code = "upstream_rate_limited"


class UpstreamTimeout(ProviderError):
    code = "upstream_timeout"


class UpstreamUnavailable(ProviderError):
    code = "upstream_unavailable"


class UpstreamAuth(ProviderError):
    code, retryable = "upstream_auth", False


class UpstreamBadRequest(ProviderError):
    code, retryable = "upstream_bad_request", False


class UpstreamError(ProviderError):
    code = "upstream_error"


def error_for_status(status: int) -> type[ProviderError]:
    """The error class for an HTTP status a provider answered with."""
    if status == 429:
        return UpstreamRateLimited
    if status in (401, 403):
        return UpstreamAuth
    if status in (400, 404, 413, 422):
        return UpstreamBadRequest
    if status == 408:
        return UpstreamTimeout
    if status >= 500:  # 529 is Anthropic's "overloaded"
        return UpstreamUnavailable
    return UpstreamError


def status_message(provider: str, status: int) -> str:
    """A message for the client that says what happened and leaks nothing of the body."""
    what = {
        400: "rejected the request as invalid",
        401: "rejected the gateway's API key",
        403: "refused access with the gateway's API key",
        404: "does not know this model or endpoint",
        408: "timed out",
        413: "found the request too large",
        422: "could not process the request",
        429: "is rate limiting the gateway",
        529: "is overloaded",
    }.get(status, "failed" if status >= 500 else "answered with an unexpected status")
    return f"{provider} {what} (HTTP {status})"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds (dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class Provider(Protocol):
    """One provider: a name, whether it can serve, and streaming."""

    name: str

    @property
    def available(self) -> bool:
        """True when the provider is configured (its key is set)."""
        ...

    def check(self, request: ChatRequest) -> None:
        """Raise Unsupported naming the first field this provider cannot honour
        (called before the stream starts, for the model and each fallback)."""
        ...

    def stream(self, request: ChatRequest) -> Generator[Delta, None, None]:
        """Yield the deltas of one generation; raise ProviderError on failure."""
        ...

    def close(self) -> None:
        """Release what the provider holds (its SDK clients' connection pools)."""
        ...


_ERROR_TYPES: dict[str, type[ProviderError]] = {
    "rate_limit_error": UpstreamRateLimited,
    "rate_limit_exceeded": UpstreamRateLimited,
    "overloaded_error": UpstreamUnavailable,
    "api_error": UpstreamUnavailable,
    "server_error": UpstreamUnavailable,
    "timeout_error": UpstreamTimeout,
    "authentication_error": UpstreamAuth,
    "permission_error": UpstreamAuth,
    "invalid_request_error": UpstreamBadRequest,
}


def error_for_event(provider: str, error_type: str | None) -> ProviderError:
    """The error for an error event a provider sent in the middle of a stream.

    The provider's type picks the class (and so the code); its text is not
    repeated to the client: it is the provider's to choose, any length or content.
    """
    cls = _ERROR_TYPES.get(error_type or "", UpstreamError)
    return cls(f"{provider} reported an error during the stream", provider=provider)


def error_type_of(body: object) -> str | None:
    """The ``type`` (or ``code``) of an error body in either provider's format."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            value = inner.get("type") or inner.get("code")
            return value if isinstance(value, str) else None
    return None
