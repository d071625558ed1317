"""A team's own Flask app with the extension mounted: what tests/live/test_extension.py serves.

It stands for a host that already has its login, its error pages and its
routes, and adds streaming: ``GatewayServer(app="tests.live.host_app:app")``
runs it under the repository's gunicorn.conf.py (gevent worker). Everything
comes from its environment:

- ``FLASK_SSE_GATEWAY_*``: the extension's settings, read the Flask way
  (``app.config.from_prefixed_env()`` makes them ``SSE_GATEWAY_*``);
- ``HOST_PREFIX``: where the extension's blueprint is mounted (``/api/v2/llm``);
- ``HOST_HOOK_LOG``: the file the recording hook appends one JSON line to per
  ended stream (several processes may share it: one ``write`` of a line each);
- ``HOST_RAISING_HOOK=1`` / ``HOST_HANGING_HOOK=1``: also register a hook that
  raises, and one that hangs (registered before the recording one).

Importing this module builds nothing: ``app`` is made on first access (gunicorn's
worker does it, after gevent patched the standard library).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import gevent
from flask import Flask, Response, current_app, has_app_context, has_request_context, session
from flask import request as flask_request
from flask_sock import Sock

from sse_gateway import metrics
from sse_gateway.errors import InvalidRequest, StreamsError
from sse_gateway.flask import Streaming, error_response
from sse_gateway.results import StreamResult

NOT_FOUND_PAGE = "<!doctype html><title>Not here</title><h1>Host: no such page</h1>"
ERROR_PAGE = "<!doctype html><title>Oops</title><h1>Host: something broke</h1>"
HOME_PAGE = "<!doctype html><title>Host</title><h1>Host home</h1>"

streaming = Streaming()


def create_app() -> Flask:
    """The host's factory: its own login, pages and routes, then the extension."""
    app = Flask(__name__)
    app.secret_key = "host-test-secret"
    app.config.from_prefixed_env()  # FLASK_SSE_GATEWAY_X -> SSE_GATEWAY_X
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.errorhandler(404)
    def not_found(error: Exception) -> tuple[str, int]:
        return NOT_FOUND_PAGE, 404

    @app.errorhandler(500)
    def failed(error: Exception) -> tuple[str, int]:
        return ERROR_PAGE, 500

    @app.get("/")
    def home() -> str:
        return HOME_PAGE

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/login")
    def login() -> dict[str, str]:
        session["user"] = flask_request.get_json()["user"]
        return {"user": session["user"]}

    @app.post("/logout")
    def logout() -> dict[str, str]:
        session.clear()
        return {}

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("the host's own bug")

    @app.get("/metrics")
    def metrics_route() -> Response:
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    @app.post("/chat")
    def chat() -> Any:
        body = flask_request.get_json()
        options = {k: body[k] for k in ("resume_grace_s", "max_tokens") if k in body}
        try:
            return streaming.stream(
                model=body["model"], prompt=body["prompt"],
                metadata={"conversation": str(body.get("conversation", "")),
                          "user": str(session.get("user"))},
                **options)
        except InvalidRequest as exc:  # the host's own 400
            return {"host_error": {"field": exc.param, "problem": exc.message}}, 400
        except StreamsError as exc:
            return error_response(exc)

    # The host's own WebSocket route (flask-sock), under its own login.
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 5, "max_message_size": 1024 * 1024}
    sock = Sock(app)

    @sock.route("/ws")
    def ws(ws: Any) -> None:
        streaming.serve_websocket(ws)

    streaming.init_app(app, owner=lambda: session.get("user"),
                       url_prefix=os.environ.get("HOST_PREFIX", "/streams"))
    return app


def raising_hook(result: StreamResult) -> None:
    raise RuntimeError(f"the host's hook failed on {result.stream_id}")


def hanging_hook(result: StreamResult) -> None:
    gevent.sleep(3600)


if os.environ.get("HOST_RAISING_HOOK") == "1":
    streaming.on_end(raising_hook)
if os.environ.get("HOST_HANGING_HOOK") == "1":
    streaming.on_end(hanging_hook)


@streaming.on_end
def record_hook(result: StreamResult) -> None:
    """Append what the hook received, and where and when it ran, to HOST_HOOK_LOG."""
    started = time.time()
    path = os.environ.get("HOST_HOOK_LOG")
    if not path:
        return
    line = json.dumps({
        "stream_id": result.stream_id, "owner": result.owner, "status": result.status,
        "reason": result.reason, "model": result.model, "text": result.text,
        "usage": result.usage, "metadata": result.metadata, "ended": result.ended,
        "created": result.created, "started": started, "pid": os.getpid(),
        "app_context": has_app_context() and current_app.name == __name__,
        "request_context": has_request_context(),
    }) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


_app: Flask | None = None


def __getattr__(name: str) -> Flask:
    """``app``: the host app, built on first access."""
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        _app = create_app()
    return _app
