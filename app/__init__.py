"""The app factory: settings, broker, providers, blueprints, error handlers."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, jsonify, request
from flask_cors import CORS
from flask_limiter.errors import RateLimitExceeded
from pythonjsonlogger.json import JsonFormatter
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from app.errors import (
    InternalError,
    MethodNotAllowed,
    PayloadTooLarge,
    RateLimited,
    UnsupportedMediaType,
    answer,
)
from sse_gateway import metrics
from sse_gateway.broker import BrokerUnavailable
from sse_gateway.errors import NotFound, StoreUnreachable, StreamsError
from sse_gateway.events import CODES
from sse_gateway.flask.responses import error_body
from sse_gateway.transports import openai_chunks

log = logging.getLogger(__name__)


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the gateway; ``overrides`` win over the environment and ``config``."""
    from app.api import Gateway, ai_sdk, chat_completions, ops, streams, web, ws
    from app.api.caller import authenticate
    from app.limits import limiter
    from app.security import Keys
    from app.settings import Settings
    from app.tokens import StreamTokens, secret
    from sse_gateway.flask import CONFIG_PREFIX, Streaming
    from sse_gateway_client.cli import stream_command

    settings = Settings.load(overrides=overrides)
    _configure_logging(settings.log_level, settings.log_format)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if settings.trusted_proxies:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]
    # The engine's settings, as the Flask extension reads them (SSE_GATEWAY_*):
    # the environment's variables mapped onto them. Its routes are the gateway's own.
    app.config.update({CONFIG_PREFIX + f.name.upper(): getattr(settings.streams, f.name)
                       for f in dataclasses.fields(settings.streams)})
    Streaming(url_prefix=None).init_app(app)
    service = app.extensions["sse_gateway"].streams
    keys = Keys(settings.all_api_keys())
    tokens = StreamTokens(secret(settings.stream_token_secret, keys.digests),
                          settings.stream_token_ttl_s)
    app.extensions["gateway"] = Gateway(settings, keys, tokens)
    # Registered before the limiter's and CORS's own, so it runs after them.
    app.after_request(_response_headers)
    # Rates are counted where streams live: in Redis when there is one.
    app.config["RATELIMIT_STORAGE_URI"] = settings.streams.redis_url or "memory://"
    limiter.init_app(app)  # route limits; refused keys are counted by authenticate
    app.before_request(authenticate)
    if settings.cors_origins:
        CORS(app, resources={r"/v1/*": {"origins": list(settings.cors_origins)}},
             allow_headers=["Authorization", "Content-Type", "X-Stream-ID", "Last-Event-ID"],
             expose_headers=["X-Stream-ID", "X-Stream-Token", "Location", "Retry-After",
                             "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"],
             methods=["GET", "POST", "DELETE"], max_age=600)
    app.register_blueprint(streams.bp)
    app.register_blueprint(ai_sdk.bp)
    app.register_blueprint(chat_completions.bp)
    app.config["SOCK_SERVER_OPTIONS"] = ws.server_options(settings.streams.heartbeat_s,
                                                          settings.max_content_length)
    app.register_blueprint(ws.bp)  # GET /v1/ws
    app.register_blueprint(ops.bp)
    app.register_blueprint(web.bp)
    app.cli.add_command(stream_command)  # `flask --app app stream "prompt"`
    _register_error_handlers(app)
    if keys.open:
        log.warning("no API keys configured (API_KEYS, API_KEYS_FILE): the gateway runs "
                    "open, for development only%s",
                    "" if settings.stream_token_secret else
                    "; stream tokens are signed with a fixed development secret that anyone "
                    "can use (set STREAM_TOKEN_SECRET)")
    log.info("gateway ready: broker %s, models %s", settings.streams.broker_url.split("://")[0],
             ", ".join(m["id"] for m in service.models() if m.get("available", True)))
    return app


def _response_headers(response: Response) -> Response:
    """Headers every answer gets right, whatever produced it.

    flask-limiter sends ``Retry-After`` with every response when its headers
    are on; it means "wait" and belongs only to 429 and 503. With CORS on, an
    answer differs by ``Origin`` (allowed or not), so caches must key on it.
    """
    from app.api import current_gateway

    if response.status_code not in (429, 503):
        response.headers.pop("Retry-After", None)
    if current_gateway().settings.cors_origins:
        response.vary.add("Origin")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def _configure_logging(level: str, form: str) -> None:
    """The app's loggers: text for people, or one JSON object a line (with the
    structured fields of records such as a stream's end). No line ever holds a
    stream token (``config/logs.py``): nor does the development server's
    request line (``flask run``), which prints query strings."""
    from config.logs import ScrubTokens

    handler = logging.StreamHandler()
    handler.addFilter(ScrubTokens())
    werkzeug = logging.getLogger("werkzeug")
    if not any(isinstance(f, ScrubTokens) for f in werkzeug.filters):
        werkzeug.addFilter(ScrubTokens())
    if form == "json":
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "process": "pid"}))
    else:
        handler.setFormatter(_TextFormatter(
            "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"))
    for name in ("app", "sse_gateway"):  # the gateway's loggers, and the engine's
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(level.upper())


# C0 and C1 control characters (and DEL), as the escapes a reader can see.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}


class _TextFormatter(logging.Formatter):
    """One line per record: control characters in a message (a client's value
    that slipped through) are escaped, so nothing can forge or colour a line.
    A traceback, appended after this, keeps its line breaks."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_CONTROLS)


def _register_error_handlers(app: Flask) -> None:
    from app.api.chat_completions import PATH as OPENAI_PATH  # answered in OpenAI's shape

    by_status: dict[int, type[StreamsError]] = {404: NotFound, 405: MethodNotAllowed,
                                                413: PayloadTooLarge, 415: UnsupportedMediaType}

    @app.errorhandler(StreamsError)
    def refused(exc: StreamsError) -> tuple[Response, int, dict[str, str]]:
        if exc.code in ("rate_limited", "too_many_streams", "too_many_readers", "overloaded"):
            metrics.REJECTIONS.labels(exc.code).inc()
        body, status, headers = answer(exc)
        if request.path == OPENAI_PATH:  # the OpenAI dialect's route answers in its shape
            body = openai_chunks.error_body(exc.code, exc.message, exc.param, status)
            headers["x-should-retry"] = "true" if CODES[exc.code].retryable else "false"
        return jsonify(body), status, headers

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int, dict[str, str]]:
        status = exc.code or 500
        cls = by_status.get(status)
        if cls is not None:
            return refused(cls(_HTTP_MESSAGES[status]))
        code = "invalid_request" if status < 500 else "internal_error"
        if request.path == OPENAI_PATH:
            return jsonify(openai_chunks.error_body(code, exc.name, None, status)), status, {}
        return jsonify(error_body(code, exc.name)), status, {}

    @app.errorhandler(RateLimitExceeded)
    def rate_limited(exc: RateLimitExceeded) -> tuple[Response, int, dict[str, str]]:
        return refused(RateLimited(f"rate limit exceeded ({exc.description}); slow down"))

    @app.errorhandler(BrokerUnavailable)
    def broker_down(exc: BrokerUnavailable) -> tuple[Response, int, dict[str, str]]:
        # The service answers this itself; a store call outside it lands here.
        log.warning("broker unavailable: %s", exc)
        return refused(StoreUnreachable())

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int, dict[str, str]]:
        log.exception("unhandled error")
        return refused(InternalError("the gateway failed; the error is in its log"))


_HTTP_MESSAGES = {
    404: "no such route",
    405: "this method is not allowed on this route",
    413: "the request body is too large",
    415: "unsupported media type",
}
