"""Deliver streams over one WebSocket: several at once, started, resumed and cancelled by frames.

The framework gives this module an open connection (``send``, ``receive``,
``close``: flask-sock's simple-websocket ``Server``, or anything alike) and
who the caller is (``Access``); the rest is here, with no web framework:

- Client frames are JSON objects: ``{"type": "start", ...any POST /v1/streams
  field, "stream_id"?}``, ``{"type": "resume", "stream_id", "last_event_id"?}``,
  ``{"type": "cancel", "stream_id"}``. A bad frame is answered with an error
  frame and the socket stays open.
- Every event of every stream the socket follows is one text frame
  ``{"stream_id", "id", "event", "data"}``: the same events and ids as SSE,
  ``data`` the stored payload as it is (built from the stored bytes, never
  re-parsed). ``{"type": "error", "error": {...}, "stream_id"?, "retry_after"?}``
  refuses a frame; ``{"type": "ended", "stream_id"}`` answers a resume at or
  past the end of an ended stream (SSE's 204).
- Each followed stream has its reader (``Reader``) in its own greenlet; sends
  are serialised by one lock, and each write is bounded by ``write_timeout_s``
  (a client that takes no bytes that long is dropped, as over SSE).
- A closed socket is a client disconnect for each of its streams: every
  reader is abandoned at once (its lease goes back, the pump's resume grace
  runs). The socket is read all the time (simple-websocket's reader), so a
  close is seen at once, also while the provider is silent; WebSocket pings
  (its ``ping_interval``) keep proxies from cutting an idle socket and drop a
  peer that stopped answering.
- While the worker drains, starts are refused (``overloaded``, as over SSE)
  and a socket with no stream left is closed with 1001 (going away).
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from contextlib import suppress
from typing import Any, NamedTuple, Protocol

import gevent
import gevent.lock

from sse_gateway import metrics
from sse_gateway.broker import Batch
from sse_gateway.errors import InvalidRequest, NotFound, RequestTooLarge, StreamsError
from sse_gateway.events import Event
from sse_gateway.reader import Reader
from sse_gateway.streams import Detached, Held, NothingFollows, Streams
from sse_gateway.validation import EVENT_ID, STREAM_ID, InvalidBody, json_object

log = logging.getLogger(__name__)

START, RESUME, CANCEL = "start", "resume", "cancel"
TYPES = (START, RESUME, CANCEL)
GOING_AWAY = 1001  # the close code of a draining worker's sockets
# Limit codes also counted as rejections (sse_rejections_total), as over HTTP.
_LIMIT_CODES = frozenset({"rate_limited", "too_many_streams", "too_many_readers", "overloaded"})


class Closed(Exception):
    """The socket is closed (by the peer, by a failed or late write, or by us)."""


class Connection(Protocol):
    """An open WebSocket, as this transport uses it."""

    def send(self, frames: Sequence[str]) -> None:
        """Send text frames, in order, as one bounded write; Closed when gone."""
        ...

    def receive(self, timeout: float | None) -> str | bytes | None:
        """The next client frame; None after ``timeout``; Closed when gone."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Close with ``code`` (idempotent)."""
        ...


class Access(NamedTuple):
    """Who a socket acts for, and what it may do."""

    owner: str  # whose streams it starts and sees
    holder: str  # whom limits count it for
    caller: str = ""  # names the client in log lines
    only_stream: str | None = None  # a stream token's socket: this stream only, no start


Check = Callable[[str], None]
"""Called before each action (``start``, ``resume``, ``cancel``): raises a
``StreamsError`` (``rate_limited``) to refuse it."""


class NotAllowed(StreamsError):
    """A stream token's socket asked to start a stream."""

    code = "unauthorized"


class InternalError(StreamsError):
    """What a frame that failed by a bug is answered with."""

    code = "internal_error"


class Frame(NamedTuple):
    """One parsed client frame."""

    type: str
    stream_id: str | None  # the stream it names (start: the client's own id, or None)
    body: dict[str, Any]  # start: the POST /v1/streams body
    position: int | None  # resume: the last event id the client saw


class BadFrame(InvalidRequest):
    """A frame that does not parse; ``stream_id`` is what it named, if it named one."""

    def __init__(self, message: str, *, param: str | None = None,
                 stream_id: str | None = None) -> None:
        super().__init__(message, param=param)
        self.stream_id = stream_id


