"""A Python client for the gateway: typed events, automatic resume, cancel.

    from sse_gateway_client import GatewayClient, Token, Done

    with GatewayClient("http://127.0.0.1:8000", api_key="sk-...") as client:
        with client.stream(prompt="Hello", model="openai/gpt-4o-mini") as chat:
            for event in chat:
                if isinstance(event, Token):
                    print(event.text, end="", flush=True)
        print(chat.terminal)  # Done(...), StreamError(...) or Cancelled(...)

A tool round trip: the stream assembles what the model streamed
(``chat.message``, as ``GET /v1/streams/<id>?include=message`` gives it) and
``chat.assistant_message()`` is the message to send back with the results:

    messages = [{"role": "user", "content": "What time is it?"}]
    with client.stream(messages=messages, model="demo/tools", tools=TOOLS) as chat:
        done = chat.result()
    if isinstance(done, Done) and done.finish_reason == "tool_calls":
        messages.append(chat.assistant_message())
        for call in chat.message["tool_calls"]:
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": run(call["function"])})
        with client.stream(messages=messages, model="demo/tools", tools=TOOLS) as chat:
            ...

Why it looks like this:

* **A stream outlives its connection.** The gateway keeps every event of a
  stream, numbered 0, 1, 2, ..., and lets a reader come back with
  ``Last-Event-ID``. So a connection that breaks (network error, read timeout,
  or a body that ends before ``done`` / ``error`` / ``cancelled``) is not a
  failed answer: ``ChatStream`` reconnects to ``GET /v1/streams/<id>/events``
  after the delay the server asked for (its ``retry:`` field), doubling it on
  each consecutive failure, and never yields an event twice (ids up to the last
  one seen are skipped). Only after ``max_retries`` reconnections in a row
  without a new event does it give up, with ``StreamInterrupted``. That is what
  a browser's ``EventSource`` does, minus its blind spots (it cannot read a
  4xx body and retries forever).
* **The client names the stream.** It sends its own random ``X-Stream-ID``
  (as random as the gateway's own), so ``stream_id`` is known before the first
  byte comes back: a ``cancel()`` (say on Ctrl-C) works even while the POST is
  under way, and a POST whose answer is lost after the gateway accepted it is
  picked up by a resume instead of running unseen.
* **Events are typed.** ``Start``, ``Token``, ``Reasoning``, ``Refusal``,
  ``ToolCall``, ``ToolCallDelta``, ``ToolCallDone``, ``Done``, ``StreamError``
  and ``Cancelled`` are frozen dataclasses, so callers ``match`` or
  ``isinstance`` on them instead of digging in JSON. Unknown event types (a
  newer gateway) are skipped. A failure *inside* a stream is an event
  (``StreamError``), as the gateway sends it; a request the gateway refuses
  raises ``GatewayError`` with its ``code``, ``message`` and ``Retry-After``.
* **Well-kept parts, no hand-written parser.** HTTP is ``httpx``; the
  event-stream format is parsed by ``httpx-sse`` (WHATWG rules). The one
  gateway event without an ``id:`` (``error``/``internal_error`` when its store
  is unreachable: the stream itself goes on) is recognised, and treated as a
  broken connection, i.e. resumed, exactly as the README advises.
* **Copyable.** This module imports nothing from ``app``, Flask or gevent: it
  can be vendored into any Python 3.11 program with ``httpx`` and ``httpx-sse``.
  It is synchronous and thread-safe for the one case that needs it:
  ``cancel()`` may be called from another thread while one thread iterates.

Timeouts: the read timeout doubles as a liveness check, since the gateway sends
``: ping`` after ``HEARTBEAT_S`` (default 15 s) of silence; keep it above that.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import random
import secrets
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, NotRequired, Self, TypeAlias, TypedDict

import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError

__all__ = [
    "Cancelled",
    "ChatStream",
    "ClientError",
    "Done",
    "Event",
    "GatewayClient",
    "GatewayError",
    "GatewayUnreachable",
    "Message",
    "Metrics",
    "ProtocolError",
    "Reasoning",
    "Refusal",
    "Start",
    "StreamError",
    "StreamInterrupted",
    "Terminal",
    "Token",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallDone",
    "Usage",
    "assistant_message",
]

DEFAULT_URL: Final = "http://127.0.0.1:8000"
# Connect, write and pool: 10 s. Read: longest silence tolerated on a stream
# (the gateway pings every HEARTBEAT_S, 15 s by default) or on a plain answer.
DEFAULT_TIMEOUT: Final = httpx.Timeout(10.0, read=60.0)
DEFAULT_RETRY_S: Final = 2.0  # until the server's `retry:` says otherwise
MAX_BACKOFF_S: Final = 30.0
# Statuses worth trying again on a resume; any other non-2xx is final.
_RETRY_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Start:
    """The gateway accepted the stream (always id 0)."""

    id: int
    stream_id: str
    model: str
    created: float


@dataclass(frozen=True)
class Token:
    """Output text. The texts of a stream's tokens concatenated are the answer, exactly."""

    id: int
    text: str


