"""Stream chat completions through the official ``openai`` SDK.

Serves OpenAI itself and every OpenAI-compatible server (vLLM, Ollama, ...)
reached through ``OPENAI_BASE_URL``. Usage is asked for in the stream
(``stream_options.include_usage``) so ``done`` can report it. The body is read
raw (see ``providers.sdk``): chat-completion chunks, then ``[DONE]``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import httpx2
import openai

from sse_gateway.providers.base import (
    ChatRequest,
    Delta,
    Finished,
    TextDelta,
    UpstreamError,
    Usage,
    error_for_event,
    error_type_of,
)
from sse_gateway.providers.sdk import ClientPools, drain, guarded, payload, sse_events


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
        """Every field is passed on (to be refined)."""

    def stream(self, request: ChatRequest) -> Generator[Delta, None, None]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return guarded(self.name, openai, self._clients.next(), "/chat/completions", body,
                       self._deltas)

    def _deltas(self, response: httpx2.Response) -> Iterator[Delta]:
        finish_reason = None
        chunks = response.iter_bytes()
        for _, data in sse_events(chunks):
            if data.startswith("[DONE]"):
                drain(chunks)
                break
            text, finished, usage = self._parse(data)
            if text:
                yield TextDelta(text)
            finish_reason = finished or finish_reason
            if usage:
                yield usage
        if finish_reason is None:
            raise UpstreamError("openai ended the stream before the model finished",
                                provider=self.name)
        yield Finished(finish_reason)

    def _parse(self, data: str) -> tuple[str | None, str | None, Usage | None]:
        """One chunk's text, finish reason and usage (the parsed JSON is not kept
        while the next event is awaited)."""
        chunk = payload(self.name, data)
        if chunk.get("error"):  # an error inside the stream
            raise error_for_event(self.name, error_type_of(chunk))
        text = finished = None
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) == 0:
                text = (choice.get("delta") or {}).get("content")
                finished = choice.get("finish_reason")
        usage = chunk.get("usage")
        return (text, finished, Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"))
                if usage else None)

    def close(self) -> None:
        self._clients.close()

