"""The errors only the HTTP gateway has, and the one JSON answer of every error.

The streams service refuses with its own tree (``sse_gateway.errors``:
invalid request, unknown model, not found, exists, position gone, too many
streams or readers, overloaded). What only HTTP can refuse adds to it:

    StreamsError                  (sse_gateway.errors)
     └── ApiError
          ├── Unauthorized            401    unauthorized     (WWW-Authenticate)
          ├── MethodNotAllowed        405    method_not_allowed
          ├── RequestTimeout          408    request_timeout  (connection closed)
          ├── PayloadTooLarge         413    payload_too_large
          ├── UnsupportedMediaType    415    unsupported_media_type
          ├── RateLimited             429    rate_limited     (Retry-After)
          └── InternalError           500    internal_error

Both trees are answered by ``answer``: the status is the code's row in
``events.CODES``. Errors *inside* a stream are events, not these. Messages are
written for the client: never a traceback, key or path.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sse_gateway.errors import StreamsError
from sse_gateway.flask.responses import error_body


class ApiError(StreamsError):
    """A refusal only an HTTP answer has; ``headers`` go with it."""

    headers: ClassVar[dict[str, str]] = {}


class Unauthorized(ApiError):
    code = "unauthorized"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="sse-gateway"'}


class MethodNotAllowed(ApiError):
    code = "method_not_allowed"


class RequestTimeout(ApiError):
    """The request body did not arrive in time; the connection is closed after the answer."""

    code = "request_timeout"


class PayloadTooLarge(ApiError):
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    code = "unsupported_media_type"


class RateLimited(ApiError):
    code = "rate_limited"


class InternalError(ApiError):
    code = "internal_error"


def answer(exc: StreamsError) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The JSON body, status and headers that answer ``exc``."""
    headers = dict(exc.headers) if isinstance(exc, ApiError) else {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return error_body(exc.code, exc.message, exc.param), exc.status, headers
