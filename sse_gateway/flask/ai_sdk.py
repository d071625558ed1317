"""The AI SDK's chat (``useChat`` with ``DefaultChatTransport``) as Flask answers.

Shared by the gateway's routes (``app/api/ai_sdk.py``) and the extension's
``Streaming.ai_sdk_chat``/``ai_sdk_resume``/``ai_sdk_stop`` (a host's own
route, e.g. ``/api/chat``, with the host's owner). The wire format is
``sse_gateway/transports/ui_message_stream.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from flask import Response, jsonify

from sse_gateway.errors import InvalidRequest, NotFound
from sse_gateway.flask.responses import sse_response
from sse_gateway.streams import Detached, Reader, Streams
from sse_gateway.transports import ui_message_stream as ui

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
    if body.get("detach") is not None:  # refused before anything starts (and is billed)
        raise InvalidRequest("detach: useChat reads the answer of its own request",
                             param="detach")
    if body.get("conversation_id") is not None:  # useChat sends the whole chat each time
        raise InvalidRequest("conversation_id: useChat sends the whole conversation with "
                             "each request; the gateway keeps none for it", param="conversation_id")
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
    assert not isinstance(result, Detached)  # chat_request refused "detach"
    if isinstance(result, Reader) and result.started:
        streams.set_chat(owner, chat_id, result.stream_id)
    return sse_response(streams, result, location, headers=dict(ui.HEADERS))


def resume_chat(streams: Streams, chat_id: str, *, owner: str, holder: str,
                position: int | None = None) -> Response:
    """useChat's resume: the chat's running stream from the start (or after
    ``position``); 204 when that chat runs none."""
    stream_id = streams.chat_stream(owner, chat_id)
    if stream_id is None:
        response = Response(status=204)
        del response.headers["Content-Type"]
        return response
    result = streams.follow(stream_id, owner, position, holder)
    return sse_response(streams, result, "", headers=dict(ui.HEADERS))


def stop_chat(streams: Streams, chat_id: str, *, owner: str) -> tuple[Response, int]:
    """useChat's Stop, on the server: cancel the chat's current stream (202 asked, 200 it
    had ended; NotFound when the chat has none)."""
    stream_id = streams.chat_stream(owner, chat_id, running=False)
    if stream_id is None:
        raise NotFound(f"no stream for chat {chat_id!r}")
    info, asked = streams.cancel(stream_id, owner)
    return jsonify(info.public()), 202 if asked else 200
