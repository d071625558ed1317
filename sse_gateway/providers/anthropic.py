"""Stream messages through the official ``anthropic`` SDK.

System messages go to the ``system`` parameter, as the Messages API wants;
``max_tokens`` is required there, so a request without one gets the
configured default.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import anthropic
import httpx2

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

# Anthropic's stop reasons, in the OpenAI vocabulary the gateway reports.
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                "tool_use": "tool_calls"}


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
        """Every field is passed on (to be refined)."""

    def stream(self, request: ChatRequest) -> Generator[Delta, None, None]:
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens or self._default_max_tokens,
            "messages": [{"role": m.role, "content": m.content}
                         for m in request.messages if m.role != "system"],
            "stream": True,
        }
        system = "\n\n".join(m.text for m in request.messages if m.role == "system")
        if system:
            body["system"] = system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return guarded(self.name, anthropic, self._clients.next(), "/v1/messages", body,
                       self._deltas)

    def _deltas(self, response: httpx2.Response) -> Iterator[Delta]:
        stop_reason = None
        input_tokens = output_tokens = None
        chunks = response.iter_bytes()
        for _, data in sse_events(chunks):
            event = payload(self.name, data)
            kind = event.get("type")
            if kind == "content_block_delta":
                delta = event.get("delta") or {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    yield TextDelta(delta["text"])
            elif kind == "message_start":
                input_tokens = ((event.get("message") or {}).get("usage") or {}).get(
                    "input_tokens")
            elif kind == "message_delta":
                stop_reason = (event.get("delta") or {}).get("stop_reason")
                output_tokens = (event.get("usage") or {}).get("output_tokens")
            elif kind == "message_stop":
                drain(chunks)
                yield Usage(input_tokens, output_tokens)
                yield Finished(STOP_REASONS.get(stop_reason or "", stop_reason or "stop"))
                return
            elif kind == "error":
                raise error_for_event(self.name, error_type_of(event))
        raise UpstreamError("anthropic ended the stream before the model finished",
                            provider=self.name)

    def close(self) -> None:
        self._clients.close()

