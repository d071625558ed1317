"""The Flask extension: stream from your own views, under your own login.

    streaming = Streaming()

    def create_app():
        app = Flask(__name__)
        streaming.init_app(app, owner=lambda: current_user.get_id())
        return app

    @app.post("/chat")
    @login_required
    def chat():
        return streaming.stream(model="openai/gpt-4o-mini", messages=build_prompt(),
                                metadata={"conversation": "42"})

    @streaming.on_end
    def save(result):           # once per stream, after its end, with an app context
        db.save_reply(result.metadata["conversation"], result.text, result.status)

Settings come from ``app.config`` under ``SSE_GATEWAY_`` (each field of
``StreamsConfig``: ``SSE_GATEWAY_REDIS_URL``, ``SSE_GATEWAY_HEARTBEAT_S``, ...;
``app.config.from_prefixed_env()`` reads them from ``FLASK_SSE_GATEWAY_*``).
The state lives in ``app.extensions["sse_gateway"]``. Nothing is installed
app-wide: the blueprint (follow, status, cancel; mount it at any prefix) has
its own owner check, JSON errors and, when configured, CORS.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, request, url_for

from sse_gateway.config import StreamsConfig, parse_value
from sse_gateway.errors import InvalidRequest, StreamsError
from sse_gateway.flask import ai_sdk, views
from sse_gateway.flask.responses import error_response, sse_response
from sse_gateway.flask.views import parse_position
from sse_gateway.results import StreamResult
from sse_gateway.streams import Detached, NothingFollows, Reader, Streams
from sse_gateway.validation import STREAM_ID

__all__ = ["CONFIG_PREFIX", "NotSignedIn", "Streaming", "error_response"]

log = logging.getLogger(__name__)

CONFIG_PREFIX = "SSE_GATEWAY_"
# The extension's own settings besides StreamsConfig's.
_OWN_SETTINGS = {"CORS_ORIGINS": "tuple[str, ...]"}

Owner = Callable[[], "str | int | None"]
Hook = Callable[[StreamResult], None]


class NotSignedIn(StreamsError):
    """The owner callable found nobody signed in: 401."""

    code = "unauthorized"


@dataclass
class _State:
    """What one app holds of the extension: ``app.extensions["sse_gateway"]``."""

    streams: Streams
    owner: Owner | None
    blueprint: str | None  # the blueprint's name, where follow/status/cancel live


class Streaming:
    """The extension: ``Streaming(app)``, or ``Streaming()`` then ``init_app(app)``."""

    def __init__(self, app: Flask | None = None, *, owner: Owner | None = None,
                 url_prefix: str | None = "/streams", name: str = "sse_gateway") -> None:
        self._owner = owner
        self._url_prefix = url_prefix
        self._name = name
        self._hooks: list[Hook] = []
        # The apps bound so far, so a hook registered later reaches them too
        # (weakly: the extension must not keep an app alive).
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, owner: Owner | None = None,
                 url_prefix: Any = ..., streams: Streams | None = None
                 ) -> None:
        """Bind to ``app``: build its streams service from ``app.config`` and mount
        the blueprint at ``url_prefix`` (None: not mounted; the app serves its own).

        ``owner`` returns who the current request acts for (a user id), or None
        when nobody is signed in: each owner sees only its own streams; without
        an owner callable every stream is anyone's who knows its id.
        """
        prefix = self._url_prefix if url_prefix is ... else url_prefix
        assert prefix is None or isinstance(prefix, str)
        settings = {k: v for k, v in app.config.items() if k.startswith(CONFIG_PREFIX)}
        own = {name: parse_value(CONFIG_PREFIX + name, settings.pop(CONFIG_PREFIX + name),
                                 kind)
               for name, kind in _OWN_SETTINGS.items() if CONFIG_PREFIX + name in settings}
        if streams is None:
            streams = Streams(StreamsConfig.from_mapping(settings, CONFIG_PREFIX, _OWN_SETTINGS))
        state = _State(streams, owner or self._owner, self._name if prefix is not None else None)
        app.extensions["sse_gateway"] = state
        for hook in self._hooks:
            self._bind_hook(app, state, hook)
        if prefix is not None:
            bp = views.blueprint(self._name, cors_origins=own.get("CORS_ORIGINS", ()))
            app.register_blueprint(bp, url_prefix=prefix)
        self._apps.add(app)

    def on_end(self, hook: Hook) -> Hook:
        """Register ``hook(result)``: called once per stream after its terminal
        event, with an app context and outside any request, bounded by
        ``SSE_GATEWAY_END_HOOK_TIMEOUT_S`` (see ``Streams.on_end``)."""
        self._hooks.append(hook)
        for app in self._apps:
            self._bind_hook(app, app.extensions["sse_gateway"], hook)
        return hook

    @property
    def streams(self) -> Streams:
        """The current app's streams service (the engine)."""
        return state().streams

    def stream(self, *, model: str, messages: Sequence[dict[str, Any]] | None = None,
               prompt: str | None = None, metadata: dict[str, str] | None = None,
               owner: str | None = None, stream_id: str | None = None,
               **options: Any) -> Response:
        """Start a stream and answer it as SSE, from the host's own view.

        ``options`` are any field of ``POST /v1/streams`` (``max_tokens``,
        ``temperature``, ``fallbacks``, ``resume_grace_s``; not ``detach``: this
        answers the stream itself). The owner is the owner callable's (or
        ``owner``); ``stream_id``, if given, is 16 to 128 of ``A-Z a-z 0-9 _ -``.
        Raises ``InvalidRequest`` (``.param``, ``.message``; ``UnknownModel`` is
        one) for bad arguments, ``NotSignedIn`` when there is no owner, and the
        other ``StreamsError`` refusals (too many streams, overloaded);
        ``error_response(exc)`` turns any of them into the product's JSON answer.
        """
        if "detach" in options:
            raise InvalidRequest("detach: not accepted here: stream() answers with the stream "
                                 "itself", param="detach")
        if stream_id is not None and not STREAM_ID.fullmatch(stream_id):
            raise InvalidRequest("stream_id: must be 16 to 128 characters of A-Z a-z 0-9 _ -",
                                 param="stream_id")
        current = state()
        who = owner if owner is not None else current_owner(current)
        body: dict[str, Any] = {"model": model, **options}
        if messages is not None:
            body["messages"] = list(messages)
        if prompt is not None:
            body["prompt"] = prompt
        if metadata is not None:
            body["metadata"] = metadata
        streams = current.streams
        request_ = streams.parse(body)
        result = streams.start(request_, owner=who, holder=holder(who), stream_id=stream_id,
                               caller=request.remote_addr or "")
        assert not isinstance(result, Detached)  # refused above
        return sse_response(streams, result, follow_url(current, result))

    def ai_sdk_chat(self, body: Mapping[str, Any], *, owner: str | None = None) -> Response:
        """Answer the AI SDK's ``useChat`` (``DefaultChatTransport``) from the host's own
        route (e.g. ``POST /api/chat``): ``body`` is the request's JSON (``id``,
        ``messages`` of parts, ``trigger``, ``messageId``, plus an optional ``model``,
        default ``DEFAULT_MODEL``, and any field of ``POST /v1/streams``). Raises as
        ``stream`` does. Resume and Stop: ``ai_sdk_resume``, ``ai_sdk_stop``."""
        current = state()
        who = owner if owner is not None else current_owner(current)
        return ai_sdk.start_chat(current.streams, body, owner=who, holder=holder(who),
                                 caller=request.remote_addr or "")

    def ai_sdk_resume(self, chat_id: str, *, owner: str | None = None) -> Response:
        """useChat's resume (``GET <api>/<chat id>/stream``): the chat's running stream
        from the start, or 204 when it runs none."""
        current = state()
        who = owner if owner is not None else current_owner(current)
        position = parse_position(request.headers.get("Last-Event-ID"))
        return ai_sdk.resume_chat(current.streams, chat_id, owner=who, holder=holder(who),
                                  position=position)

    def ai_sdk_stop(self, chat_id: str, *, owner: str | None = None) -> tuple[Response, int]:
        """Cancel the chat's current stream (202; 200 when it had ended; NotFound when
        the chat has none)."""
        current = state()
        who = owner if owner is not None else current_owner(current)
        return ai_sdk.stop_chat(current.streams, chat_id, owner=who)

    def serve_websocket(self, ws: Any, *, owner: str | None = None) -> None:
        """Serve streams over a WebSocket from the host's own flask-sock route, under
        the host's login; returns when the socket closes.

            sock = Sock(app)  # with app.config["SOCK_SERVER_OPTIONS"] =
                              # {"ping_interval": 15, "max_message_size": 1024 * 1024}

            @sock.route("/ws")
            def ws(ws):
                streaming.serve_websocket(ws)

        The frames are ``GET /v1/ws``'s (``sse_gateway.transports.websocket``):
        start, resume and cancel by frame, every event of every followed stream
        as ``{"stream_id", "id", "event", "data"}``. The owner is the owner
        callable's (or ``owner``); with nobody signed in the socket gets an
        ``unauthorized`` error frame and is closed (1008): flask-sock upgrades
        before the view runs, so refuse with a plain 401 in a ``before_request``
        when you can. A closed socket is a client disconnect for each of its
        streams (their resume grace runs). Frames over ``MAX_CONTENT_LENGTH``
        (1 MiB when unset) are refused.
        """
        from sse_gateway.transports.websocket import (
            Access,
            Closed,
            Session,
            SimpleWebSocket,
            error_frame,
        )

        current = state()
        streams = current.streams
        connection = SimpleWebSocket(ws, streams.config.write_timeout_s)
        try:
            who = owner if owner is not None else current_owner(current)
        except NotSignedIn as exc:
            with suppress(Closed):
                connection.send([error_frame(exc)])
                connection.close(1008, "sign in to use streams")
            return
        access = Access(owner=who, holder=holder(who), caller=request.remote_addr or "")
        try:  # the socket is one of its owner's readers (MAX_READERS_PER_KEY)
            held = streams.hold_socket(access.holder)
        except StreamsError as exc:
            with suppress(Closed):
                connection.send([error_frame(exc)])
                connection.close(1008, exc.message[:120])
            return
        limit = current_app.config.get("MAX_CONTENT_LENGTH") or 1024 * 1024
        try:
            Session(connection, streams, access, max_frame_bytes=limit, held=held).run()
        finally:
            held.release()

    @staticmethod
    def _bind_hook(app: Flask, current: _State, hook: Hook) -> None:
        def in_context(result: StreamResult) -> None:
            with app.app_context():
                hook(result)
        in_context.__qualname__ = getattr(hook, "__qualname__", repr(hook))
        current.streams.on_end(in_context)


def state() -> _State:
    """The extension's state in the current app."""
    found: _State = current_app.extensions["sse_gateway"]
    return found


def current_owner(current: _State) -> str:
    """Whom the current request acts for; NotSignedIn when the owner callable says nobody."""
    if current.owner is None:
        return ""
    who = current.owner()
    if who is None or who == "":
        raise NotSignedIn("sign in to use streams")
    return str(who)


def holder(owner: str) -> str:
    """Whom limits count a request for: its owner, else (no owners) its address."""
    return f"owner:{owner}" if owner else f"addr:{request.remote_addr or 'unknown'}"


def follow_url(current: _State, result: Reader | NothingFollows) -> str:
    """Where the stream is followed (the blueprint's events route), for ``Location``."""
    if current.blueprint is None:
        return ""
    return url_for(f"{current.blueprint}.events", stream_id=result.stream_id)
