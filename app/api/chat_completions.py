"""OpenAI's chat completions over the gateway's streams: ``POST /v1/chat/completions``.

The body is OpenAI's (``sse_gateway.transports.openai_request``), mapped onto the
gateway's own and validated by the streams service, so the limits, keys, stream
ids (``X-Stream-ID``) and tokens are those of ``POST /v1/streams``. The stream is
created in the ``openai`` dialect (``openai+usage`` with
``stream_options.include_usage``), so ``GET /v1/streams/<id>/events`` resumes it
as the same chunks and ``DELETE /v1/streams/<id>`` cancels it.

``stream: true`` answers the chunks as they come; ``stream: false`` reads the
stream to its end inside the request and answers one ``chat.completion`` (or an
OpenAI error body: ``openai_chunks.status_of`` picks the status). A client that
leaves meanwhile cancels its stream at once, unless it named the stream
(``X-Stream-ID``): then the resume grace applies, and a retry of the same request
(the SDKs retry a dropped one) takes up the same stream. Errors outside a stream
use OpenAI's shape (``app/__init__.py`` picks it by this route's path).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import gevent
from flask import Blueprint, Response, jsonify, request

from app.api import current_gateway, current_streams
from app.api.caller import caller, key_id, owner
from app.api.streams import read_body, requested_stream_id
from app.limits import limiter, rate, unlimited
from sse_gateway.errors import InvalidRequest, StreamsError
from sse_gateway.flask.responses import sse_response
from sse_gateway.flask.views import parse_position
from sse_gateway.streams import Detached, Reader, Streams
from sse_gateway.transports import openai_request
from sse_gateway.transports.openai_chunks import OPENAI, OPENAI_USAGE, Completion
from sse_gateway.transports.sse_feed import SocketWatch
from sse_gateway.validation import InvalidBody, StreamRequest

PATH = "/v1/chat/completions"
bp = Blueprint("chat_completions", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)


@bp.post("/chat/completions")
@limiter.limit(rate("ratelimit_create"), exempt_when=unlimited("ratelimit_create"))
def create_completion() -> Response:
    streams = current_streams()
    raw = read_body(current_gateway().settings)
    requested = requested_stream_id()
    try:
        asked = openai_request.parse(raw)
    except InvalidBody as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None
    position = parse_position(request.headers.get("Last-Event-ID"))
    if position is not None and not asked.stream:
        raise InvalidRequest("Last-Event-ID: only a streamed request (stream: true) resumes",
                             param="Last-Event-ID")

    def validated() -> StreamRequest:
        try:
            return streams.parse(asked.body)
        except InvalidRequest as exc:  # named as the client sent it
            param, message = openai_request.param_of(exc.param, exc.message, asked.renamed)
            raise type(exc)(message, param=param) from None

    result = streams.start(validated, owner=owner(), holder=caller(),
                           caller=key_id() or request.remote_addr or "", stream_id=requested,
                           digest=hashlib.sha256(raw).hexdigest(), position=position,
                           dialect=OPENAI_USAGE if asked.include_usage else OPENAI)
    assert not isinstance(result, Detached)  # the dialect takes no "detach"
    if isinstance(result, Reader) and result.started:
        log.info("stream %s: %s for %s (%s), chat completion%s", result.stream_id, result.model,
                 request.remote_addr, key_id() or "open", "" if asked.stream else ", unstreamed")
    token = current_gateway().tokens.issue(owner(), result.stream_id)
    headers = {"X-Stream-Token": token}
    if asked.stream or not isinstance(result, Reader):
        return sse_response(streams, result, f"/v1/streams/{result.stream_id}", headers=headers)
    body, status = _read_to_end(streams, result, cancel_on_leave=requested is None)
    response = jsonify(body)
    response.status_code = status
    response.headers.update({**headers, "X-Stream-ID": result.stream_id})
    return response


def _read_to_end(streams: Streams, reader: Reader, *, cancel_on_leave: bool
                 ) -> tuple[dict[str, Any], int]:
    """The stream read to its terminal event, as a ``chat.completion`` or an error body."""
    stream_id, who = reader.stream_id, owner()

    def gone() -> None:  # in the hub: nothing here may block
        log.info("stream %s: the client of an unstreamed completion left", stream_id)
        reader.abandon()
        if cancel_on_leave:  # nobody can take this answer up again
            gevent.spawn(_cancel, streams, stream_id, who)

    sock = request.environ.get("gunicorn.socket")
    watch = SocketWatch(sock, gone) if sock is not None else None
    completion = Completion()
    try:
        for batch in reader.batches():
            completion.add(batch.events)
    finally:
        if watch is not None:
            watch.close()
        reader.close()
    if not completion.ended:  # the reader stopped first: the client left, or the stream expired
        return completion.body(), 499 if reader.abandoned else 500
    return completion.body(), completion.status


def _cancel(streams: Streams, stream_id: str, who: str) -> None:
    try:
        streams.cancel(stream_id, who, "client_disconnected")
    except StreamsError as exc:
        log.info("stream %s: not cancelled after its client left (%s)", stream_id, exc.code)
