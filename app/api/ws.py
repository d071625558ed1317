"""``GET /v1/ws``: the streams over one WebSocket (flask-sock on gunicorn's gevent worker).

Authentication is the other ``/v1`` routes' (``caller.authenticate`` runs
before the upgrade, so a missing or wrong key is a plain ``401`` answer): an
API key, or a stream token, whose socket may only resume and cancel its own
stream; a browser, which cannot send headers, offers the subprotocols
``sse-gateway`` and ``bearer.<key or token>`` (or a token as ``?token=``).
Each frame's action counts against the same rate as its HTTP route, in the
same bucket (a start as a ``POST /v1/streams``): using both gives a client
no more. Opening a socket counts against ``RATELIMIT_EVENTS`` in a bucket of
its own, and an open socket is one of its key's readers
(``MAX_READERS_PER_KEY``): both answer ``429`` before the upgrade. The frames and the socket's life are
``sse_gateway.transports.websocket``.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, g, request
from flask_sock import Sock

from app.api import current_gateway, current_streams
from app.api import streams as stream_routes
from app.api.caller import caller, key_id, owner, stream_token
from app.limits import hit_route_limit
from sse_gateway.transports.websocket import (
    CANCEL,
    RESUME,
    START,
    Access,
    Session,
    SimpleWebSocket,
)

bp = Blueprint("ws", __name__, url_prefix="/v1")
sock = Sock()
log = logging.getLogger(__name__)

# Each action's rate setting and the route whose bucket it shares.
_RATES = {
    START: ("ratelimit_create", f"{stream_routes.bp.name}.create_stream"),
    RESUME: ("ratelimit_events", f"{stream_routes.bp.name}.stream_events"),
    CANCEL: ("ratelimit_cancel", f"{stream_routes.bp.name}.cancel_stream"),
}


# The subprotocol the server picks when a client offers it: a browser that
# authenticates with a ``bearer.<key>`` subprotocol must be answered one.
SUBPROTOCOL = "sse-gateway"


def server_options(heartbeat_s: float, max_message_size: int) -> dict[str, Any]:
    """flask-sock's ``SOCK_SERVER_OPTIONS``: a ping every heartbeat (keeps nginx from
    cutting an idle socket, drops a peer that stopped answering), a frame over the
    body limit closes the socket with 1009 before it is buffered whole, and
    ``sse-gateway`` is the subprotocol chosen when offered."""
    return {"ping_interval": heartbeat_s, "max_message_size": max_message_size,
            "subprotocols": [SUBPROTOCOL]}


@bp.before_request
def _admit() -> None:
    """Before the upgrade (``authenticate`` has run; refused keys count there):
    opening a socket is rated like opening an events stream (its own bucket),
    and the socket takes its place among its key's readers."""
    if request.endpoint == f"{bp.name}.websocket":
        hit_route_limit("ratelimit_events", f"{bp.name}.websocket")
        g.socket_held = current_streams().hold_socket(caller())


@bp.teardown_request
def _release(exc: BaseException | None) -> None:
    """The socket's place goes back (its session gave it back already, unless the
    upgrade failed)."""
    held = g.pop("socket_held", None)
    if held is not None:
        held.release()


@sock.route("/ws", bp=bp)  # type: ignore[untyped-decorator]  # flask-sock has no hints
def websocket(ws: Any) -> None:
    streams = current_streams()
    token = stream_token()
    access = Access(owner=owner(), holder=caller(),
                    caller=key_id() or request.remote_addr or "",
                    only_stream=token.stream_id if token is not None else None)
    connection = SimpleWebSocket(ws, streams.config.write_timeout_s)
    Session(connection, streams, access, check=_check,
            max_frame_bytes=current_gateway().settings.max_content_length,
            held=g.get("socket_held")).run()


def _check(action: str) -> None:
    setting, endpoint = _RATES[action]
    hit_route_limit(setting, endpoint)