def parse_frame(text: str | bytes, max_bytes: int) -> Frame:
    """A client frame, checked (BadFrame, or RequestTooLarge over ``max_bytes``)."""
    if len(text) > max_bytes:  # str: characters, at most as many as its bytes
        raise RequestTooLarge(f"a frame may hold at most {max_bytes} bytes")
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > max_bytes:
        raise RequestTooLarge(f"a frame may hold at most {max_bytes} bytes")
    try:
        data = json_object(raw)
    except InvalidBody as exc:
        raise BadFrame(exc.message.replace("the body", "a frame")) from None
    named = data.get("stream_id")
    named_id = named if isinstance(named, str) and len(named) <= 128 else None
    kind = data.pop("type", None)
    if kind not in TYPES:
        raise BadFrame(f"type: must be one of {', '.join(TYPES)}", param="type",
                       stream_id=named_id)
    if kind == START:
        stream_id = data.pop("stream_id", None)
        if stream_id is not None and not (isinstance(stream_id, str)
                                          and STREAM_ID.fullmatch(stream_id)):
            raise BadFrame("stream_id: must be 16 to 128 characters of A-Z a-z 0-9 _ -",
                           param="stream_id", stream_id=named_id)
        if "detach" in data:
            raise BadFrame("detach: not accepted over a WebSocket: the socket follows the "
                           "streams it starts", param="detach", stream_id=stream_id)
        return Frame(START, stream_id, data, None)
    if not isinstance(named, str) or not named:
        raise BadFrame("stream_id: required, a string", param="stream_id")
    extra = set(data) - ({"stream_id", "last_event_id"} if kind == RESUME else {"stream_id"})
    if extra:
        field = sorted(extra)[0]
        raise BadFrame(f"{field}: not a field of a {kind} frame", param=field, stream_id=named)
    position = _position(data.get("last_event_id"), named) if kind == RESUME else None
    return Frame(kind, named, {}, position)


def _position(value: Any, stream_id: str) -> int | None:
    """``last_event_id`` as Last-Event-ID takes it: ASCII digits (or a JSON integer)."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if not isinstance(value, str) or not EVENT_ID.fullmatch(value):
        raise BadFrame("last_event_id: must be an event id (ASCII digits, at most 18)",
                       param="last_event_id", stream_id=stream_id)
    return int(value)


# Event names as JSON strings (a handful, shared by every socket).
_NAMES: dict[str, str] = {}


class FrameRenderer:
    """The frames of one stream's events: a fixed prefix, the id, the name, the stored data."""

    def __init__(self, stream_id: str) -> None:
        self._prefix = '{"stream_id":' + json.dumps(stream_id) + ',"id":'

    def render(self, events: Iterable[Event]) -> list[str]:
        prefix, names = self._prefix, _NAMES
        frames = []
        for event in events:
            name = names.get(event.name)
            if name is None:
                name = names[event.name] = json.dumps(event.name)
            number = "null" if event.id is None else str(event.id)
            frames.append(f'{prefix}{number},"event":{name},"data":{event.data.decode()}}}')
        return frames


def error_frame(exc: StreamsError, stream_id: str | None = None) -> str:
    """``{"type": "error", "error": {code, message, param?}, "stream_id"?, "retry_after"?}``."""
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.param is not None:
        error["param"] = exc.param
    frame: dict[str, Any] = {"type": "error", "error": error}
    if stream_id is not None:
        frame["stream_id"] = stream_id
    if exc.retry_after is not None:
        frame["retry_after"] = max(1, round(exc.retry_after))
    return json.dumps(frame, ensure_ascii=False)


def ended_frame(stream_id: str) -> str:
    """A resume at or past the end of an ended stream: nothing will follow."""
    return json.dumps({"type": "ended", "stream_id": stream_id})


