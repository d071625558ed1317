"""Operations routes: liveness, readiness and the model list."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app.api import current_streams
from app.limits import limiter, rate, unlimited
from sse_gateway import metrics
from sse_gateway.errors import StoreUnreachable

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Can this worker serve: its broker answers, it is not draining; and with what."""
    streams = current_streams()
    body = {"status": "ok", "broker": streams.config.broker_url.split("://")[0],
            "providers": streams.providers()}
    try:
        streams.ping()
    except StoreUnreachable:
        return jsonify({**body, "status": "unavailable", "broker": "unreachable"}), 503
    if streams.draining:
        return jsonify({**body, "status": "draining"}), 503
    return jsonify(body), 200


@bp.get("/metrics")
def metrics_() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


@bp.get("/v1/models")
@limiter.limit(rate("ratelimit_models"), exempt_when=unlimited("ratelimit_models"))
def models() -> Response:
    return jsonify({"data": current_streams().models()})
