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

import json
import logging
from typing import Any

from flask import Blueprint, Response, request

from app.api import current_gateway, current_streams
from app.api.caller import caller, key_id, owner
from app.api.streams import read_body
from app.limits import limiter, rate, unlimited
from sse_gateway.errors import InvalidRequest
from sse_gateway.flask.ai_sdk import resume_chat as resume
from sse_gateway.flask.ai_sdk import start_chat
from sse_gateway.flask.ai_sdk import stop_chat as stop
from sse_gateway.flask.views import parse_position
from sse_gateway.streams import Streams
from sse_gateway.validation import STREAM_ID

bp = Blueprint("ai_sdk", __name__, url_prefix="/v1/ai-sdk")
log = logging.getLogger(__name__)


@bp.post("/chat")
@limiter.limit(rate("ratelimit_create"), exempt_when=unlimited("ratelimit_create"))
def chat() -> Response:
    raw = read_body(current_gateway().settings)
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
    return resume(current_streams(), chat_id, owner=owner(), holder=caller(), position=position)


@bp.delete("/chat/<chat_id>/stream")
@limiter.limit(rate("ratelimit_cancel"), exempt_when=unlimited("ratelimit_cancel"))
def stop_chat(chat_id: str) -> tuple[Response, int]:
    """Cancel the chat's current stream: 202 asked, 200 it had ended, 404 none."""
    return stop(current_streams(), chat_id, owner=owner())
