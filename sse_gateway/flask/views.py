"""The extension's blueprint: follow (resume), status and cancel of one's own streams.

Every route asks the app's owner callable who is calling (401 when nobody);
another owner's stream answers 404, as an unknown one. Errors are the
product's JSON bodies, on this blueprint only.
"""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from sse_gateway.errors import InvalidRequest, StreamsError
from sse_gateway.flask.responses import error_response, sse_response
from sse_gateway.validation import EVENT_ID


def blueprint(name: str, *, cors_origins: tuple[str, ...] = ()) -> Blueprint:
    """A fresh blueprint (one per app that mounts it)."""
    from sse_gateway.flask import current_owner, follow_url, holder, state

    bp = Blueprint(name, __name__)

    @bp.before_request
    def who() -> None:
        g.sse_gateway_owner = current_owner(state())

    @bp.get("/<stream_id>/events")
    def events(stream_id: str) -> Response:
        raw = request.headers.get("Last-Event-ID")
        position = parse_position(request.args.get("last_event_id") if raw is None else raw)
        current = state()
        owner = g.sse_gateway_owner
        result = current.streams.follow(stream_id, owner, position, holder(owner))
        return sse_response(current.streams, result, follow_url(current, result))

    @bp.get("/<stream_id>")
    def status(stream_id: str) -> Response:
        streams = state().streams
        owner = g.sse_gateway_owner
        body = streams.info(stream_id, owner).public()
        if "message" in request.args.getlist("include"):
            body["message"] = streams.message(stream_id, owner).public()
        return jsonify(body)

    @bp.delete("/<stream_id>")
    def cancel(stream_id: str) -> tuple[Response, int]:
        info, asked = state().streams.cancel(stream_id, g.sse_gateway_owner)
        return jsonify(info.public()), 202 if asked else 200

    bp.register_error_handler(StreamsError, error_response)
    if cors_origins:
        from flask_cors import CORS

        CORS(bp, origins=list(cors_origins), supports_credentials=True,
             allow_headers=["Content-Type", "Last-Event-ID"], expose_headers=["X-Stream-ID"],
             methods=["GET", "DELETE"])
    return bp


def parse_position(raw: str | None) -> int | None:
    """The event id a client last saw (None: none); ASCII digits only, else 400."""
    if raw is None or raw == "":
        return None
    if not EVENT_ID.fullmatch(raw):
        raise InvalidRequest("last_event_id: must be an event id (ASCII digits, at most 18)",
                             param="last_event_id")
    return int(raw)
