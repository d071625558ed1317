"""The answers every Flask route of the product gives: a stream as SSE, an error as JSON."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request

from sse_gateway.errors import StreamsError
from sse_gateway.streams import NothingFollows, Reader, Streams
from sse_gateway.transports import dialects
from sse_gateway.transports.sse_feed import Feed


def sse_response(streams: Streams, result: Reader | NothingFollows, location: str,
                 headers: dict[str, str] | None = None) -> Response:
    """A reader as an SSE response in its stream's dialect (headers all set before
    the first byte; ``Location`` when ``location`` is not empty; ``headers``
    added); nothing to follow as 204. Call it in the request that will stream it."""
    if isinstance(result, NothingFollows):
        # Nothing will ever follow: 204 makes a browser's EventSource stop
        # reconnecting (a 200 with no event would have it come back forever).
        response = Response(status=204, headers={"X-Stream-ID": result.stream_id})
        del response.headers["Content-Type"]
        return response
    config = streams.config
    renderer = dialects.renderer(result.dialect)
    renderer.prime(result.history)
    feed = Feed(result, retry_ms=config.retry_ms, write_timeout_s=config.write_timeout_s,
                client_socket=request.environ.get("gunicorn.socket"), renderer=renderer)
    headers = {**(headers or {}), "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
               "X-Stream-ID": result.stream_id}
    if location:  # none when the host mounted no follow route
        headers["Location"] = location
    return Response(feed, status=200, content_type="text/event-stream; charset=utf-8",
                    headers=headers)


def error_body(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The JSON body of every non-2xx answer."""
    error: dict[str, Any] = {"code": code, "message": message}
    if param is not None:
        error["param"] = param
    return {"error": error}


def error_response(exc: StreamsError, headers: dict[str, str] | None = None
                   ) -> tuple[Response, int, dict[str, str]]:
    """The JSON answer of a refusal: its body, status and headers (Retry-After)."""
    headers = dict(headers or {})
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return jsonify(error_body(exc.code, exc.message, exc.param)), exc.status, headers