@dataclass(frozen=True)
class Reasoning:
    """Reasoning or thinking text; concatenated, the model's reasoning exactly."""

    id: int
    text: str


@dataclass(frozen=True)
class Refusal:
    """Text of a refusal; concatenated, the refusal exactly."""

    id: int
    text: str


@dataclass(frozen=True)
class ToolCall:
    """A tool call begins. ``index`` orders the calls of one answer; ``call_id`` is
    the call's own id (what a ``tool`` message's ``tool_call_id`` names)."""

    id: int
    index: int
    call_id: str
    name: str


@dataclass(frozen=True)
class ToolCallDelta:
    """The next fragment of call ``index``'s arguments (JSON text)."""

    id: int
    index: int
    arguments: str


@dataclass(frozen=True)
class ToolCallDone:
    """Call ``index`` is complete: ``arguments`` is its whole JSON text."""

    id: int
    index: int
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Usage:
    """Token counts; the cache and reasoning counts only when the provider reports them."""

    input_tokens: int | None
    output_tokens: int | None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclass(frozen=True)
class Metrics:
    ttft_ms: float | None
    duration_ms: float | None
    tokens_per_second: float | None


@dataclass(frozen=True)
class Done:
    """The model finished; ``model`` is the one that answered (maybe a fallback).

    ``finish_reason``: stop, length, tool_calls, content_filter, refusal or
    other; ``provider_finish_reason`` the provider's own word (None when it
    gave none). ``provider_data``: what the provider needs back to continue
    (e.g. Anthropic's signed thinking blocks), None when there is none.
    """

    id: int
    finish_reason: str | None
    model: str
    usage: Usage
    metrics: Metrics
    provider_finish_reason: str | None = None
    provider_data: dict[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class StreamError:
    """The stream failed (``upstream_timeout``, ``upstream_unavailable``, ...).

    ``retryable``: sending the same request again may succeed.
    """

    id: int
    code: str
    message: str
    retryable: bool
    provider: str | None = None


@dataclass(frozen=True)
class Cancelled:
    """The stream was stopped; ``reason``: "deleted", "client_disconnected" or "shutdown"."""

    id: int
    reason: str


Event: TypeAlias = (Start | Token | Reasoning | Refusal | ToolCall | ToolCallDelta
                    | ToolCallDone | Done | StreamError | Cancelled)
Terminal: TypeAlias = Done | StreamError | Cancelled


class Message(TypedDict):
    """One message of a request's ``messages``.

    ``content``: a string, or a list of parts (``{"type": "text", "text"}``,
    ``{"type": "image_url", "image_url": {"url"}}``); None on an assistant
    message that only calls tools. Assistant messages may carry
    ``tool_calls`` (``[{"id", "type": "function", "function": {"name",
    "arguments"}}]``) and the ``provider_data`` the gateway gave out; a
    ``tool`` message answers the call named by ``tool_call_id``.
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None
    tool_calls: NotRequired[list[dict[str, Any]]]
    tool_call_id: NotRequired[str]
    provider_data: NotRequired[dict[str, Any]]


def assistant_message(message: Mapping[str, Any]) -> Message:
    """The next turn's assistant message from an assembled one (``ChatStream.message``,
    or the ``message`` of ``GET /v1/streams/<id>?include=message``).

    ``{"role": "assistant", "content": text or None}``, with ``tool_calls`` and
    ``provider_data`` only when there are any: what ``POST /v1/streams``
    accepts back. Reasoning is not sent back (what a provider needs of it is
    in ``provider_data``).
    """
    content = message.get("content")
    next_turn: Message = {"role": "assistant", "content": content or None}
    calls = message.get("tool_calls")
    if calls:
        next_turn["tool_calls"] = [
            {"id": c["id"], "type": "function",
             "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}}
            for c in calls]
    if message.get("provider_data"):
        next_turn["provider_data"] = copy.deepcopy(message["provider_data"])
    return next_turn


# --------------------------------------------------------------------------- errors


class ClientError(Exception):
    """Base class of everything this module raises."""


class GatewayError(ClientError):
    """The gateway answered with a non-2xx status: its ``{"error": {...}}`` body."""

    def __init__(self, status: int, code: str, message: str, *,
                 retry_after: float | None = None, param: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.param = param

    @property
    def retryable(self) -> bool:
        """The same request may succeed later (after ``retry_after`` if given)."""
        return self.status in _RETRY_STATUSES

    @classmethod
    def from_response(cls, response: httpx.Response) -> GatewayError:
        """From a response whose body has been read."""
        code, message, param = f"http_{response.status_code}", response.reason_phrase, None
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
            param = error.get("param")
        except (ValueError, KeyError, TypeError):  # not the gateway's body (a proxy's page?)
            text = response.text.strip()
            if text:
                message = text[:200]
        return cls(response.status_code, code, message,
                   retry_after=_seconds(response.headers.get("Retry-After")), param=param)


class GatewayUnreachable(ClientError):
    """No answer from the gateway (connection refused, reset, timed out); see ``__cause__``."""


class StreamInterrupted(ClientError):
    """The connection broke and ``max_retries`` reconnections in a row brought nothing.

    The stream may still be running on the gateway: ``stream_id`` and
    ``last_event_id`` are what a later ``GatewayClient.resume`` needs. The last
    failure is the ``__cause__``.
    """

    def __init__(self, stream_id: str, last_event_id: int | None, attempts: int,
                 reason: str) -> None:
        super().__init__(f"stream {stream_id}: gave up after {attempts} reconnection "
                         f"attempt(s); last event id {last_event_id}; last failure: {reason}")
        self.stream_id = stream_id
        self.last_event_id = last_event_id
        self.attempts = attempts


class ProtocolError(ClientError):
    """The answer is not the gateway's event stream (wrong content type, malformed event)."""


