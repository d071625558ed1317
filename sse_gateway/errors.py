"""What the streams service refuses, as one exception tree.

    StreamsError                  code                status
     ├── InvalidRequest           invalid_request      400   (param names the field)
     │    ├── UnknownModel        unknown_model        400   (param: model or fallbacks.N)
     │    └── RequestTooLarge     payload_too_large    413   (param: tools, an image part)
     ├── NotFound                 not_found            404   (or another owner's stream)
     ├── StreamExists             stream_exists        409
     ├── PositionGone             position_gone        410
     ├── TooManyStreams           too_many_streams     429   (retry_after)
     ├── TooManyReaders           too_many_readers     429   (retry_after)
     └── Overloaded               overloaded           503   (retry_after)
          └── StoreUnreachable    overloaded           503   (the stream store does not answer)

Each class names its code; the HTTP status (and whether retrying may help) is
that code's row in ``events.CODES``, the one table, so a transport that
answers over HTTP reads it from there rather than keeping its own. Errors
*inside* a stream are events (``events.error``), not these. Messages are
written for the client: never a traceback, key or path.
"""

from __future__ import annotations

from sse_gateway.events import CODES


class StreamsError(Exception):
    """A request the service refuses; ``code`` is a row of ``events.CODES``."""

    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        """The HTTP status that answers this error (from ``events.CODES``)."""
        return CODES[self.code].status or 500


class InvalidRequest(StreamsError):
    code = "invalid_request"


class UnknownModel(InvalidRequest):
    """The model (or a fallback) is not served here: a bad argument like any
    other (``except InvalidRequest`` catches it), with its own code."""

    code = "unknown_model"


class RequestTooLarge(InvalidRequest):
    """A part of the request is over its size bound (the tools, an image): a bad
    argument like any other, answered 413."""

    code = "payload_too_large"


class NotFound(StreamsError):
    code = "not_found"


class StreamExists(StreamsError):
    code = "stream_exists"


class PositionGone(StreamsError):
    code = "position_gone"


class TooManyStreams(StreamsError):
    code = "too_many_streams"


class TooManyReaders(StreamsError):
    code = "too_many_readers"


class Overloaded(StreamsError):
    """The service cannot take this now (draining, full, or its store is down); retry."""

    code = "overloaded"


class StoreUnreachable(Overloaded):
    def __init__(self, message: str = "the stream store is unreachable; retry shortly", *,
                 retry_after: float | None = 5) -> None:
        super().__init__(message, retry_after=retry_after)
