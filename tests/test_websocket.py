"""The WebSocket transport without a server: frames parsed and rendered, and a session
driven in process (memory broker, a scripted provider, a fake connection).

The live tests (tests/live/test_websocket.py) run the same through gunicorn,
flask-sock and nginx; here every refusal and the socket's life are checked
exactly and fast.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gevent
import gevent.queue
import pytest

from sse_gateway.errors import InvalidRequest, Overloaded, RequestTooLarge, TooManyStreams
from sse_gateway.events import Event
from sse_gateway.streams import NothingFollows
from sse_gateway.transports.websocket import (
    Access,
    BadFrame,
    Closed,
    Frame,
    FrameRenderer,
    Session,
    digest,
    ended_frame,
    error_frame,
    parse_frame,
)
from tests.test_streams import HANG, HELLO, TextDelta, service

MAX = 1000

# ------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(("text", "frame"), [
    ('{"type": "start", "model": "m/x", "prompt": "hi"}',
     Frame("start", None, {"model": "m/x", "prompt": "hi"}, None)),
    ('{"type": "start", "stream_id": "abcdefghijklmnop", "prompt": "hi"}',
     Frame("start", "abcdefghijklmnop", {"prompt": "hi"}, None)),
    ('{"type": "resume", "stream_id": "s1"}', Frame("resume", "s1", {}, None)),
    ('{"type": "resume", "stream_id": "s1", "last_event_id": 7}', Frame("resume", "s1", {}, 7)),
    ('{"type": "resume", "stream_id": "s1", "last_event_id": "12"}',
     Frame("resume", "s1", {}, 12)),
    ('{"type": "resume", "stream_id": "s1", "last_event_id": ""}', Frame("resume", "s1", {}, None)),
    ('{"type": "resume", "stream_id": "s1", "last_event_id": null}',
     Frame("resume", "s1", {}, None)),
    ('{"type": "cancel", "stream_id": "s1"}', Frame("cancel", "s1", {}, None)),
    (b'{"type": "cancel", "stream_id": "s1"}', Frame("cancel", "s1", {}, None)),
])
def test_frames_parse(text: str | bytes, frame: Frame) -> None:
    assert parse_frame(text, MAX) == frame


@pytest.mark.parametrize(("text", "param", "named", "words"), [
    ("{", None, None, "a frame is not valid JSON"),
    ("[]", None, None, "a frame must be a JSON object"),
    ('{"a": NaN}', None, None, "not valid JSON"),
    ('{"type": "stop"}', "type", None, "type: must be one of start, resume, cancel"),
    ('{"stream_id": "s1"}', "type", "s1", "type:"),
    ('{"type": 1, "stream_id": 2}', "type", None, "type:"),
    ('{"type": "start", "stream_id": "short"}', "stream_id", "short", "16 to 128"),
    ('{"type": "start", "stream_id": "has.a.dot.in.it.0123"}', "stream_id",
     "has.a.dot.in.it.0123", "16 to 128"),
    ('{"type": "start", "prompt": "x", "detach": false}', "detach", None, "detach:"),
    ('{"type": "start", "stream_id": "abcdefghijklmnop", "detach": true}', "detach",
     "abcdefghijklmnop", "detach:"),
    ('{"type": "resume"}', "stream_id", None, "stream_id: required"),
    ('{"type": "resume", "stream_id": ""}', "stream_id", None, "stream_id: required"),
    ('{"type": "cancel", "stream_id": 5}', "stream_id", None, "stream_id: required"),
    ('{"type": "cancel", "stream_id": "s1", "last_event_id": 3}', "last_event_id", "s1",
     "not a field of a cancel frame"),
    ('{"type": "resume", "stream_id": "s1", "model": "x"}', "model", "s1", "not a field"),
    ('{"type": "resume", "stream_id": "s1", "last_event_id": -1}', "last_event_id", "s1",
     "ASCII digits"),
    ('{"type": "resume", "stream_id": "s1", "last_event_id": 1.5}', "last_event_id", "s1", ""),
    ('{"type": "resume", "stream_id": "s1", "last_event_id": true}', "last_event_id", "s1", ""),
    ('{"type": "resume", "stream_id": "s1", "last_event_id": "\\u0661"}', "last_event_id",
     "s1", ""),
    ('{"type": "resume", "stream_id": "s1", "last_event_id": " 1"}', "last_event_id", "s1", ""),
    ('{"type": "resume", "stream_id": "s1", "last_event_id": "1234567890123456789"}',
     "last_event_id", "s1", ""),
])
def test_bad_frames_name_the_field_and_the_stream(text: str, param: str | None,
                                                  named: str | None, words: str) -> None:
    with pytest.raises(BadFrame) as refused:
        parse_frame(text, MAX)
    assert refused.value.param == param
    assert refused.value.stream_id == named
    assert words in refused.value.message
    assert refused.value.code == "invalid_request"


def test_a_frame_over_the_limit_is_refused_before_parsing() -> None:
    ok = "{\"type\": \"start\", \"prompt\": \"" + "x" * (MAX - 31) + "\"}"
    assert len(ok) <= MAX and parse_frame(ok, MAX).type == "start"
    with pytest.raises(RequestTooLarge):
        parse_frame("x" * (MAX + 1), MAX)
    with pytest.raises(RequestTooLarge):  # few characters, more bytes
        parse_frame('{"prompt": "' + "日" * (MAX // 3) + '"}', MAX)


# ------------------------------------------------------------------------------ rendering


def test_event_frames_are_the_stored_bytes_in_json() -> None:
    events = [Event(0, "start", b'{"stream_id": "s", "model": "m"}'),
              Event(1, "token", '{"content": "Hé\\n\\"日本\\u2028"}'.encode()),
              Event(None, "error", b'{"code": "store_unreachable"}')]
    frames = FrameRenderer('an "odd" id').render(events)
    assert frames[1] == ('{"stream_id":"an \\"odd\\" id","id":1,"event":"token",'
                         '"data":{"content": "Hé\\n\\"日本\\u2028"}}')
    assert [json.loads(f) for f in frames] == [
        {"stream_id": 'an "odd" id', "id": 0, "event": "start",
         "data": {"stream_id": "s", "model": "m"}},
        {"stream_id": 'an "odd" id', "id": 1, "event": "token",
         "data": {"content": 'Hé\n"日本\u2028'}},
        {"stream_id": 'an "odd" id', "id": None, "event": "error",
         "data": {"code": "store_unreachable"}},
    ]


def test_error_and_ended_frames() -> None:
    assert json.loads(error_frame(InvalidRequest("bad", param="x"), "s1")) == {
        "type": "error", "error": {"code": "invalid_request", "message": "bad", "param": "x"},
        "stream_id": "s1"}
    assert json.loads(error_frame(TooManyStreams("wait", retry_after=0.2))) == {
        "type": "error", "error": {"code": "too_many_streams", "message": "wait"},
        "retry_after": 1}
    assert json.loads(ended_frame("s1")) == {"type": "ended", "stream_id": "s1"}


def test_a_starts_digest_ignores_key_order() -> None:
    assert digest({"a": 1, "b": [1, "é"]}) == digest({"b": [1, "é"], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


# ------------------------------------------------------------------------------ a session


class FakeConnection:
    """A socket: frames the client sends go in ``inbox``; what the server sends is kept."""

    GONE = object()

    def __init__(self) -> None:
        self.inbox: gevent.queue.Queue[Any] = gevent.queue.Queue()
        self.sent: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.broken = False  # sends fail (the client stopped taking bytes)

    def send(self, frames: Sequence[str]) -> None:
        if self.close_code is not None or self.broken:
            raise Closed()
        self.sent.extend(json.loads(f) for f in frames)

    def receive(self, timeout: float | None) -> str | bytes | None:
        if self.close_code is not None:
            raise Closed()
        try:
            item = self.inbox.get(timeout=timeout)
        except gevent.queue.Empty:
            return None
        if item is self.GONE:
            raise Closed()
        text: str = item
        return text

    def close(self, code: int, reason: str) -> None:
        if self.close_code is not None:
            raise Closed()
        self.close_code = code

    def client(self, **frame: Any) -> None:
        self.inbox.put(json.dumps(frame))


def wait_for(condition: Callable[[], Any], timeout: float = 5) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, "timed out"
        gevent.sleep(0.005)
    return found


def terminal(conn: FakeConnection, stream_id: str) -> dict[str, Any]:
    return wait_for(lambda: next((f for f in conn.sent if f.get("stream_id") == stream_id
                                  and f.get("event") in ("done", "error", "cancelled")), None))


@pytest.fixture
def session() -> Iterator[Callable[..., tuple[FakeConnection, Any]]]:
    running: list[gevent.Greenlet[Any, Any]] = []

    def make(script: Sequence[Any] = HELLO, access: Access | None = None,
             check: Callable[[str], None] | None = None, **config: Any
             ) -> tuple[FakeConnection, Any]:
        streams, provider = service(script, **config)
        conn = FakeConnection()
        s = Session(conn, streams, access or Access("key_a", "key_a"), check=check,
                    max_frame_bytes=MAX, tick_s=0.02)
        running.append(gevent.spawn(s.run))
        return conn, (streams, provider, s)

    yield make
    for g in running:
        g.kill()


def test_a_start_is_answered_by_its_events_and_a_resume_past_the_end_by_ended(session) -> None:
    conn, (_, provider, s) = session()
    conn.client(type="start", model="scripted/a", prompt="hi", stream_id="mine-0123456789abc")
    end = terminal(conn, "mine-0123456789abc")
    assert end["event"] == "done"
    assert [(f["id"], f["event"]) for f in conn.sent] == [
        (0, "start"), (1, "token"), (2, "token"), (3, "done")]
    assert s.started == 1 and provider.opened == 1
    conn.client(type="resume", stream_id="mine-0123456789abc", last_event_id=3)
    wait_for(lambda: conn.sent[-1] == {"type": "ended", "stream_id": "mine-0123456789abc"})
    # The same start again (same id and body) replays the stream; no second provider call.
    conn.client(type="start", model="scripted/a", prompt="hi", stream_id="mine-0123456789abc")
    wait_for(lambda: len(conn.sent) == 9)
    assert [f["id"] for f in conn.sent[5:]] == [0, 1, 2, 3] and provider.opened == 1
    conn.client(type="start", model="scripted/a", prompt="other",
                stream_id="mine-0123456789abc")
    wait_for(lambda: conn.sent[-1].get("type") == "error")
    assert conn.sent[-1]["error"]["code"] == "stream_exists"


def test_starts_are_answered_in_order(session) -> None:
    conn, _ = session([TextDelta("x"), HANG])
    for _ in range(3):
        conn.client(type="start", model="scripted/a", prompt="hi")
        conn.client(type="start", model="nope/x", prompt="hi")
    wait_for(lambda: sum(1 for f in conn.sent if f.get("event") == "start"
                         or f.get("type") == "error") == 6)
    kinds = [("error" if f.get("type") == "error" else f["event"]) for f in conn.sent
             if f.get("event") in ("start", None)]
    assert kinds == ["start", "error"] * 3


def test_a_token_socket_touches_only_its_stream(session) -> None:
    conn2, (streams, _, _) = session([TextDelta("x"), HANG], access=Access(
        "key_a", "key_a", only_stream="own-stream-0123456789"))
    own = streams.start(streams.parse({"model": "scripted/a", "prompt": "x"}), owner="key_a",
                        holder="key_a", stream_id="own-stream-0123456789")
    assert not isinstance(own, NothingFollows)
    own.close()
    conn2.client(type="start", model="scripted/a", prompt="hi")
    conn2.client(type="resume", stream_id="other-stream-0123456789")
    conn2.client(type="cancel", stream_id="other-stream-0123456789")
    wait_for(lambda: len(conn2.sent) == 3)
    assert [f["error"]["code"] for f in conn2.sent] == ["unauthorized", "not_found", "not_found"]
    assert conn2.sent[1]["stream_id"] == "other-stream-0123456789"
    conn2.client(type="resume", stream_id="own-stream-0123456789", last_event_id=0)
    wait_for(lambda: any(f.get("event") == "token" for f in conn2.sent))
    conn2.client(type="cancel", stream_id="own-stream-0123456789")
    assert terminal(conn2, "own-stream-0123456789")["data"] == {"reason": "deleted"}


def test_each_action_is_checked_and_a_refusal_is_an_error_frame(session) -> None:
    asked: list[str] = []

    def check(action: str) -> None:
        asked.append(action)
        if action == "resume":
            raise Overloaded("slow down", retry_after=2.4)

    conn, _ = session(check=check)
    conn.client(type="start", model="scripted/a", prompt="hi", stream_id="mine-0123456789abc")
    terminal(conn, "mine-0123456789abc")
    conn.client(type="resume", stream_id="mine-0123456789abc")
    conn.client(type="cancel", stream_id="mine-0123456789abc")
    wait_for(lambda: asked == ["start", "resume", "cancel"])
    wait_for(lambda: conn.sent[-1].get("type") == "error")
    assert conn.sent[-1] == {"type": "error", "stream_id": "mine-0123456789abc",
                             "error": {"code": "overloaded", "message": "slow down"},
                             "retry_after": 2}


def test_a_closed_socket_abandons_every_stream_it_follows(session) -> None:
    conn, (streams, provider, _) = session([TextDelta("x"), HANG], resume_grace_s=0)
    for i in range(2):
        conn.client(type="start", model="scripted/a", prompt="hi", stream_id=f"stream-{i}-0123456789")
    wait_for(lambda: sum(1 for f in conn.sent if f.get("event") == "token") == 2)
    conn.inbox.put(FakeConnection.GONE)
    wait_for(lambda: provider.finished == 2)
    for i in range(2):
        wait_for(lambda i=i: streams.info(f"stream-{i}-0123456789", "key_a").status
                 == "cancelled")


def test_a_failed_send_drops_the_socket_and_its_streams(session) -> None:
    conn, (_, provider, _) = session([TextDelta("x"), HANG], resume_grace_s=0)
    conn.client(type="start", model="scripted/a", prompt="hi", stream_id="stream-x-0123456789")
    wait_for(lambda: any(f.get("event") == "token" for f in conn.sent))
    conn.broken = True
    conn.client(type="resume", stream_id="nope-0123456789abcd")  # its error frame fails
    wait_for(lambda: provider.finished == 1)
    wait_for(lambda: conn.close_code == 1000)


def test_a_draining_worker_refuses_starts_and_closes_an_idle_socket_1001(session) -> None:
    conn, (streams, _, _) = session([TextDelta("x"), HANG])
    conn.client(type="start", model="scripted/a", prompt="hi", stream_id="stream-d-0123456789")
    wait_for(lambda: any(f.get("event") == "token" for f in conn.sent))
    streams.drain(0.2)
    conn.client(type="start", model="scripted/a", prompt="again")
    end = terminal(conn, "stream-d-0123456789")
    assert end["data"] == {"reason": "shutdown"}
    assert {"type": "error", "error": {"code": "overloaded", "message":
            "this instance is shutting down; retry"}, "retry_after": 1} in conn.sent
    wait_for(lambda: conn.close_code == 1001)
    conn2, (streams2, _, _) = session()
    streams2.drain(0.1)
    wait_for(lambda: conn2.close_code == 1001)  # nothing followed: closed on the next tick