# --------------------------------------------------------------------------- client


class GatewayClient:
    """Talks to one gateway. Reuse it (it pools connections); close it when done.

    ``http_client`` replaces the ``httpx.Client`` it would make (proxies, TLS
    settings, test transports); ``close()`` leaves a given one open.
    ``max_retries``: reconnections in a row without a new event before a
    stream gives up. ``max_backoff_s`` caps the wait between two of them.
    """

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT, max_retries: int = 5,
                 max_backoff_s: float = MAX_BACKOFF_S,
                 http_client: httpx.Client | None = None) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.max_backoff_s = max_backoff_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client(timeout=timeout)

    # streams

    def stream(self, prompt: str | None = None, *, messages: Sequence[Message] | None = None,
               model: str = "demo/echo", max_tokens: int | None = None,
               temperature: float | None = None, fallbacks: Sequence[str] | None = None,
               resume_grace_s: float | None = None,
               stream_id: str | None = None,
               tools: Sequence[Mapping[str, Any]] | None = None,
               tool_choice: str | Mapping[str, Any] | None = None,
               reasoning: Mapping[str, Any] | None = None,
               response_format: Mapping[str, Any] | None = None,
               stop: str | Sequence[str] | None = None, top_p: float | None = None,
               seed: int | None = None,
               metadata: Mapping[str, str] | None = None) -> ChatStream:
        """Start a stream (``POST /v1/streams``); return it once the gateway accepted it.

        Give ``prompt`` or ``messages``. Iterate over the result for its events.
        ``tools``, ``tool_choice``, ``reasoning``, ``response_format``,
        ``stop``, ``top_p``, ``seed`` and ``metadata`` go into the body as the
        gateway's contract ("Richer requests") describes them; None leaves one out.
        Raises ``GatewayError`` when the gateway refuses (``unknown_model``,
        ``invalid_request``, ``unauthorized``, ``rate_limited``, ``overloaded``:
        nothing runs then; ``.retryable`` and ``.retry_after`` say whether and
        when to try again) and ``GatewayUnreachable`` when it cannot be reached.
        ``stream_id`` (16-128 of ``A-Za-z0-9_-``): default, a random one.
        """
        if (prompt is None) == (messages is None):
            raise ValueError("give exactly one of prompt and messages")
        body: dict[str, Any] = {"model": model}
        if messages is not None:
            body["messages"] = [dict(m) for m in messages]
        else:
            body["prompt"] = prompt
        optional = {"max_tokens": max_tokens, "temperature": temperature,
                    "resume_grace_s": resume_grace_s,
                    "fallbacks": None if fallbacks is None else list(fallbacks),
                    "tools": None if tools is None else [dict(t) for t in tools],
                    "tool_choice": tool_choice if isinstance(tool_choice, str | None)
                    else dict(tool_choice),
                    "reasoning": None if reasoning is None else dict(reasoning),
                    "response_format": None if response_format is None
                    else dict(response_format),
                    "stop": stop if isinstance(stop, str | None) else list(stop),
                    "top_p": top_p, "seed": seed,
                    "metadata": None if metadata is None else dict(metadata)}
        body.update({k: v for k, v in optional.items() if v is not None})
        chat = ChatStream(self, stream_id or secrets.token_urlsafe(18), model=model)
        chat._start(body)
        return chat

    def resume(self, stream_id: str, last_event_id: int | None = None) -> ChatStream:
        """Follow an existing stream, from here or elsewhere, after ``last_event_id``.

        No id: from its first event. Raises ``GatewayError`` before returning:
        404 ``not_found`` (unknown, expired, or another key's), 410
        ``position_gone`` (events no longer kept).
        """
        chat = ChatStream(self, stream_id, last_event_id=last_event_id)
        chat._connection = _Connection(chat._open_events())
        return chat

    # plain requests

    def status(self, stream_id: str) -> dict[str, Any]:
        """``GET /v1/streams/<id>``: status, model, last_event_id, usage."""
        return self._json("GET", f"/v1/streams/{stream_id}")

    def cancel(self, stream_id: str) -> dict[str, Any]:
        """``DELETE /v1/streams/<id>``: the status body ("running" while it stops)."""
        return self._json("DELETE", f"/v1/streams/{stream_id}")

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: the models this gateway serves, with ``available``."""
        models = self._json("GET", "/v1/models").get("data")
        return list(models) if isinstance(models, list) else []

    # life cycle

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # internals

    def _json(self, method: str, path: str) -> dict[str, Any]:
        try:
            response = self._http.request(method, self.base_url + path, headers=self._headers)
        except httpx.TransportError as exc:
            raise GatewayUnreachable(f"{method} {path}: {_describe(exc)}") from exc
        if not response.is_success:
            raise GatewayError.from_response(response)
        body = response.json()
        if not isinstance(body, dict):
            raise ProtocolError(f"{method} {path}: expected a JSON object")
        return body

    def _open_sse(self, method: str, path: str, *, headers: Mapping[str, str],
                  body: Any = None) -> httpx.Response:
        """Send a request; its streaming response once it is a 2xx event stream.

        Raises ``GatewayError`` and ``ProtocolError``; ``httpx.TransportError``
        is left to the caller, which knows whether to resume.
        """
        request = self._http.build_request(
            method, self.base_url + path, json=body,
            headers={**self._headers, "Accept": "text/event-stream",
                     "Cache-Control": "no-store", **headers})
        response = self._http.send(request, stream=True)
        try:
            if not response.is_success:
                response.read()
                raise GatewayError.from_response(response)
            kind = response.headers.get("Content-Type", "").partition(";")[0].strip()
            if kind != "text/event-stream":
                raise ProtocolError(f"{method} {path}: expected text/event-stream, got {kind!r}")
        except BaseException:
            response.close()
            raise
        return response


# --------------------------------------------------------------------------- one stream


@dataclass
class _Connection:
    """One HTTP response of a stream, and the last ``id:`` its parser saw."""

    response: httpx.Response
    # httpx-sse, as the WHATWG rules say, gives an event without an id: line the
    # last id seen on the connection: an unchanged id means "no id: line".
    previous_id: str = ""


class _Broken(Exception):
    """The current connection is of no more use; resume on a new one."""


@dataclass(eq=False)
class ChatStream:
    """The events of one stream, across as many connections as it takes.

    Made by ``GatewayClient.stream`` and ``GatewayClient.resume``. Iterate over
    it (once) for ``Event`` objects; iteration stops after the terminal event
    (``Done``, ``StreamError`` or ``Cancelled``), also kept as ``terminal``.
    ``text`` is the answer so far (its ``Token`` texts), ``reasoning`` and
    ``refusal`` the same for those kinds; ``message`` the whole answer
    assembled, tool calls included, and ``assistant_message()`` the message
    to send back in the next turn. As a context manager, leaving the block
    before the end cancels the stream (else the gateway would let it run for
    its resume grace); ``close(cancel=False)`` only hangs up.
    """

    client: GatewayClient = field(repr=False)
    stream_id: str
    last_event_id: int | None = None  # the last event id received (resume position)
    text: str = ""
    reasoning: str = ""
    refusal: str = ""
    model: str | None = None  # the model asked for, then the one that answered
    terminal: Terminal | None = None
    reconnects: int = 0  # reconnection attempts, successful or not
    retry_s: float = DEFAULT_RETRY_S  # the server's `retry:`, in seconds
    _connection: _Connection | None = field(default=None, repr=False)
    _lost_post: Exception | None = field(default=None, repr=False)
    _events: Generator[Event, None, None] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _closed: bool = field(default=False, repr=False)
    # Tool calls by index: [call id, name, argument fragments]; done's provider_data.
    _calls: dict[int, list[Any]] = field(default_factory=dict, repr=False)
    _provider_data: dict[str, Any] | None = field(default=None, repr=False)

    # the answer

    @property
    def message(self) -> dict[str, Any]:
        """The answer assembled from the events so far, as the status route's
        ``?include=message`` gives it: ``{"role": "assistant", "content",
        "tool_calls" ([{"id", "type": "function", "function": {"name",
        "arguments"}}] in index order, or None), "reasoning" (or None),
        "refusal" (or None), "provider_data" (or None)}``. A new dict each time."""
        calls = [{"id": call_id, "type": "function",
                  "function": {"name": name, "arguments": "".join(fragments)}}
                 for _, (call_id, name, fragments) in sorted(self._calls.items())]
        return {"role": "assistant", "content": self.text, "tool_calls": calls or None,
                "reasoning": self.reasoning or None, "refusal": self.refusal or None,
                "provider_data": copy.deepcopy(self._provider_data)}

    def assistant_message(self) -> Message:
        """The next turn's assistant message (see the module's ``assistant_message``)."""
        return assistant_message(self.message)

    # iteration

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        if self._events is None:
            self._events = self._run()
        return next(self._events)

    def result(self) -> Terminal:
        """Read the rest of the stream; its terminal event."""
        for _ in self:
            pass
        if self.terminal is None:
            raise ClientError(f"stream {self.stream_id} was closed before its end")
        return self.terminal

    # control

    def cancel(self) -> dict[str, Any]:
        """``DELETE`` the stream: the provider request is closed at once.

        Returns the gateway's status body. Keep iterating to read the
        ``Cancelled`` event that ends the stream (tokens already on their way
        come first); if the stream had ended already, nothing changes. Safe to
        call from another thread while one iterates.
        """
        return self.client.cancel(self.stream_id)

    def close(self, cancel: bool = True) -> None:
        """Hang up; with ``cancel``, first ``DELETE`` the stream if it has not ended.

        A failed ``DELETE`` is ignored: the gateway ends a stream that nobody
        follows after its resume grace anyway.
        """
        if cancel and self.terminal is None:
            with contextlib.suppress(ClientError):
                self.cancel()
        self._closed = True
        self._hang_up()
        if self._events is not None and \
                inspect.getgeneratorstate(self._events) != inspect.GEN_RUNNING:
            self._events.close()  # running: another thread iterates; it stops on its own

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # connections

    def _start(self, body: dict[str, Any]) -> None:
        try:
            response = self.client._open_sse("POST", "/v1/streams", body=body,
                                              headers={"X-Stream-ID": self.stream_id})
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as exc:
            raise GatewayUnreachable(f"POST /v1/streams: {_describe(exc)}") from exc
        except httpx.TransportError as exc:
            # The gateway may have accepted the stream before its answer was lost:
            # the iteration finds out by resuming (a 404 there: it never ran).
            self._lost_post = exc
            return
        self._connection = _Connection(response)

    def _open_events(self) -> httpx.Response:
        position = {} if self.last_event_id is None else {"Last-Event-ID": str(self.last_event_id)}
        return self.client._open_sse("GET", f"/v1/streams/{self.stream_id}/events",
                                     headers=position)

    def _hang_up(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.response.close()

    # the loop

    def _run(self) -> Generator[Event, None, None]:
        failures = 0  # reconnections in a row that brought no new event
        wait = 0.0  # at least this long before the next one (a Retry-After)
        cause: Exception | None = self._lost_post
        while not self._closed:
            connection = self._connection
            if connection is None:
                failures += 1
                if failures > self.client.max_retries:
                    raise StreamInterrupted(self.stream_id, self.last_event_id, failures - 1,
                                            _describe(cause)) from cause
                time.sleep(max(wait, self._backoff(failures)))
                wait = 0.0
                if self._closed:
                    return
                self.reconnects += 1
                try:
                    connection = _Connection(self._open_events())
                except GatewayError as exc:
                    if exc.status == 404 and self._lost_post is not None:
                        raise GatewayUnreachable(
                            f"POST /v1/streams: {_describe(self._lost_post)}; the stream "
                            "was never created") from self._lost_post
                    if not exc.retryable:
                        raise
                    cause, wait = exc, min(exc.retry_after or 0.0, self.client.max_backoff_s)
                    continue
                except httpx.TransportError as exc:
                    cause = exc
                    continue
                with self._lock:
                    self._connection = connection
                if self._closed:  # close() came while this connection opened
                    self._hang_up()
                    return
            try:
                for event in self._read(connection):
                    failures, self._lost_post = 0, None
                    yield event
                    if self.terminal is not None:
                        return
                cause = _Broken("the response ended before the stream did")
            except (_Broken, httpx.TransportError) as exc:
                cause = exc
            except Exception:
                if self._closed:
                    return  # close() from another thread cut the read short
                raise
            finally:
                self._hang_up()

    def _read(self, connection: _Connection) -> Iterator[Event]:
        try:
            for sse in EventSource(connection.response).iter_sse():
                if sse.retry is not None:
                    self.retry_s = sse.retry / 1000
                if sse.id == connection.previous_id:  # an event without an id: line
                    if sse.event == "error":  # the gateway lost its store; the stream goes on
                        raise _Broken(_message(sse))
                    continue  # the `retry:` block
                connection.previous_id = sse.id
                event_id = _event_id(sse)
                if self.last_event_id is not None and event_id <= self.last_event_id:
                    continue  # received before a reconnection
                self.last_event_id = event_id
                event = self._typed(event_id, sse)
                if event is not None:
                    yield event
        except SSEError as exc:
            raise ProtocolError(str(exc)) from exc

    def _typed(self, event_id: int, sse: ServerSentEvent) -> Event | None:
        try:
            event = _parse(event_id, sse.event, sse.json())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProtocolError(f"stream {self.stream_id}: malformed {sse.event!r} event "
                                f"{event_id}: {sse.data[:200]!r}") from exc
        match event:
            case Token(text=text):
                self.text += text
            case Reasoning(text=text):
                self.reasoning += text
            case Refusal(text=text):
                self.refusal += text
            case ToolCall(index=index, call_id=call_id, name=name):
                self._calls[index] = [call_id, name, []]
            case ToolCallDelta(index=index, arguments=arguments):
                self._call(index)[2].append(arguments)
            case ToolCallDone(index=index, call_id=call_id, name=name, arguments=arguments):
                self._calls[index] = [call_id, name, [arguments]]
            case Start(model=model):
                self.model = model
            case Done(model=model, provider_data=provider_data):
                self.model, self.terminal = model, event
                self._provider_data = provider_data or None
            case StreamError() | Cancelled():
                self.terminal = event
        return event

    def _call(self, index: int) -> list[Any]:
        """Call ``index``; one first seen by a fragment (a stream followed from a later
        position) has no id or name until its ``tool_call_done``."""
        call = self._calls.get(index)
        if call is None:
            call = self._calls[index] = [None, None, []]
        return call

    def _backoff(self, failures: int) -> float:
        """The server's ``retry:``, doubled per failure in a row, capped, plus 0-25 % jitter."""
        delay = min(self.client.max_backoff_s, self.retry_s * 2.0 ** (failures - 1))
        return delay * random.uniform(1.0, 1.25)


