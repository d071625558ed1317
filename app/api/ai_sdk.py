"""The Vercel AI SDK's chat routes: what ``useChat`` with ``DefaultChatTransport`` calls.

``POST /v1/ai-sdk/chat`` takes useChat's body (``id``: the chat id,
``messages`` of parts, ``trigger``, ``messageId``) plus an optional ``model``
(default ``DEFAULT_MODEL``) and any field of ``POST /v1/streams``, starts a
stream in the ``ai-sdk`` dialect (``sse_gateway/transports/ui_message_stream.py``)
and makes it its chat's current stream. ``GET .../<chat_id>/stream`` is
useChat's resume (204: that chat runs no stream), ``DELETE`` its Stop. Auth,
limits and error bodies are the stream routes' (``app/api/streams.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, jsonify, request

from app.api import current_gateway, current_streams
from app.api.caller import caller, key_id, owner
from app.api.streams import _read_body
from app.limits import limiter, rate, unlimited
from sse_gateway.errors import InvalidRequest, NotFound
from sse_gateway.flask.responses import sse_response
from sse_gateway.flask.views import parse_position
from sse_gateway.streams import Detached, Reader, Streams
from sse_gateway.transports import ui_message_stream as ui
from sse_gateway.validation import STREAM_ID

bp = Blueprint("ai_sdk", __name__, url_prefix="/v1/ai-sdk")
log = logging.getLogger(__name__)

CHAT_ID = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
# useChat's own fields: the rest of the body is POST /v1/streams'.
_CHAT_FIELDS = ("id", "messages", "trigger", "messageId")


def chat_request(body: Mapping[str, Any], default_model: str) -> tuple[str, dict[str, Any]]:
    """useChat's body as (chat id, a POST /v1/streams body); InvalidRequest names the field."""
    chat_id = body.get("id")
    if not isinstance(chat_id, str) or not CHAT_ID.fullmatch(chat_id):
        raise InvalidRequest("id: the chat id must be 1 to 128 characters of "
                             "A-Z a-z 0-9 _ . -", param="id")
    try:
        messages = ui.to_gateway_messages(body.get("messages"))
    except ui.MessagesError as exc:
        raise InvalidRequest(f"{exc.param}: {exc.message}", param=exc.param) from None
    request_body = {k: v for k, v in body.items() if k not in _CHAT_FIELDS}
    request_body["messages"] = messages
    request_body.setdefault("model", default_model)
    return chat_id, request_body


def start_chat(streams: Streams, body: Mapping[str, Any], *, owner: str, holder: str,
               caller: str, stream_id: str | None = None, location: str = "") -> Response:
    """Start useChat's request as a stream and answer it as a UI message stream.

    Shared by the gateway's route and the Flask extension's ``ai_sdk_chat``.
    """
    chat_id, request_body = chat_request(body, streams.config.the_default_model)
    dialect = ui.DIALECT_CONTINUE if ui.continues_assistant(body["messages"]) else ui.DIALECT
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    result = streams.start(lambda: streams.parse(request_body), owner=owner, holder=holder,
                           caller=caller, stream_id=stream_id, digest=digest, dialect=dialect)
    if isinstance(result, Detached):
        raise InvalidRequest("detach: useChat reads the answer of its request", param="detach")
    if isinstance(result, Reader) and result.started:
        streams.set_chat(owner, chat_id, result.stream_id)
    return sse_response(streams, result, location, headers=dict(ui.HEADERS))


@bp.post("/chat")
@limiter.limit(rate("ratelimit_create"), exempt_when=unlimited("ratelimit_create"))
def chat() -> Response:
    raw = _read_body(current_gateway().settings)
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    requested = request.headers.get("X-Stream-ID") or None
    if requested is not None and not STREAM_ID.fullmatch(requested):
        raise InvalidRequest("X-Stream-ID: must be 16 to 128 characters of A-Z a-z 0-9 _ -",
                             param="X-Stream-ID")
    streams = current_streams()
    response = _started(streams, body, requested)
    token = current_gateway().tokens.issue(owner(), response.headers["X-Stream-ID"])
    response.headers["X-Stream-Token"] = token
    return response


def _started(streams: Streams, body: dict[str, Any], requested: str | None) -> Response:
    response = start_chat(streams, body, owner=owner(), holder=caller(),
                          caller=key_id() or request.remote_addr or "", stream_id=requested)
    stream_id = response.headers["X-Stream-ID"]
    response.headers["Location"] = f"/v1/ai-sdk/chat/{body['id']}/stream"
    log.info("chat %s: stream %s for %s (%s)", body["id"], stream_id, request.remote_addr,
             key_id() or "open")
    return response


@bp.get("/chat/<chat_id>/stream")
@limiter.limit(rate("ratelimit_events"), exempt_when=unlimited("ratelimit_events"))
def resume_chat(chat_id: str) -> Response:
    """The chat's running stream from the start (or after Last-Event-ID); 204 if none runs."""
    position = parse_position(request.headers.get("Last-Event-ID"))
    streams = current_streams()
    stream_id = streams.chat_stream(owner(), chat_id)
    if stream_id is None:
        response = Response(status=204)
        del response.headers["Content-Type"]
        return response
    result = streams.follow(stream_id, owner(), position, caller())
    return sse_response(streams, result, "", headers=dict(ui.HEADERS))


@bp.delete("/chat/<chat_id>/stream")
@limiter.limit(rate("ratelimit_cancel"), exempt_when=unlimited("ratelimit_cancel"))
def stop_chat(chat_id: str) -> tuple[Response, int]:
    """Cancel the chat's current stream: 202 asked, 200 it had ended, 404 none."""
    streams = current_streams()
    stream_id = streams.chat_stream(owner(), chat_id, running=False)
    if stream_id is None:
        raise NotFound(f"no stream for chat {chat_id!r}")
    info, asked = streams.cancel(stream_id, owner())
    return jsonify(info.public()), 202 if asked else 200
