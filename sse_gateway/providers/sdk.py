"""What the two official SDKs share: HTTP client options, error translation,
and reading their raw streaming responses.

Both SDKs sit on ``httpx2``. Their defaults suit a script, not a gateway: a
10-minute read timeout, 1000 pooled connections whatever the worker holds, and
(on macOS and Windows) a truststore SSL context that does not work under gevent.
Their exception trees have the same shape, so one function maps both.

The adapters send their request with the SDK client's documented ``post``
(its route for custom requests), asking for the raw ``httpx2.Response``, and
read the SSE body themselves instead of the SDK's typed chunks. The SDK still
builds the request (base URL, auth and its own headers), sends it, and raises
its own errors for an error status. What that skips, measured on this
project's fake provider: building a pydantic model per chunk, about 100 µs of
CPU per token (reading the lines and ``json.loads`` costs about 15 µs;
``orjson`` would save 3 µs more, not worth a dependency), and the typed
``create()``'s transform of the request parameters, about 0.3 ms per stream.
The adapters validate and build the plain JSON body themselves.

After the last event the rest of the body is read (``drain``), so the
connection goes back to the pool instead of being closed: the sync openai
``Stream`` closes it before the body's end, and every stream would pay a new
TCP and TLS handshake.
"""

from __future__ import annotations

import itertools
import json
import math
import ssl
from collections.abc import Callable, Generator, Iterable, Iterator
from types import ModuleType
from typing import Any, Generic, TypeVar

import gevent
import httpx2

from sse_gateway.providers.base import (
    Delta,
    ProviderError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_for_status,
    parse_retry_after,
    status_message,
)
from sse_gateway.transports import sse

DRAIN_S = 0.1  # the longest a finished stream's body end is waited for (as the async SDKs do)
POOL_STREAMS = 64  # streams per connection pool (see ClientPools)
MAX_POOLS = 64
KEEPALIVE_PER_POOL = 8  # idle connections kept per pool for the next streams
Client = TypeVar("Client", bound=Any)


def sse_events(chunks: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    """(event, data) for each event of a provider's SSE body, by the WHATWG rules.

    Lines end only at CR or LF: ``iter_lines`` would also split at U+2028 and
    the other separators ``str.splitlines`` knows, which JSON may carry raw.
    """
    decoder = sse.Decoder()
    for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event.event, event.data


def drain(chunks: Iterator[bytes], within_s: float = DRAIN_S) -> None:
    """Read the rest of a body whose last event has come, so its connection is reused.

    The body's end (the zero-length chunk) usually follows the last event at
    once; a response closed before it is read loses its connection, and the
    next stream pays a new TCP (and TLS) handshake. A provider that keeps the
    body open is not waited for longer than ``within_s``.
    """
    with gevent.Timeout(within_s, False):
        for _ in chunks:
            pass


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


def guarded(provider: str, sdk: ModuleType, client: Any, path: str, body: dict[str, Any],
            read: Callable[[httpx2.Response], Iterator[Delta]]) -> Generator[Delta, None, None]:
    """POST a streaming request through the SDK client on first use, read its deltas,
    always close the response.

    The SDK's errors, and transport errors (which the SDKs let through
    unwrapped while a body is read), become ProviderErrors here. Closing in
    ``finally`` is what stops the generation (and the bill) when a stream is
    cancelled or its client leaves.
    """
    errors = (sdk.APIError, httpx2.TransportError)
    try:
        response: httpx2.Response = client.post(path, cast_to=httpx2.Response, body=body,
                                                stream=True, stream_cls=sdk.Stream)
    except errors as exc:
        raise translate(exc, provider=provider, sdk=sdk) from None
    try:
        yield from read(response)
    except errors as exc:
        raise translate(exc, provider=provider, sdk=sdk) from None
    finally:
        response.close()


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


class ClientPools(Generic[Client]):
    """Several SDK clients, each with its own connection pool, taken in turn.

    httpcore's pool walks every connection it holds (several Python calls each,
    and a socket probe per idle one) whenever a request starts and whenever a
    response closes. With one pool for the worker that walk grows with the
    streams: at 400 streams it was half of the worker's CPU (bench/profile.py).
    Pools of about ``POOL_STREAMS`` connections keep each walk short, and each
    still reuses its own idle connections.
    """

    def __init__(self, build: Callable[[dict[str, Any]], Client],
                 http_client: Callable[..., httpx2.Client], *, max_connections: int,
                 connect_timeout: float) -> None:
        count = min(MAX_POOLS, max(1, math.ceil(max_connections / POOL_STREAMS)))
        # Built here, after gevent patched ssl: a stdlib context gevent can wrap,
        # one for all the pools (loading the CA store is not free).
        verify = ssl.create_default_context()
        self.clients = [build(http_options(http_client, max_connections, connect_timeout,
                                           verify)) for _ in range(count)]
        self._turn = itertools.cycle(self.clients)

    def next(self) -> Client:
        """The client (and pool) for the next stream."""
        return next(self._turn)

    def close(self) -> None:
        for client in self.clients:
            client.close()


def http_options(http_client: Callable[..., httpx2.Client], max_connections: int,
                 connect_timeout: float, verify: ssl.SSLContext) -> dict[str, Any]:
    """Keyword arguments for an SDK client: timeouts and a connection pool.

    No read timeout: silence is bounded by the gateway itself, ``TTFT_TIMEOUT_S``
    before the first token (``upstream``) and ``TOKEN_TIMEOUT_S`` after it (the
    pump), and either closes the connection. A socket timeout would start and
    cancel a timer on every read, about 12 µs of CPU per token.
    """
    timeout = httpx2.Timeout(connect=connect_timeout, read=None, write=10.0,
                             pool=connect_timeout)
    limits = httpx2.Limits(max_connections=max_connections,
                           max_keepalive_connections=min(max_connections, KEEPALIVE_PER_POOL))
    return {"timeout": timeout,
            "http_client": http_client(timeout=timeout, limits=limits, verify=verify)}
