"""The stream routes: create, follow (resume), status and cancel.

Each view parses its request (headers, body, Last-Event-ID), calls the
streams service with plain values, and renders the answer: JSON, or the
service's reader as SSE. Nothing below this module touches ``request``.
Every successful create answers the stream's token (``X-Stream-Token``,
``app/tokens.py``), which opens follow, status and cancel of that stream.
"""

from __future__ import annotations

import hashlib
import logging

import gevent
from flask import Blueprint, Response, jsonify, request

from app.api import current_gateway, current_streams
from app.api.caller import caller, key_id, owner
from app.errors import PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from app.limits import limiter, rate, unlimited
from app.settings import Settings
from sse_gateway.errors import InvalidRequest
from sse_gateway.flask.responses import sse_response
from sse_gateway.flask.views import parse_position
from sse_gateway.streams import Detached, NothingFollows, Reader, Streams
from sse_gateway.validation import STREAM_ID

bp = Blueprint("streams", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)



@bp.post("/streams")
@limiter.limit(rate("ratelimit_create"), exempt_when=unlimited("ratelimit_create"))
def create_stream() -> Response:
    streams = current_streams()
    raw = read_body(current_gateway().settings)
    requested = requested_stream_id()
    position = parse_position(request.headers.get("Last-Event-ID"))
    # The body is validated only if a new stream starts: a retried POST resumes.
    result = streams.start(lambda: streams.parse(raw), owner=owner(), holder=caller(),
                           caller=key_id() or request.remote_addr or "", stream_id=requested,
                           digest=hashlib.sha256(raw).hexdigest(), position=position)
    token = current_gateway().tokens.issue(owner(), result.stream_id)
    if isinstance(result, Detached):
        log.info("stream %s: %s for %s (%s), detached", result.stream_id, result.model,
                 request.remote_addr, key_id() or "open")
        response = _detached(result, token)
    else:
        if isinstance(result, Reader) and result.started:
            log.info("stream %s: %s for %s (%s)", result.stream_id, result.model,
                     request.remote_addr, key_id() or "open")
        response = _render(streams, result)
    response.headers["X-Stream-Token"] = token
    return response


def _detached(result: Detached, token: str) -> Response:
    """201: the stream runs with no reader; here is where to read it, and the token
    that may (a browser, say, that the creator hands it to)."""
    status_url = f"/v1/streams/{result.stream_id}"
    response = jsonify({"stream_id": result.stream_id, "token": token,
                        "events_url": f"{status_url}/events", "status_url": status_url})
    response.status_code = 201
    response.headers["X-Stream-ID"] = result.stream_id
    response.headers["Location"] = status_url
    return response


def requested_stream_id() -> str | None:
    """The client's own stream id (``X-Stream-ID``), checked; None when it gave none."""
    requested = request.headers.get("X-Stream-ID") or None  # empty: none asked for
    if requested is not None and not STREAM_ID.fullmatch(requested):
        raise InvalidRequest("X-Stream-ID: must be 16 to 128 characters of A-Z a-z 0-9 _ -",
                             param="X-Stream-ID")
    return requested


def read_body(settings: Settings) -> bytes:
    """The JSON request body, within the size and time bounds (415, 413, 408)."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    raw = _body_within(settings.body_timeout_s)
    if request.content_length is None and len(raw) >= settings.max_content_length:
        # A chunked body is cut at the limit, not refused: refuse it here.
        raise PayloadTooLarge("the request body is too large")
    return raw


class _BodyLate(Exception):
    """Thrown into the body read by its deadline.

    An ``Exception`` (not gevent's ``Timeout``, a ``BaseException``) on purpose:
    gunicorn marks a body whose read raised an ``Exception`` as failed and closes
    the connection after the answer instead of draining the rest of the body
    (which would wait up to the keep-alive timeout), and Werkzeug turns only
    ``OSError``/``ValueError`` into a client disconnect, so it reaches us as is.
    """


def _body_within(seconds: float) -> bytes:
    """The request body, if all of it arrives within ``seconds``; else 408, connection closed.

    One deadline for the whole body, chunked or not (a slow drip is bounded
    too), as a gevent timer: the client socket's own timeout is left alone.
    """
    timer = gevent.Timeout(seconds, _BodyLate())
    timer.start()
    try:
        return request.get_data(cache=False)  # 413 when Content-Length is over the limit
    except _BodyLate:
        log.info("request body from %s not complete within %g s: 408, connection closed",
                 request.remote_addr, seconds)
        raise RequestTimeout(f"the request body did not arrive within {seconds:g} s") from None
    finally:
        timer.close()


@bp.get("/streams/<stream_id>/events")
@limiter.limit(rate("ratelimit_events"), exempt_when=unlimited("ratelimit_events"))
def stream_events(stream_id: str) -> Response:
    raw = request.headers.get("Last-Event-ID")
    position = parse_position(request.args.get("last_event_id") if raw is None else raw)
    streams = current_streams()
    return _render(streams, streams.follow(stream_id, owner(), position, caller()))


@bp.get("/streams/<stream_id>")
@limiter.limit(rate("ratelimit_status"), exempt_when=unlimited("ratelimit_status"))
def stream_status(stream_id: str) -> Response:
    streams = current_streams()
    body = streams.info(stream_id, owner()).public()
    if "message" in request.args.getlist("include"):
        body["message"] = streams.message(stream_id, owner()).public()
    return jsonify(body)


@bp.delete("/streams/<stream_id>")
@limiter.limit(rate("ratelimit_cancel"), exempt_when=unlimited("ratelimit_cancel"))
def cancel_stream(stream_id: str) -> tuple[Response, int]:
    info, asked = current_streams().cancel(stream_id, owner())
    return jsonify(info.public()), 202 if asked else 200


def _render(streams: Streams, result: Reader | NothingFollows) -> Response:
    """A reader as an SSE response; nothing to follow as 204."""
    return sse_response(streams, result, f"/v1/streams/{result.stream_id}")