def digest(body: dict[str, Any]) -> str:
    """A start's fingerprint (a retried start of the same id and body resumes it)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "backslashreplace")).hexdigest()


class _Follower(NamedTuple):
    reader: Reader
    batches: Generator[Batch, None, None]
    frames: FrameRenderer


class Session:
    """One WebSocket's life: read frames until it closes, follow the streams it asks for."""

    def __init__(self, connection: Connection, streams: Streams, access: Access, *,
                 check: Check | None = None, max_frame_bytes: int = 1024 * 1024,
                 tick_s: float | None = None, held: Held | None = None) -> None:
        self._conn = connection
        self._held = held  # the socket's place among its holder's readers
        self._streams = streams
        self._access = access
        self._check = check
        self._max_frame_bytes = max_frame_bytes
        self._tick_s = streams.config.heartbeat_s if tick_s is None else tick_s
        self._following: dict[str, _Follower] = {}
        self._closed = False
        self.started = 0  # streams this socket started (for the log line)

    def run(self) -> None:
        """Serve the socket until it closes; then every stream it followed is abandoned."""
        metrics.WEBSOCKETS_OPEN.inc()
        opened = renewed = time.monotonic()
        try:
            while not self._closed:
                try:
                    text = self._conn.receive(self._tick_s)
                except Closed:
                    break
                if text is None:
                    self._close_if_drained()
                else:
                    self._handle(text)
                if self._held is not None and time.monotonic() - renewed >= self._tick_s:
                    self._held.renew()
                    renewed = time.monotonic()
        finally:
            self._closed = True
            for follower in list(self._following.values()):
                follower.reader.abandon()
            if self._held is not None:
                self._held.release()
            metrics.WEBSOCKETS_OPEN.dec()
            log.info("websocket of %s closed after %.1f s (%d streams started)",
                     self._access.caller or "a client", time.monotonic() - opened,
                     self.started)

    def _handle(self, text: str | bytes) -> None:
        named: str | None = None
        try:
            frame = parse_frame(text, self._max_frame_bytes)
            named = frame.stream_id
            if frame.type == START:
                self._start(frame)
            elif frame.type == RESUME:
                self._resume(frame)
            else:
                self._cancel(frame)
        except BadFrame as exc:
            self._refuse(exc, exc.stream_id)
        except StreamsError as exc:
            self._refuse(exc, named)
        except Exception:  # a bug: answered, logged, and the socket serves on
            log.exception("a websocket frame failed")
            self._refuse(InternalError("the gateway failed; the error is in its log"), named)

    def _start(self, frame: Frame) -> None:
        if self._access.only_stream is not None:
            raise NotAllowed("a stream token's socket may only resume or cancel its own "
                             "stream; starting one needs an API key")
        self._not_followed(frame.stream_id)
        if self._check is not None:
            self._check(START)
        streams, access, body = self._streams, self._access, frame.body
        result = streams.start(lambda: streams.parse(body), owner=access.owner,
                               holder=access.holder, caller=access.caller,
                               stream_id=frame.stream_id, digest=digest(body))
        assert not isinstance(result, Detached)  # refused by parse_frame
        if isinstance(result, Reader) and result.started:
            self.started += 1
            log.info("stream %s: %s for %s over a websocket", result.stream_id, result.model,
                     access.caller or "a client")
        self._follow(result)

    def _resume(self, frame: Frame) -> None:
        stream_id = self._own(frame)
        self._not_followed(stream_id)
        if self._check is not None:
            self._check(RESUME)
        access = self._access
        self._follow(self._streams.follow(stream_id, access.owner, frame.position,
                                          access.holder))

    def _cancel(self, frame: Frame) -> None:
        stream_id = self._own(frame)
        if self._check is not None:
            self._check(CANCEL)
        self._streams.cancel(stream_id, self._access.owner)

    def _own(self, frame: Frame) -> str:
        """The stream a resume or cancel names, if this socket may touch it."""
        stream_id = frame.stream_id
        assert stream_id is not None
        only = self._access.only_stream
        if only is not None and stream_id != only:
            raise NotFound(f"no stream {stream_id!r}")  # exactly as an unknown one
        return stream_id

    def _not_followed(self, stream_id: str | None) -> None:
        if stream_id is not None and stream_id in self._following:
            raise InvalidRequest(f"this socket already follows stream {stream_id!r}",
                                 param="stream_id")

    def _follow(self, result: Reader | NothingFollows) -> None:
        if isinstance(result, NothingFollows):
            self._send([ended_frame(result.stream_id)])
            return
        follower = _Follower(result, result.batches(), FrameRenderer(result.stream_id))
        self._following[result.stream_id] = follower
        if result.started:
            # The start event now, before the next frame is read: each start frame
            # is answered, in order, by an error frame or its stream's first event.
            batch = next(follower.batches, None)
            if batch is None or batch.ended or not self._deliver(follower, batch):
                self._unfollow(follower)
                return
        gevent.spawn(self._pump, follower)

    def _pump(self, follower: _Follower) -> None:
        """Send a followed stream's events until it ends or the socket closes."""
        try:
            for batch in follower.batches:
                if not self._deliver(follower, batch) or batch.ended:
                    return
        except Exception:
            log.exception("stream %s: a websocket follower failed", follower.reader.stream_id)
        finally:
            self._unfollow(follower)
            self._close_if_drained()

    def _deliver(self, follower: _Follower, batch: Batch) -> bool:
        """Send a batch's events (an idle tick sends nothing: pings keep the socket
        alive); False when the socket is gone."""
        if batch.ended:
            # No longer followed before its client sees the end: a resume sent on
            # seeing it is a new follow, not "already follows".
            self._forget(follower)
        if not batch.events:
            return not self._closed
        return self._send(follower.frames.render(batch.events))

    def _unfollow(self, follower: _Follower) -> None:
        self._forget(follower)
        follower.batches.close()
        follower.reader.close()

    def _forget(self, follower: _Follower) -> None:
        if self._following.get(follower.reader.stream_id) is follower:
            del self._following[follower.reader.stream_id]

    def _refuse(self, exc: StreamsError, stream_id: str | None) -> None:
        metrics.WEBSOCKET_FRAMES_REFUSED.labels(exc.code).inc()
        if exc.code in _LIMIT_CODES:
            metrics.REJECTIONS.labels(exc.code).inc()
        self._send([error_frame(exc, stream_id)])

    def _send(self, frames: Sequence[str]) -> bool:
        if self._closed:
            return False
        try:
            self._conn.send(frames)
        except Closed:
            self._gone()
            return False
        return True

    def _gone(self) -> None:
        """The socket failed: every stream it follows loses its reader now."""
        self._closed = True
        for follower in list(self._following.values()):
            follower.reader.abandon()
        with suppress(Closed):
            self._conn.close(1000, "")

    def _close_if_drained(self) -> None:
        if self._streams.draining and not self._following and not self._closed:
            self._closed = True
            with suppress(Closed):
                self._conn.close(GOING_AWAY, "the server is shutting down; reconnect")


