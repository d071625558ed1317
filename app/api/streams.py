"""The stream routes: create, follow (resume), status and cancel.

Views read everything they need from the request, then hand plain values to
the pump and the feed; nothing below this module touches ``request``.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from flask import Blueprint, Response, current_app, jsonify, request

from app.broker import RUNNING, Batch, PositionGone, StreamInfo, StreamNotFound
from app.errors import (
    Gone,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    StreamExists,
    UnknownModel,
    UnsupportedMediaType,
)
from app.feed import Feed
from app.gateway import Gateway
from app.providers import ModelUnavailable
from app.pump import Pump
from app.validation import InvalidBody, parse_stream_request

bp = Blueprint("streams", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)

STREAM_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")


def _gateway() -> Gateway:
    gateway: Gateway = current_app.extensions["gateway"]
    return gateway


@bp.post("/streams")
def create_stream() -> Response:
    gateway = _gateway()
    settings = gateway.settings
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    raw = request.get_data(cache=False)  # 413 when Content-Length is over the limit
    if request.content_length is None and len(raw) >= settings.max_content_length:
        # A chunked body is cut at the limit, not refused: refuse it here.
        raise PayloadTooLarge("the request body is too large")
    try:
        body = parse_stream_request(raw,
                                    max_tokens_limit=settings.max_tokens_limit,
                                    max_messages=settings.max_messages,
                                    max_resume_grace_s=settings.max_resume_grace_s)
    except InvalidBody as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None
    if body.fallbacks:
        raise InvalidRequest("fallbacks: not supported by this version yet", param="fallbacks")
    try:
        provider, provider_model = gateway.catalog.resolve(body.model)
    except ModelUnavailable as exc:
        raise UnknownModel(str(exc), param="model") from None
    stream_id = request.headers.get("X-Stream-ID") or secrets.token_urlsafe(18)
    if not STREAM_ID.fullmatch(stream_id):
        raise InvalidRequest("X-Stream-ID: must be 16 to 128 characters of A-Z a-z 0-9 _ -",
                             param="X-Stream-ID")
    if gateway.pumps.draining:
        raise Overloaded("this instance is shutting down; retry", retry_after=1)
    if len(gateway.pumps) >= settings.max_active_streams:
        raise Overloaded("this worker is at its stream limit; retry", retry_after=1)
    created = round(time.time(), 3)
    if not gateway.broker.create(StreamInfo(stream_id, owner="", model=body.model,
                                            created=created)):
        raise StreamExists(f"a stream with id {stream_id!r} already exists",
                           param="X-Stream-ID")
    lease = gateway.broker.attach_reader(stream_id)
    log.info("stream %s: %s for %s", stream_id, body.model, request.remote_addr)
    grace = settings.resume_grace_s if body.resume_grace_s is None else body.resume_grace_s
    gateway.pumps.start(Pump(broker=gateway.broker, provider=provider,
                             request=body.chat(provider_model), stream_id=stream_id,
                             model=body.model, created=created, grace_s=grace,
                             tick_s=settings.producer_timeout_s / 4,
                             on_exit=gateway.pumps.discard))
    return _sse_response(gateway, stream_id, after=-1, lease=lease, provider=provider.name)


@bp.get("/streams/<stream_id>/events")
def stream_events(stream_id: str) -> Response:
    gateway = _gateway()
    info = _info_or_404(gateway, stream_id)
    raw = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or ""
    try:
        after = int(raw.strip()) if raw.strip() else -1
    except ValueError:
        after = -2
    if after < -1:
        raise InvalidRequest("last_event_id: must be an event id (an integer >= 0)",
                             param="last_event_id")
    try:  # read now: a position that is gone must answer 410, before any byte
        first = gateway.broker.read(stream_id, after, timeout=0)
    except PositionGone:
        raise Gone(f"events after {after} are no longer kept; start a new stream",
                   param="last_event_id") from None
    except StreamNotFound:
        raise NotFound(f"no stream {stream_id!r}") from None
    lease = gateway.broker.attach_reader(stream_id)
    return _sse_response(gateway, stream_id, after=after, lease=lease,
                         provider=info.model.partition("/")[0], first=first)


@bp.get("/streams/<stream_id>")
def stream_status(stream_id: str) -> Response:
    return jsonify(_info_or_404(_gateway(), stream_id).public())


@bp.delete("/streams/<stream_id>")
def cancel_stream(stream_id: str) -> tuple[Response, int]:
    gateway = _gateway()
    info = _info_or_404(gateway, stream_id)
    if info.status != RUNNING:
        return jsonify(info.public()), 200
    info = gateway.broker.cancel(stream_id, "deleted") or info
    return jsonify(info.public()), 202


def _info_or_404(gateway: Gateway, stream_id: str) -> StreamInfo:
    info = gateway.broker.info(stream_id)
    if info is None:
        raise NotFound(f"no stream {stream_id!r}")
    return info


def _sse_response(gateway: Gateway, stream_id: str, *, after: int, lease: str,
                  provider: str, first: Batch | None = None) -> Response:
    settings = gateway.settings
    feed = Feed(gateway.broker, stream_id, after=after, lease=lease,
                heartbeat_s=settings.heartbeat_s, retry_ms=settings.retry_ms,
                provider=provider, first=first,
                client_socket=request.environ.get("gunicorn.socket"))
    return Response(feed, status=200, content_type="text/event-stream; charset=utf-8", headers={
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        "X-Stream-ID": stream_id,
        "Location": f"/v1/streams/{stream_id}",
    })
