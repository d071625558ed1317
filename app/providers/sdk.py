"""What the two official SDKs share: HTTP client options, error translation,
and reading their raw streaming responses.

Both SDKs sit on ``httpx2``. Their defaults suit a script, not a gateway: a
10-minute read timeout, 1000 pooled connections whatever the worker holds, and
(on macOS and Windows) a truststore SSL context that does not work under gevent.
Their exception trees have the same shape, so one function maps both.

The adapters read the SDKs' raw streaming responses (``with_streaming_response``)
instead of their typed chunks: the SDK still builds the request, sends it,
and raises its own errors for an error status, but building a pydantic model
per chunk costs about 100 µs of CPU per token, while reading the lines and
``json.loads`` costs about 15 µs (measured on this project's fake provider;
``orjson`` would save 3 µs more, not worth a dependency).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Generator, Iterable, Iterator
from types import ModuleType
from typing import Any

import httpx2

from app import sse
from app.providers.base import (
    Delta,
    ProviderError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_for_status,
    parse_retry_after,
    status_message,
)


def sse_events(chunks: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    """(event, data) for each event of a provider's SSE body, by the WHATWG rules.

    Lines end only at CR or LF: ``iter_lines`` would also split at U+2028 and
    the other separators ``str.splitlines`` knows, which JSON may carry raw.
    """
    decoder = sse.Decoder()
    for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event.event, event.data


def payload(provider: str, data: str) -> dict[str, Any]:
    """One event's JSON, or UpstreamError if the provider sent something else."""
    try:
        value = json.loads(data)
    except ValueError:
        raise UpstreamError(f"{provider} sent an event that is not JSON",
                            provider=provider) from None
    if not isinstance(value, dict):
        raise UpstreamError(f"{provider} sent an event that is not a JSON object",
                            provider=provider)
    return value


def guarded(provider: str, sdk: ModuleType, open_stream: Callable[[], Any],
            read: Callable[[Any], Iterator[Delta]]) -> Generator[Delta, None, None]:
    """Open an SDK stream on first use, read its deltas, always close it.

    The SDK's errors, and transport errors (which anthropic lets through
    unwrapped while a stream is read), become ProviderErrors here. Closing in
    ``finally`` matters: the openai ``Stream`` keeps its response open until
    the garbage collector finds it otherwise, and the model keeps generating.
    """
    errors = (sdk.APIError, httpx2.TransportError)
    try:
        sdk_stream = open_stream()
    except errors as exc:
        raise translate(exc, provider=provider, sdk=sdk) from None
    try:
        yield from read(sdk_stream)
    except errors as exc:
        raise translate(exc, provider=provider, sdk=sdk) from None
    finally:
        sdk_stream.close()


def translate(exc: Exception, *, provider: str, sdk: ModuleType) -> ProviderError:
    """Map an ``openai``/``anthropic`` or transport exception to the gateway's error tree."""
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        return error_for_status(status)(
            status_message(provider, status), provider=provider, status_code=status,
            retry_after=parse_retry_after(exc.response.headers.get("retry-after")))
    if isinstance(exc, (sdk.APITimeoutError, httpx2.TimeoutException)):
        return UpstreamTimeout(f"{provider} did not answer in time", provider=provider)
    if isinstance(exc, (sdk.APIConnectionError, httpx2.TransportError)):
        return UpstreamUnavailable(f"the connection to {provider} failed", provider=provider)
    return UpstreamError(f"{provider} failed", provider=provider)


def http_options(client_factory: Callable[..., httpx2.Client], max_connections: int,
                 connect_timeout: float, read_timeout: float) -> dict[str, Any]:
    """Keyword arguments for an SDK client: timeouts and a pool sized for the worker."""
    timeout = httpx2.Timeout(connect=connect_timeout, read=read_timeout, write=10.0,
                             pool=connect_timeout)
    limits = httpx2.Limits(max_connections=max_connections,
                           max_keepalive_connections=min(max_connections, 100))
    # Created here, after gevent patched ssl: a stdlib context gevent can wrap.
    http_client = client_factory(timeout=timeout, limits=limits,
                                 verify=ssl.create_default_context())
    return {"timeout": timeout, "http_client": http_client}