class SimpleWebSocket:
    """A simple-websocket (flask-sock) connection as a ``Connection``.

    simple-websocket's own ``send`` writes with one ``socket.send``, which
    under gevent may write part of a frame, and is not safe from several
    greenlets; its reader greenlet also writes (pongs, the close answer).
    So the socket under it is wrapped: every write is whole (``sendall``),
    one at a time, and bounded by ``write_timeout_s`` (then the socket is
    shut down: the client is gone); and frames are built with its wsproto
    connection under one lock, so a batch of events is one write.
    """

    def __init__(self, ws: Any, write_timeout_s: float) -> None:
        self._ws = ws
        with suppress(OSError, AttributeError):
            # Frames are small writes in quick succession: without this, Nagle's
            # algorithm holds each one until the previous is acknowledged.
            ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ws.sock = _BoundedSocket(ws.sock, write_timeout_s)
        self._lock = gevent.lock.Semaphore()

    def send(self, frames: Sequence[str]) -> None:
        from wsproto.events import TextMessage
        from wsproto.utilities import LocalProtocolError

        ws = self._ws
        with self._lock:
            if not ws.connected:
                raise Closed()
            try:
                data = b"".join([ws.ws.send(TextMessage(data=f)) for f in frames])
                ws.sock.send(data)
            except (OSError, LocalProtocolError):
                ws.connected = False
                raise Closed() from None

    def receive(self, timeout: float | None) -> str | bytes | None:
        from simple_websocket import ConnectionClosed

        try:
            received: str | bytes | None = self._ws.receive(timeout=timeout)
        except ConnectionClosed:
            raise Closed() from None
        return received

    def close(self, code: int, reason: str) -> None:
        from simple_websocket import ConnectionClosed

        with self._lock:
            try:
                self._ws.close(reason=code, message=reason)
            except (ConnectionClosed, OSError):
                raise Closed() from None


class _BoundedSocket:
    """A socket whose writes are whole, serialised and bounded in time."""

    def __init__(self, sock: Any, timeout_s: float) -> None:
        self._sock = sock
        self._timeout_s = timeout_s
        self._lock = gevent.lock.Semaphore()

    def send(self, data: bytes) -> int:
        with self._lock:
            try:
                with gevent.Timeout(self._timeout_s):
                    self._sock.sendall(data)
            except gevent.Timeout:
                log.info("a websocket client took no bytes for %g s: dropped", self._timeout_s)
                with suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)  # its reader sees the end too
                raise TimeoutError("write timed out") from None
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)
