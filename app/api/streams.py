"""The stream routes: create, follow (resume), status and cancel.

Views read everything they need from the request, then hand plain values to
the pump and the feed; nothing below this module touches ``request``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time

import gevent
from flask import Blueprint, Response, jsonify, request

from app.api import current_gateway
from app.api.caller import caller, key_id, owner
from app.errors import (
    Gone,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    StreamExists,
    TooManyReaders,
    TooManyStreams,
    UnknownModel,
    UnsupportedMediaType,
)
from app.gateway import Gateway
from app.limits import limiter, rate, unlimited
from app.settings import Settings
from sse_gateway.broker import (
    ENDED,
    RUNNING,
    Batch,
    PositionGone,
    StreamInfo,
    StreamNotFound,
)
from sse_gateway.broker import TooManyReaders as ReadersRefused
from sse_gateway.feed import Feed
from sse_gateway.providers import ModelUnavailable
from sse_gateway.pump import Pump
from sse_gateway.upstream import Candidate
from sse_gateway.validation import InvalidBody, StreamRequest, parse_stream_request

bp = Blueprint("streams", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)

STREAM_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")
EVENT_ID = re.compile(r"[0-9]{1,18}")  # ASCII digits only (a str pattern's \d takes any script's)


@bp.post("/streams")
@limiter.limit(rate("ratelimit_create"), exempt_when=unlimited("ratelimit_create"))
def create_stream() -> Response:
    gateway = current_gateway()
    settings = gateway.settings
    raw = _read_body(settings)
    requested = request.headers.get("X-Stream-ID") or None  # empty: none asked for
    if requested is not None and not STREAM_ID.fullmatch(requested):
        raise InvalidRequest("X-Stream-ID: must be 16 to 128 characters of A-Z a-z 0-9 _ -",
                             param="X-Stream-ID")
    position = _position(request.headers.get("Last-Event-ID"))
    digest = hashlib.sha256(raw).hexdigest()
    existing = _owned(gateway, requested) if requested is not None else None
    if existing is not None and (position is not None
                                 or hmac.compare_digest(existing.request_digest, digest)):
        # A client library retrying a POST whose connection dropped: resume the
        # stream it started instead of paying for a second answer.
        assert requested is not None
        return _follow(gateway, requested, existing, -1 if position is None else position)
    if position is not None:
        if requested is None:
            raise InvalidRequest("Last-Event-ID: a POST resumes only the stream named by its "
                                 "X-Stream-ID", param="Last-Event-ID")
        raise NotFound(f"no stream {requested!r} to resume")
    body = _parse_body(raw, settings)
    if existing is not None:
        raise StreamExists(f"a stream with id {requested!r} already exists (with another "
                           "request)", param="X-Stream-ID")
    candidates = [_candidate(gateway, model, body, "model" if i == 0 else f"fallbacks.{i - 1}")
                  for i, model in enumerate((body.model, *body.fallbacks))]
    stream_id = requested or secrets.token_urlsafe(18)
    key = _scoped(stream_id)
    if gateway.pumps.draining:
        raise Overloaded("this instance is shutting down; retry", retry_after=1)
    if len(gateway.pumps) >= settings.streams.max_active_streams:
        raise Overloaded("this worker is at its stream limit; retry", retry_after=1)
    # The new stream's own reader is taken after the stream exists, so its key's
    # cap is checked here, before any provider is asked (concurrent POSTs of one
    # key are bounded by its stream slots; GET readers are capped atomically).
    cap = settings.streams.max_readers_per_key
    if cap and gateway.broker.holder_readers(caller()) >= cap:
        raise _too_many_readers("holder", cap)
    slot_owner = caller() if settings.streams.max_streams_per_key else None
    if slot_owner and not gateway.broker.take_slot(slot_owner, key,
                                                   settings.streams.max_streams_per_key):
        raise TooManyStreams(f"at most {settings.streams.max_streams_per_key} streams may run at once "
                             "for one key; wait for one to end", retry_after=1)
    created = round(time.time(), 3)
    try:
        if not gateway.broker.create(StreamInfo(key, owner=owner(), model=body.model,
                                                created=created, request_digest=digest)):
            raise StreamExists(f"a stream with id {stream_id!r} already exists",
                               param="X-Stream-ID")
        lease = gateway.broker.attach_reader(key, caller())
    except Exception:
        if slot_owner:
            gateway.broker.release_slot(slot_owner, key)
        raise
    log.info("stream %s: %s for %s (%s)", stream_id, body.model, request.remote_addr,
             key_id() or "open")
    grace = settings.streams.resume_grace_s if body.resume_grace_s is None else body.resume_grace_s
    gateway.pumps.start(Pump(
        broker=gateway.broker, candidates=candidates, policy=gateway.retry_policy,
        stream_id=key, public_id=stream_id, created=created, grace_s=grace,
        tick_s=settings.streams.producer_timeout_s / 4, stream_timeout_s=settings.streams.stream_timeout_s,
        slot_owner=slot_owner, caller=key_id() or request.remote_addr or "",
        on_exit=gateway.pumps.discard))
    return _sse_response(gateway, stream_id, key, after=-1, lease=lease,
                         provider=candidates[0].provider.name)


def _read_body(settings: Settings) -> bytes:
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    raw = _body_within(settings.body_timeout_s)
    if request.content_length is None and len(raw) >= settings.max_content_length:
        # A chunked body is cut at the limit, not refused: refuse it here.
        raise PayloadTooLarge("the request body is too large")
    return raw


def _parse_body(raw: bytes, settings: Settings) -> StreamRequest:
    try:
        return parse_stream_request(raw, max_tokens_limit=settings.streams.max_tokens_limit,
                                    max_messages=settings.streams.max_messages,
                                    max_resume_grace_s=settings.streams.max_resume_grace_s,
                                    max_fallbacks=settings.streams.max_fallbacks)
    except InvalidBody as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None


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


def _candidate(gateway: Gateway, model: str, body: StreamRequest, param: str) -> Candidate:
    try:
        provider, provider_model = gateway.catalog.resolve(model)
    except ModelUnavailable as exc:
        raise UnknownModel(str(exc), param=param) from None
    return Candidate(model, provider, body.chat(provider_model))


@bp.get("/streams/<stream_id>/events")
@limiter.limit(rate("ratelimit_events"), exempt_when=unlimited("ratelimit_events"))
def stream_events(stream_id: str) -> Response:
    gateway = current_gateway()
    info = _info_or_404(gateway, stream_id)
    raw = request.headers.get("Last-Event-ID")
    position = _position(request.args.get("last_event_id") if raw is None else raw)
    return _follow(gateway, stream_id, info, -1 if position is None else position)


@bp.get("/streams/<stream_id>")
@limiter.limit(rate("ratelimit_status"), exempt_when=unlimited("ratelimit_status"))
def stream_status(stream_id: str) -> Response:
    return jsonify(_public(_info_or_404(current_gateway(), stream_id), stream_id))


@bp.delete("/streams/<stream_id>")
@limiter.limit(rate("ratelimit_cancel"), exempt_when=unlimited("ratelimit_cancel"))
def cancel_stream(stream_id: str) -> tuple[Response, int]:
    gateway = current_gateway()
    info = _info_or_404(gateway, stream_id)
    if info.status != RUNNING:
        return jsonify(_public(info, stream_id)), 200
    info = gateway.broker.cancel(info.stream_id, "deleted") or info
    return jsonify(_public(info, stream_id)), 202


def _position(raw: str | None) -> int | None:
    """The event id a client last saw (None: none); ASCII digits only, else 400."""
    if raw is None or raw == "":
        return None
    if not EVENT_ID.fullmatch(raw):
        raise InvalidRequest("last_event_id: must be an event id (ASCII digits, at most 18)",
                             param="last_event_id")
    return int(raw)


def _follow(gateway: Gateway, stream_id: str, info: StreamInfo, after: int) -> Response:
    """Answer a reader of ``info`` from position ``after``: 204 past the end, else SSE."""
    if after >= info.last_event_id and info.status in ENDED:
        # Nothing will ever follow: 204 makes a browser's EventSource stop
        # reconnecting (a 200 with no event would have it come back forever).
        response = Response(status=204, headers={"X-Stream-ID": stream_id})
        del response.headers["Content-Type"]
        return response
    if after > info.last_event_id:
        raise Gone(f"event {after} is past the last event of this stream "
                   f"({info.last_event_id}); the store lost it", param="last_event_id")
    key = info.stream_id
    try:  # read now: a position that is gone must answer 410, before any byte
        first = gateway.broker.read(key, after, timeout=0)
    except PositionGone:
        raise Gone(f"events after {after} are no longer kept; start a new stream",
                   param="last_event_id") from None
    except StreamNotFound:
        raise NotFound(f"no stream {stream_id!r}") from None
    settings = gateway.settings
    try:
        lease = gateway.broker.attach_reader(key, caller(), settings.streams.max_readers_per_stream,
                                             settings.streams.max_readers_per_key)
    except ReadersRefused as refused:
        raise _too_many_readers(refused.scope, refused.limit) from None
    return _sse_response(gateway, stream_id, key, after=after, lease=lease,
                         provider=info.model.partition("/")[0], first=first)


def _too_many_readers(scope: str, limit: int) -> TooManyReaders:
    whose = "this stream" if scope == "stream" else "one key"
    return TooManyReaders(f"at most {limit} readers may follow {whose} at once; "
                          "close one first", retry_after=1)


def _scoped(stream_id: str) -> str:
    """The broker's key of a caller's stream: each owner has its own ids, so a
    client-chosen id neither collides with nor reveals another key's stream."""
    scope = owner()
    return f"{scope}.{stream_id}" if scope else stream_id


