"""Build the HTTP client options both SDKs share.

Both SDKs sit on ``httpx2``. Their defaults suit a script, not a gateway: a
10-minute read timeout, 1000 pooled connections whatever the worker holds, and
(on macOS and Windows) a truststore SSL context that does not work under gevent.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import httpx2


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
