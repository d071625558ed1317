"""What the two official SDKs share: HTTP client options and error translation.

Both SDKs sit on ``httpx2``. Their defaults suit a script, not a gateway: a
10-minute read timeout, 1000 pooled connections whatever the worker holds, and
(on macOS and Windows) a truststore SSL context that does not work under gevent.
Their exception trees have the same shape, so one function maps both.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Generator, Iterator
from types import ModuleType
from typing import Any

import httpx2

from app.providers.base import (
    Delta,
    ProviderError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_for_event,
    error_for_status,
    error_type_of,
    parse_retry_after,
    status_message,
)


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
        if status == 200:  # anthropic: an `error` event inside the stream
            return error_for_event(provider, error_type_of(exc.body))
        return error_for_status(status)(
            status_message(provider, status), provider=provider, status_code=status,
            retry_after=parse_retry_after(exc.response.headers.get("retry-after")))
    if isinstance(exc, (sdk.APITimeoutError, httpx2.TimeoutException)):
        return UpstreamTimeout(f"{provider} did not answer in time", provider=provider)
    if isinstance(exc, (sdk.APIConnectionError, httpx2.TransportError)):
        return UpstreamUnavailable(f"the connection to {provider} failed", provider=provider)
    if isinstance(exc, sdk.APIError):  # openai: an error event inside the stream
        return error_for_event(provider, error_type_of(exc.body))
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
