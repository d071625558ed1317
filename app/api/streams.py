"""The stream routes: create, follow (resume), status and cancel.

Views read everything they need from the request, then hand plain values to
the pump and the feed; nothing below this module touches ``request``.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time

from flask import Blueprint, Response, jsonify, request

from app.api import current_gateway
from app.api.caller import caller, key_id, owner
from app.broker import RUNNING, Batch, PositionGone, StreamInfo, StreamNotFound
from app.errors import (
    Gone,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    StreamExists,
    TooManyStreams,
    UnknownModel,
    UnsupportedMediaType,
)
from app.feed import Feed
from app.gateway import Gateway
from app.limits import limiter, rate, unlimited
from app.providers import ModelUnavailable
from app.pump import Pump
from app.settings import Settings
from app.upstream import Candidate
from app.validation import InvalidBody, StreamRequest, parse_stream_request

bp = Blueprint("streams", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)

STREAM_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")


@bp.post("/streams")
@limiter.limit(rate("ratelimit_create"), exempt_when=unlimited("ratelimit_create"))
def create_stream() -> Response:
    gateway = current_gateway()
    settings = gateway.settings
    body = _read_body(settings)
    candidates = [_candidate(gateway, model, body, "model" if i == 0 else f"fallbacks.{i - 1}")
                  for i, model in enumerate((body.model, *body.fallbacks))]
    stream_id = request.headers.get("X-Stream-ID") or secrets.token_urlsafe(18)
    if not STREAM_ID.fullmatch(stream_id):
        raise InvalidRequest("X-Stream-ID: must be 16 to 128 characters of A-Z a-z 0-9 _ -",
                             param="X-Stream-ID")
    if gateway.pumps.draining:
        raise Overloaded("this instance is shutting down; retry", retry_after=1)
    if len(gateway.pumps) >= settings.max_active_streams:
        raise Overloaded("this worker is at its stream limit; retry", retry_after=1)
    slot_owner = caller() if settings.max_streams_per_key else None
    if slot_owner and not gateway.broker.take_slot(slot_owner, stream_id,
                                                   settings.max_streams_per_key):
        raise TooManyStreams(f"at most {settings.max_streams_per_key} streams may run at once "
                             "for one key; wait for one to end", retry_after=1)
    created = round(time.time(), 3)
    try:
        if not gateway.broker.create(StreamInfo(stream_id, owner=owner(), model=body.model,
                                                created=created)):
            raise StreamExists(f"a stream with id {stream_id!r} already exists",
                               param="X-Stream-ID")
        lease = gateway.broker.attach_reader(stream_id)
    except Exception:
        if slot_owner:
            gateway.broker.release_slot(slot_owner, stream_id)
        raise
    log.info("stream %s: %s for %s (%s)", stream_id, body.model, request.remote_addr,
             key_id() or "open")
    grace = settings.resume_grace_s if body.resume_grace_s is None else body.resume_grace_s
    gateway.pumps.start(Pump(
        broker=gateway.broker, candidates=candidates, policy=gateway.retry_policy,
        stream_id=stream_id, created=created, grace_s=grace,
        tick_s=settings.producer_timeout_s / 4, stream_timeout_s=settings.stream_timeout_s,
        slot_owner=slot_owner, caller=key_id() or request.remote_addr or "",
        on_exit=gateway.pumps.discard))
    return _sse_response(gateway, stream_id, after=-1, lease=lease,
                         provider=candidates[0].provider.name)


def _read_body(settings: Settings) -> StreamRequest:
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    raw = request.get_data(cache=False)  # 413 when Content-Length is over the limit
    if request.content_length is None and len(raw) >= settings.max_content_length:
        # A chunked body is cut at the limit, not refused: refuse it here.
        raise PayloadTooLarge("the request body is too large")
    try:
        return parse_stream_request(raw, max_tokens_limit=settings.max_tokens_limit,
                                    max_messages=settings.max_messages,
                                    max_resume_grace_s=settings.max_resume_grace_s)
    except InvalidBody as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None


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
@limiter.limit(rate("ratelimit_status"), exempt_when=unlimited("ratelimit_status"))
def stream_status(stream_id: str) -> Response:
    return jsonify(_info_or_404(current_gateway(), stream_id).public())


@bp.delete("/streams/<stream_id>")
@limiter.limit(rate("ratelimit_cancel"), exempt_when=unlimited("ratelimit_cancel"))
def cancel_stream(stream_id: str) -> tuple[Response, int]:
    gateway = current_gateway()
    info = _info_or_404(gateway, stream_id)
    if info.status != RUNNING:
        return jsonify(info.public()), 200
    info = gateway.broker.cancel(stream_id, "deleted") or info
    return jsonify(info.public()), 202


def _info_or_404(gateway: Gateway, stream_id: str) -> StreamInfo:
    """The stream, if it exists and the caller owns it; another key's is as unknown."""
    # confirm: a stream whose producer died is reported ended (stream_lost),
    # not running, by this very look.
    info = gateway.broker.info(stream_id, confirm=True)
    if info is None or not hmac.compare_digest(info.owner, owner()):
        raise NotFound(f"no stream {stream_id!r}")
    return info


def _sse_response(gateway: Gateway, stream_id: str, *, after: int, lease: str,
                  provider: str, first: Batch | None = None) -> Response:
    settings = gateway.settings
    feed = Feed(gateway.broker, stream_id, after=after, lease=lease,
                heartbeat_s=settings.heartbeat_s, retry_ms=settings.retry_ms,
                provider=provider, write_timeout_s=settings.write_timeout_s, first=first,
                client_socket=request.environ.get("gunicorn.socket"))
    return Response(feed, status=200, content_type="text/event-stream; charset=utf-8", headers={
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        "X-Stream-ID": stream_id,
        "Location": f"/v1/streams/{stream_id}",
    })