def _parse(event_id: int, kind: str, data: Any) -> Event | None:
    if kind == "token":
        return Token(event_id, str(data["content"]))
    if kind == "start":
        return Start(event_id, str(data["stream_id"]), str(data["model"]), float(data["created"]))
    if kind == "reasoning":
        return Reasoning(event_id, str(data["content"]))
    if kind == "refusal":
        return Refusal(event_id, str(data["content"]))
    if kind == "tool_call":
        return ToolCall(event_id, _index(data), str(data["id"]), str(data["name"]))
    if kind == "tool_call_delta":
        return ToolCallDelta(event_id, _index(data), str(data["arguments"]))
    if kind == "tool_call_done":
        return ToolCallDone(event_id, _index(data), str(data["id"]), str(data["name"]),
                            str(data["arguments"]))
    if kind == "done":
        usage, metrics = data.get("usage") or {}, data.get("metrics") or {}
        provider_data = data.get("provider_data")
        if provider_data is not None and not isinstance(provider_data, dict):
            raise TypeError("provider_data is not an object")
        return Done(event_id, data.get("finish_reason"), str(data["model"]),
                    Usage(usage.get("input_tokens"), usage.get("output_tokens"),
                          usage.get("cache_read_input_tokens"),
                          usage.get("cache_creation_input_tokens"),
                          usage.get("reasoning_tokens")),
                    Metrics(metrics.get("ttft_ms"), metrics.get("duration_ms"),
                            metrics.get("tokens_per_second")),
                    data.get("provider_finish_reason"), provider_data)
    if kind == "error":
        return StreamError(event_id, str(data["code"]), str(data["message"]),
                           bool(data.get("retryable", False)), data.get("provider"))
    if kind == "cancelled":
        return Cancelled(event_id, str(data["reason"]))
    return None  # a kind of event this client does not know (a newer gateway): skipped


def _index(data: Any) -> int:
    index = data["index"]
    if type(index) is not int or index < 0:
        raise ValueError(f"index {index!r} is not a call's index")
    return index


def _event_id(sse: ServerSentEvent) -> int:
    try:
        return int(sse.id)
    except ValueError:
        raise ProtocolError(f"event {sse.event!r} has a non-numeric id {sse.id!r}") from None


def _message(sse: ServerSentEvent) -> str:
    try:
        return f"{sse.json()['code']}: {sse.json()['message']}"
    except (ValueError, KeyError, TypeError):
        return f"an error event without an id: {sse.data[:200]!r}"


def _seconds(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds (the gateway never sends the HTTP-date form)."""
    try:
        return None if value is None else max(0.0, float(value))
    except ValueError:
        return None


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "the connection broke"
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, ClientError | _Broken) else str(exc)
