"""Stream chat completions through the official ``openai`` SDK.

Serves OpenAI itself and every OpenAI-compatible server (vLLM, Ollama,
DeepSeek, Groq, Mistral, xAI, Azure, OpenRouter...) reached through
``OPENAI_BASE_URL``. Usage is asked for in the stream
(``stream_options.include_usage``) so ``done`` can report it. The body is
built here as plain JSON and the response read raw (see ``providers.sdk``):
chat-completion chunks, then ``[DONE]``.

What the servers send differs more than their common name suggests; the
shapes read here are the recorded ones (tests/recordings/openai/):

- text in ``delta.content``, a string, or Mistral's list of parts
  (``{"type": "text"}``, ``{"type": "thinking", "thinking": [text parts]}``);
- reasoning in ``delta.reasoning_content`` (DeepSeek, xAI, vLLM) or
  ``delta.reasoning`` (Groq, OpenRouter, newer vLLM), refusals in
  ``delta.refusal``;
- tool calls in pieces keyed by a provider ``index``: the id and name usually
  in the first piece, but ids may repeat as ``""``, names as ``""``, a whole
  call may come in one piece, and some servers number every call 0 and tell
  them apart by id only;
- chunks with no choices (Azure's prompt filter results, the usage chunk),
  choices with no delta, usage on the finish chunk, in a usage-only chunk or in
  Groq's ``x_groq.usage``;
- a ``[DONE]`` with no ``finish_reason`` before it (OpenRouter).

Anything else a chunk carries with a value (logprobs, annotations, Azure's
content filter results, citations...) is not relayed, and is named in an
``Unrelayed`` so the stream's end log line says so.

The hot path is a plain text chunk: it is recognised by its keys and turned
into a ``TextDelta`` without anything else (``_deltas``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Generator, Iterator
from typing import Any

import httpx2
import openai

from sse_gateway.providers.base import (
    ChatRequest,
    Delta,
    Finished,
    ImagePart,
    Message,
    NamedTool,
    Part,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
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

# The keys a chunk, a choice and a delta may carry that hold nothing more to
# relay than what is read here (ids, timestamps, padding, the usage...). Any
# other key with a value is named in an Unrelayed.
CHUNK_KEYS = frozenset({"id", "object", "created", "model", "system_fingerprint",
                        "service_tier", "usage", "choices", "obfuscation", "p", "x_groq",
                        "provider"})  # OpenRouter: which upstream answered
CHOICE_KEYS = frozenset({"index", "delta", "finish_reason", "logprobs", "native_finish_reason"})
DELTA_KEYS = frozenset({"role", "content", "refusal", "reasoning_content", "reasoning",
                        "reasoning_details", "tool_calls", "function_call",
                        "index"})  # a copy of the choice's index (the GLM recording)

# finish_reason in the gateway's vocabulary; any other word is "other".
FINISH_REASONS = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
                  "content_filter": "content_filter", "function_call": "tool_calls"}
_LEGACY_CALL = "function_call"  # the provider index of a legacy ``function_call``


class OpenAIProvider:
    """The ``openai/<model>`` provider; SDK clients built once per process, reused."""

    name = "openai"

    def __init__(self, *, api_key: str, base_url: str, max_connections: int,
                 connect_timeout: float) -> None:
        self._configured = bool(api_key or base_url)
        # A local OpenAI-compatible server usually needs no key, but the SDK
        # refuses to start without one.
        self._clients = ClientPools(lambda http: openai.OpenAI(
            api_key=api_key or "unused",
            base_url=base_url or None,
            max_retries=0,  # retries are the gateway's, before the first token only
            **http,
        ), openai.DefaultHttpxClient, max_connections=max_connections,
            connect_timeout=connect_timeout)

    @property
    def available(self) -> bool:
        return self._configured

    def check(self, request: ChatRequest) -> None:
        """Every field is honoured but a reasoning budget on its own: chat completions
        take an effort (with both, the effort is sent and the budget left out)."""
        if request.reasoning_budget is not None and request.reasoning_effort is None:
            raise Unsupported("reasoning.budget_tokens",
                              "OpenAI-compatible models take reasoning.effort "
                              "(low, medium or high), not a token budget")

    def stream(self, request: ChatRequest) -> Generator[Delta, None, None]:
        return guarded(self.name, openai, self._clients.next(), "/chat/completions",
                       request_body(request), self._deltas)

    def _deltas(self, response: httpx2.Response) -> Iterator[Delta]:
        """The deltas of one response body.

        A plain text chunk (one choice with the usual four keys, a delta with
        only ``content``, a string; no usage; no key this adapter does not
        know) is answered here at once: that is nearly every chunk of most
        answers, and costs little more than its ``json.loads``. Everything
        else goes to ``_Answer``.
        """
        name = self.name
        chunk_keys = CHUNK_KEYS
        loads = json.loads
        answer = _Answer(name)
        chunks = response.iter_bytes()
        for _, data in sse_events(chunks):
            if data.startswith("[DONE]"):
                drain(chunks)
                yield from answer.end(done=True)
                return
            try:
                chunk = loads(data)
            except ValueError:
                chunk = None
            if chunk.__class__ is not dict:
                chunk = payload(name, data)  # raises the error for what it is
            choices = chunk.get("choices")
            if (choices.__class__ is list and len(choices) == 1
                    and chunk.get("usage") is None and chunk_keys.issuperset(chunk)):
                choice = choices[0]
                # Four keys, three of them index 0 and finish_reason and logprobs
                # present and null: the fourth is the delta.
                if (choice.__class__ is dict and len(choice) == 4
                        and choice.get("finish_reason", 0) is None
                        and choice.get("logprobs", 0) is None and choice.get("index") == 0):
                    delta = choice.get("delta")
                    if delta.__class__ is dict and len(delta) == 1:
                        text = delta.get("content")
                        if text.__class__ is str:
                            if text:
                                yield TextDelta(text)
                            continue
            yield from answer.chunk(chunk)
        yield from answer.end(done=False)

    def close(self) -> None:
        self._clients.close()


# -- the request -------------------------------------------------------------------------


def request_body(request: ChatRequest) -> dict[str, Any]:
    """The chat-completions body for ``request`` (plain JSON, no SDK transform)."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [_message(m) for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body.update(_given(request, "max_tokens", "temperature", "top_p", "seed",
                       "reasoning_effort", "response_format"))
    if request.stop:
        body["stop"] = list(request.stop)
    if request.tools:
        body["tools"] = [{"type": "function", "function": _function(t)}
                         for t in request.tools]
    if isinstance(request.tool_choice, NamedTool):
        body["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice.name}}
    elif request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    return body


def _given(value: object, *names: str) -> dict[str, Any]:
    """The attributes ``names`` of ``value`` that are set (not None), by name."""
    return {name: getattr(value, name) for name in names if getattr(value, name) is not None}


def _function(tool: Tool) -> dict[str, Any]:
    return {"name": tool.name, **_given(tool, "description", "parameters", "strict")}


def _message(message: Message) -> dict[str, Any]:
    """One message in OpenAI's shape (``provider_data`` is another provider's: left out)."""
    content = _content(message.content)
    out: dict[str, Any] = {"role": message.role}
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
        out["content"] = content
    elif message.role == "assistant":
        if message.tool_calls:
            # OpenAI's own assistant messages with calls and no text say null.
            out["content"] = content if message.content else None
            out["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in message.tool_calls]
        else:
            out["content"] = content
        if message.refusal is not None:
            out["refusal"] = message.refusal
    else:
        out["content"] = content
    return out


def _content(content: str | tuple[Part, ...]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    return [{"type": "image_url", "image_url": {"url": p.url}} if isinstance(p, ImagePart)
            else {"type": "text", "text": p.text} for p in content]


# -- the response ------------------------------------------------------------------------


class _Call:
    """A tool call as its pieces come in."""

    __slots__ = ("ended", "given_id", "id", "index", "name", "pending")

    def __init__(self) -> None:
        self.id: str | None = None
        self.given_id = False  # the id is the provider's (not generated here)
        self.name: str | None = None
        self.index: int | None = None  # the gateway's, once started
        self.pending: list[str] = []  # arguments that came before the name
        self.ended = False


class _Answer:
    """One answer's state, and every chunk that is not plain text (off the hot path)."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.finish_reason: str | None = None  # the provider's own word
        self.calls: dict[Any, _Call] = {}  # the current call per provider index
        self.last_key: Any = 0  # the provider index of the latest piece of a call
        self.every: list[_Call] = []  # every call, in order of its first piece
        self.started: list[_Call] = []  # the calls relayed, by gateway index

    def chunk(self, chunk: dict[str, Any]) -> Iterator[Delta]:
        """The deltas of one chunk, then one Unrelayed per thing it held that is not relayed."""
        if chunk.get("error"):  # an error inside the stream
            raise error_for_event(self.provider, error_type_of(chunk))
        unrelayed = [key for key, value in chunk.items()
                     if key not in CHUNK_KEYS and not _blank(value)]
        choices = chunk.get("choices")
        if choices is None:
            choices = []
        elif not isinstance(choices, list):
            raise self._malformed("choices")
        for choice in choices:
            if not isinstance(choice, dict):
                raise self._malformed("choice")
            if choice.get("index", 0) != 0:  # n > 1 is never asked for
                if not _blank(choice.get("delta")):
                    unrelayed.append("choices")
                continue
            unrelayed.extend(key for key, value in choice.items()
                             if key not in CHOICE_KEYS and not _blank(value))
            if not _blank(choice.get("logprobs")):
                unrelayed.append("logprobs")
            delta = choice.get("delta")
            if isinstance(delta, dict):
                yield from self._delta(delta, unrelayed)
            elif delta is not None:
                raise self._malformed("delta")
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
                yield from self._end_calls(unrelayed)
        usage = _usage(chunk.get("usage"))
        if usage is None:
            groq = chunk.get("x_groq")
            usage = _usage(groq.get("usage")) if isinstance(groq, dict) else None
        if usage is not None:
            yield usage
        for what in dict.fromkeys(unrelayed):
            yield Unrelayed(what)

    def end(self, *, done: bool) -> Iterator[Delta]:
        """The end of the body (``done``: with ``[DONE]``). A ``[DONE]`` with no
        finish_reason before it ends the answer too; a body that stops with
        neither was cut short."""
        if self.finish_reason is None and not done:
            raise UpstreamError(f"{self.provider} ended the stream before the model finished",
                                provider=self.provider)
        unrelayed: list[str] = []
        yield from self._end_calls(unrelayed)
        for what in unrelayed:
            yield Unrelayed(what)
        if self.finish_reason is None:
            yield Finished("tool_calls" if self.started else "stop", None)
        else:
            yield Finished(FINISH_REASONS.get(self.finish_reason, "other"), self.finish_reason)

    def _delta(self, delta: dict[str, Any], unrelayed: list[str]) -> Iterator[Delta]:
        unrelayed.extend(key for key, value in delta.items()
                         if key not in DELTA_KEYS and not _blank(value))
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            yield ReasoningDelta(reasoning)
        also = delta.get("reasoning")
        # Servers moving from one field to the other have sent the same text in both.
        if isinstance(also, str) and also and also != reasoning:
            yield ReasoningDelta(also)
        details = delta.get("reasoning_details")
        if details:
            if (isinstance(reasoning, str) and reasoning) or (isinstance(also, str) and also):
                # OpenRouter: the text of ``reasoning`` again, with what is not relayed
                # (formats, signatures).
                unrelayed.append("reasoning_details")
            else:
                yield from _reasoning_details(details, unrelayed)
        content = delta.get("content")
        if isinstance(content, str):
            if content:
                yield TextDelta(content)
        elif isinstance(content, list):
            yield from _parts(content, unrelayed)
        elif content is not None:
            unrelayed.append("content")
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            yield RefusalDelta(refusal)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    yield from self._piece(call.get("index"), call.get("id"),
                                           call.get("function"), unrelayed)
                else:
                    raise self._malformed("tool call")
        elif calls is not None:
            raise self._malformed("tool_calls")
        legacy = delta.get("function_call")
        if isinstance(legacy, dict):
            yield from self._piece(_LEGACY_CALL, None, legacy, unrelayed)

    def _piece(self, key: Any, call_id: Any, function: Any,
               unrelayed: list[str]) -> Iterator[Delta]:
        """One piece of a tool call: start the call once its name is known, then its
        arguments as they come."""
        if key is None:  # no index: a piece of the latest call (or a new one, by its id)
            key = self.last_key
        self.last_key = key
        call_id = call_id if isinstance(call_id, str) and call_id else None
        if not isinstance(function, dict):
            function = {}
        name = function.get("name")
        name = name if isinstance(name, str) and name else None
        arguments = function.get("arguments")
        if arguments is None:
            arguments = ""
        elif not isinstance(arguments, str):  # some servers send the arguments as an object
            arguments = json.dumps(arguments, ensure_ascii=False)
        call = self.calls.get(key)
        if call is not None and call.ended and call_id is None and name is None:
            if arguments:  # more of a call after the answer's end
                unrelayed.append("tool_calls")
            return
        if (call is None or call.ended
                or (call_id is not None and call.given_id and call_id != call.id)):
            call = self.calls[key] = _Call()  # a new call (maybe under another's index)
            self.every.append(call)
        if call_id is not None and call.id is None:
            call.id, call.given_id = call_id, True
        if name is not None and call.name is None:
            call.name = name
        if call.index is not None:
            if arguments:
                yield ToolCallDelta(call.index, arguments)
            return
        if arguments:
            call.pending.append(arguments)
        if call.name is None:
            return  # its arguments wait for its name
        call.index = len(self.started)
        self.started.append(call)
        if call.id is None:
            call.id = "call_" + secrets.token_urlsafe(18)  # 24 characters
        yield ToolCallStart(call.index, call.id, call.name)
        if call.pending:
            yield ToolCallDelta(call.index, "".join(call.pending))
            call.pending = []

    def _end_calls(self, unrelayed: list[str]) -> Iterator[Delta]:
        """End every started call (in order); a call still without a name is not relayed."""
        for call in self.started:
            if not call.ended:
                call.ended = True
                yield ToolCallEnd(call.index)  # type: ignore[arg-type]
        for call in self.every:
            if call.index is None and not call.ended:
                call.ended = True
                unrelayed.append("tool_call_without_name")

    def _malformed(self, what: str) -> UpstreamError:
        return UpstreamError(f"{self.provider} sent a chunk with a malformed {what}",
                             provider=self.provider)


def _reasoning_details(details: Any, unrelayed: list[str]) -> Iterator[Delta]:
    """OpenRouter's structured reasoning, sent alone by some hosts (the Snowflake
    recording): its text and summaries are reasoning; what else an item holds
    (a signature, encrypted data) is not relayed, and named."""
    if not isinstance(details, list):
        unrelayed.append("reasoning_details")
        return
    for item in details:
        if not isinstance(item, dict):
            unrelayed.append("reasoning_details")
            continue
        text = item.get("text") if item.get("type") == "reasoning.text" else (
            item.get("summary") if item.get("type") == "reasoning.summary" else None)
        if isinstance(text, str) and text:
            yield ReasoningDelta(text)
        if not (_blank(item.get("signature")) and _blank(item.get("data"))
                and item.get("type") in ("reasoning.text", "reasoning.summary")):
            unrelayed.append("reasoning_details")


def _parts(parts: list[Any], unrelayed: list[str]) -> Iterator[Delta]:
    """List-shaped content (Mistral): text parts are text, thinking parts reasoning."""
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if isinstance(text, str) and text:
                yield TextDelta(text)
        elif kind == "thinking":
            thinking = part.get("thinking")
            if isinstance(thinking, str):
                text = thinking
            elif isinstance(thinking, list):
                text = "".join(t["text"] for t in thinking if isinstance(t, dict)
                               and t.get("type") == "text" and isinstance(t.get("text"), str))
            else:
                text = ""
            if text:
                yield ReasoningDelta(text)
        elif not _blank(part):
            unrelayed.append(kind if isinstance(kind, str) and kind else "content")


def _usage(usage: Any) -> Usage | None:
    """The figures of a usage object (None when it has none)."""
    if not isinstance(usage, dict) or not usage:
        return None
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    cached = _count(prompt.get("cached_tokens")) if isinstance(prompt, dict) else None
    if cached is None:
        cached = _count(usage.get("prompt_cache_hit_tokens"))  # DeepSeek's name
    figures = Usage(
        input_tokens=_count(usage.get("prompt_tokens")),
        output_tokens=_count(usage.get("completion_tokens")),
        cache_read_input_tokens=cached,
        reasoning_tokens=(_count(completion.get("reasoning_tokens"))
                          if isinstance(completion, dict) else None),
    )
    return None if figures == Usage() else figures


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _blank(value: Any) -> bool:
    """Nothing in it: None, "", or containers of only such (``{"content": [],
    "refusal": null}`` logprobs). 0 and false are values."""
    if value is None or value == "":
        return True
    if isinstance(value, dict):
        return all(_blank(v) for v in value.values())
    if isinstance(value, list):
        return all(_blank(v) for v in value)
    return False
