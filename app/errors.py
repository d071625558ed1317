"""The errors a ``/v1`` route answers outside a stream, and their JSON body.

    ApiError                      status  code
     ├── InvalidRequest            400    invalid_request
     ├── UnknownModel              400    unknown_model
     ├── Unauthorized              401    unauthorized
     ├── NotFound                  404    not_found
     ├── MethodNotAllowed          405    method_not_allowed
     ├── RequestTimeout            408    request_timeout     (connection closed)
     ├── StreamExists              409    stream_exists
     ├── Gone                      410    position_gone
     ├── PayloadTooLarge           413    payload_too_large
     ├── UnsupportedMediaType      415    unsupported_media_type
     ├── RateLimited               429    rate_limited        (Retry-After)
     ├── TooManyStreams            429    too_many_streams    (Retry-After)
     ├── TooManyReaders            429    too_many_readers    (Retry-After)
     ├── InternalError             500    internal_error
     └── Overloaded                503    overloaded          (Retry-After)

Errors *inside* a stream are events, not these; see ``providers.base``.
Messages are written for the client: never a traceback, key or path.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An answer that is not 2xx, rendered as ``{"error": {...}}``."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.param)

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class InvalidRequest(ApiError):
    status, code = 400, "invalid_request"


class UnknownModel(ApiError):
    status, code = 400, "unknown_model"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="sse-gateway"'}


class NotFound(ApiError):
    status, code = 404, "not_found"


class MethodNotAllowed(ApiError):
    status, code = 405, "method_not_allowed"


class RequestTimeout(ApiError):
    """The request body did not arrive in time; the connection is closed after the answer."""

    status, code = 408, "request_timeout"


class StreamExists(ApiError):
    status, code = 409, "stream_exists"


class Gone(ApiError):
    status, code = 410, "position_gone"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class RateLimited(ApiError):
    status, code = 429, "rate_limited"


class TooManyStreams(ApiError):
    status, code = 429, "too_many_streams"


class TooManyReaders(ApiError):
    status, code = 429, "too_many_readers"


class InternalError(ApiError):
    status, code = 500, "internal_error"


class Overloaded(ApiError):
    status, code = 503, "overloaded"


def error_body(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The JSON body of every non-2xx answer."""
    error: dict[str, Any] = {"code": code, "message": message}
    if param is not None:
        error["param"] = param
    return {"error": error}