def _owned(gateway: Gateway, stream_id: str, *, confirm: bool = False) -> StreamInfo | None:
    """The caller's stream of this id, or None."""
    info = gateway.broker.info(_scoped(stream_id), confirm=confirm)
    if info is None or not hmac.compare_digest(info.owner, owner()):
        return None
    return info


def _info_or_404(gateway: Gateway, stream_id: str) -> StreamInfo:
    """The stream, if it exists and the caller owns it; another key's is as unknown."""
    # confirm: a stream whose producer died is reported ended (stream_lost),
    # not running, by this very look.
    info = _owned(gateway, stream_id, confirm=True)
    if info is None:
        raise NotFound(f"no stream {stream_id!r}")
    return info


def _public(info: StreamInfo, stream_id: str) -> dict[str, object]:
    """The status body, naming the stream by the id its client knows."""
    return {**info.public(), "stream_id": stream_id}


def _sse_response(gateway: Gateway, stream_id: str, key: str, *, after: int, lease: str,
                  provider: str, first: Batch | None = None) -> Response:
    settings = gateway.settings
    feed = Feed(gateway.broker, key, after=after, lease=lease,
                heartbeat_s=settings.streams.heartbeat_s, retry_ms=settings.streams.retry_ms,
                provider=provider, write_timeout_s=settings.streams.write_timeout_s, first=first,
                client_socket=request.environ.get("gunicorn.socket"))
    return Response(feed, status=200, content_type="text/event-stream; charset=utf-8", headers={
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        "X-Stream-ID": stream_id,
        "Location": f"/v1/streams/{stream_id}",
    })
