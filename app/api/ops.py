"""Operations routes: liveness, readiness and the model list."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from app.broker import BrokerError
from app.gateway import Gateway
from app.limits import limiter, rate, unlimited

bp = Blueprint("ops", __name__)


def _gateway() -> Gateway:
    gateway: Gateway = current_app.extensions["gateway"]
    return gateway


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    gateway = _gateway()
    try:
        gateway.broker.ping()
    except BrokerError:
        return jsonify({"status": "unavailable", "broker": "unreachable"}), 503
    if gateway.pumps.draining:
        return jsonify({"status": "draining"}), 503
    return jsonify({"status": "ok"}), 200


@bp.get("/v1/models")
@limiter.limit(rate("ratelimit_models"), exempt_when=unlimited("ratelimit_models"))
def models() -> Response:
    return jsonify({"data": _gateway().catalog.listing()})
