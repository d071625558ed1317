"""The conversations the gateway keeps: ``GET`` and ``DELETE /v1/conversations/<id>``.

A stream started with ``conversation_id`` adds its messages and its answer to
its owner's conversation of that id (``sse_gateway/streams/conversations.py``).
These routes read it and forget it, for its owner only: another key's
conversation, an expired or an unknown one answer 404 alike. They take an API
key; a stream token opens none of them (``app/api/caller.py``). Rates are the
status route's (``GET``) and the cancel route's (``DELETE``).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app.api import current_streams
from app.api.caller import owner
from app.limits import limiter, rate, unlimited

bp = Blueprint("conversations", __name__, url_prefix="/v1")


@bp.get("/conversations/<conversation_id>")
@limiter.limit(rate("ratelimit_status"), exempt_when=unlimited("ratelimit_status"))
def get_conversation(conversation_id: str) -> Response:
    """``{"conversation_id", "messages": [every kept turn, as stored]}``."""
    turns = current_streams().conversation(owner(), conversation_id)
    return jsonify({"conversation_id": conversation_id, "messages": turns})


@bp.delete("/conversations/<conversation_id>")
@limiter.limit(rate("ratelimit_cancel"), exempt_when=unlimited("ratelimit_cancel"))
def forget_conversation(conversation_id: str) -> Response:
    """204: forgotten (the next stream with this id starts a new conversation)."""
    current_streams().forget_conversation(owner(), conversation_id)
    response = Response(status=204)
    del response.headers["Content-Type"]
    return response
