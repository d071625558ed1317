"""GET /v1/ws, live: real gunicorn (gevent worker), Redis, the fake provider, nginx.

A WebSocket client (the ``websockets`` package's sync client) starts, follows,
resumes and cancels streams by frames; the provider's side of a cancel or a
closed socket is asserted on the fake provider, as for SSE. One gateway with
API keys serves most tests; a second, with tight rates and caps, serves the
limit tests and, last, the drain (it restarts its worker).
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import socket
import statistics
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import record
from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer, worker_pid
from tests.live.infra import NginxServer
from tests.test_broker import REDIS_URL

pytestmark = pytest.mark.redis

# Fresh keys and stream ids each run: streams, and rate counts, outlive a run in Redis.
RUN = secrets.token_hex(6)
KEY_A, KEY_B = f"sk-ws-a-{RUN}", f"sk-ws-b-{RUN}"
KEY_RL, KEY_CAP, KEY_DRAIN = f"sk-ws-rl-{RUN}", f"sk-ws-cap-{RUN}", f"sk-ws-drain-{RUN}"
KEY_OPEN = f"sk-ws-open-{RUN}"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
LONG = [f"w{i} " for i in range(400)]
TERMINAL = ("done", "error", "cancelled")


@pytest.fixture(scope="module")
def gateway(fake: FakeProvider) -> Iterator[GatewayServer]:
    env = gateway_env(fake, REDIS_URL=REDIS_URL, API_KEYS=f"{KEY_A},{KEY_B}",
                      RESUME_GRACE_S="10")
    server = GatewayServer(env, label="ws")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tight(fake: FakeProvider) -> Iterator[GatewayServer]:
    """Tight rates and caps; a short drain (graceful timeout 4 s, margin 3 s)."""
    env = gateway_env(fake, REDIS_URL=REDIS_URL,
                      API_KEYS=f"{KEY_A},{KEY_RL},{KEY_CAP},{KEY_DRAIN},{KEY_OPEN}",
                      RATELIMIT_CREATE="3/minute", RATELIMIT_EVENTS="2/minute",
                      RATELIMIT_CANCEL="2/minute", MAX_STREAMS_PER_KEY="2",
                      GRACEFUL_TIMEOUT_S="4", SHUTDOWN_MARGIN_S="3", WRITE_TIMEOUT_S="1")
    server = GatewayServer(env, label="ws-tight")
    try:
        yield server.start()
    finally:
        server.stop()


class Socket:
    """A WebSocket to the gateway, speaking its JSON frames."""

    def __init__(self, server: GatewayServer | NginxServer, headers: dict[str, str] | None = None,
                 query: str = "", subprotocols: list[str] | None = None) -> None:
        self.conn: ClientConnection = connect(
            f"ws://{server.host}:{server.port}/v1/ws{query}", additional_headers=headers,
            subprotocols=subprotocols,
            open_timeout=10, close_timeout=2, max_size=None, proxy=None, legacy=True)

    def send(self, **frame: Any) -> None:
        self.conn.send(json.dumps(frame))

    def recv(self, timeout: float = 10) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(self.conn.recv(timeout))
        return frame

    def until(self, predicate: Any, timeout: float = 10) -> list[dict[str, Any]]:
        """Frames up to and including the first that ``predicate`` accepts."""
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            frames.append(self.recv(max(0.01, deadline - time.monotonic())))
            if predicate(frames[-1]):
                return frames

    def to_the_end(self, *stream_ids: str, timeout: float = 15) -> dict[str, list[dict[str, Any]]]:
        """Every frame until each of ``stream_ids`` (or of the streams seen) has ended."""
        ended: set[str] = set()
        frames: dict[str, list[dict[str, Any]]] = {}
        wanted = set(stream_ids)
        deadline = time.monotonic() + timeout
        while not wanted or not wanted <= ended:
            frame = self.recv(max(0.01, deadline - time.monotonic()))
            assert "type" not in frame, frame
            frames.setdefault(frame["stream_id"], []).append(frame)
            wanted.add(frame["stream_id"])
            if frame["event"] in TERMINAL:
                ended.add(frame["stream_id"])
        return frames

    def drop(self, reset: bool = False) -> None:
        """Vanish without a close frame: FIN, or RST with ``reset``."""
        sock = self.conn.socket
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        self.conn.close_socket()

    def close(self) -> None:
        self.conn.close()

    def closed_with(self, timeout: float = 10) -> int | None:
        """Wait for the server to close the socket; its close code."""
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                self.conn.recv(timeout)
        rcvd = closed.value.rcvd
        return None if rcvd is None else rcvd.code


@pytest.fixture
def sockets() -> Iterator[list[Socket]]:
    opened: list[Socket] = []
    yield opened
    for s in opened:
        s.drop()


def open_ws(opened: list[Socket], server: GatewayServer | NginxServer,
            headers: dict[str, str] | None = A, query: str = "",
            subprotocols: list[str] | None = None) -> Socket:
    s = Socket(server, headers, query, subprotocols)
    opened.append(s)
    return s


def content(frames: list[dict[str, Any]]) -> str:
    return "".join(f["data"]["content"] for f in frames if f["event"] == "token")


def error(code: str, message: str | None = None, **rest: Any) -> Any:
    """A matcher for an error frame."""
    class Match:
        def __eq__(self, frame: object) -> bool:
            return (isinstance(frame, dict) and frame.get("type") == "error"
                    and frame["error"]["code"] == code
                    and (message is None or message in frame["error"]["message"])
                    and all(frame.get(k) == v for k, v in rest.items()))

        def __repr__(self) -> str:
            return f"error({code!r}, {message!r}, {rest})"
    return Match()


def sse_events(server: GatewayServer, stream_id: str) -> list[dict[str, Any]]:  # key A's
    """The stream over SSE from the start: what a WS follower must have got, as frames."""
    events = server.stream("GET", f"/v1/streams/{stream_id}/events", headers=A).read_all()
    return [{"stream_id": stream_id, "id": int(e.id or -1), "event": e.event, "data": e.json()}
            for e in events]


# ------------------------------------------------------------------ streams over one socket


def test_two_streams_on_one_socket_complete_in_order_and_interleaved(
        gateway: GatewayServer, fake: FakeProvider, sockets: list[Socket]) -> None:
    one = [f"a{i} " for i in range(60)]
    two = ["Hé", "llo", " wörld", " 👋🏽", "\n", "日本語", ' {"json": 1}', "\r\n", "</x>"] * 6
    m1, m2 = fake.scenario(tokens=one, delay=0.02), fake.scenario(tokens=two, delay=0.022)
    ws = open_ws(sockets, gateway)
    ws.send(type="start", model=f"openai/{m1}", prompt="one")
    ws.send(type="start", model=f"anthropic/{m2}", prompt="two", stream_id=f"client-{RUN}-0001")
    order: list[str] = []
    frames: dict[str, list[dict[str, Any]]] = {}
    ended = 0
    while ended < 2:
        frame = ws.recv()
        order.append(frame["stream_id"])
        frames.setdefault(frame["stream_id"], []).append(frame)
        ended += frame["event"] in TERMINAL
    first, second = list(frames)  # each start frame is answered in order
    assert second == f"client-{RUN}-0001"
    assert frames[first][0]["data"]["model"] == f"openai/{m1}"
    for stream_id, text in ((first, "".join(one)), (second, "".join(two))):
        got = frames[stream_id]
        assert [f["id"] for f in got] == list(range(len(got)))
        assert content(got) == text
        assert got[-1]["event"] == "done"
        assert got == sse_events(gateway, stream_id)  # the same events and ids as SSE
    switches = sum(1 for x, y in itertools.pairwise(order) if x != y)
    assert switches >= 4, f"the two streams' frames were not interleaved: {order}"
    assert len(fake.calls(m1)) == len(fake.calls(m2)) == 1


def test_cancel_frame_closes_the_provider_connection(
        gateway: GatewayServer, fake: FakeProvider, sockets: list[Socket]) -> None:
    model = fake.scenario(tokens=LONG, delay=0.02)
    ws = open_ws(sockets, gateway)
    ws.send(type="start", model=f"openai/{model}", prompt="x")
    stream_id = ws.until(lambda f: f["event"] == "token")[0]["stream_id"]
    asked = time.monotonic()
    ws.send(type="cancel", stream_id=stream_id)
    call = fake.wait_closed(model)
    assert call.outcome == "peer_closed"
    # Long before the provider's answer would have ended (400 tokens, 8 s).
    assert call.closed_at is not None and call.closed_at - asked < 5.0
    frames = ws.to_the_end(stream_id)[stream_id]
    assert frames[-1]["event"] == "cancelled" and frames[-1]["data"] == {"reason": "deleted"}
    assert call.tokens_sent < len(LONG)
    status = gateway.request("GET", f"/v1/streams/{stream_id}", headers=A).json()
    assert status["status"] == "cancelled"
    ws.send(type="cancel", stream_id=stream_id)  # ended: nothing changes, no answer
    ws.send(type="cancel", stream_id="no-such-stream-0123456789")
    assert ws.recv() == error("not_found", stream_id="no-such-stream-0123456789")


def test_resume_after_a_dropped_socket_loses_and_repeats_nothing(
        gateway: GatewayServer, fake: FakeProvider, sockets: list[Socket]) -> None:
    tokens = [f"t{i} " for i in range(60)]
    model = fake.scenario(tokens=tokens, delay=0.02)
    ws = open_ws(sockets, gateway)
    ws.send(type="start", model=f"openai/{model}", prompt="x", resume_grace_s=10)
    seen = ws.until(lambda f: f["event"] == "token" and f["id"] >= 5)
    stream_id = seen[0]["stream_id"]
    ws.drop(reset=True)
    again = open_ws(sockets, gateway)
    again.send(type="resume", stream_id=stream_id, last_event_id=seen[-1]["id"])
    rest = again.to_the_end(stream_id)[stream_id]
    assert [f["id"] for f in seen + rest] == list(range(len(seen) + len(rest)))
    assert content(seen + rest) == "".join(tokens)
    assert rest[-1]["event"] == "done"
    assert len(fake.calls(model)) == 1
    # At the end: nothing follows (SSE's 204).
    again.send(type="resume", stream_id=stream_id, last_event_id=str(rest[-1]["id"]))
    assert again.recv() == {"type": "ended", "stream_id": stream_id}
    # From the start, by a digit string.
    again.send(type="resume", stream_id=stream_id, last_event_id="0")
    assert again.to_the_end(stream_id)[stream_id] == (seen + rest)[1:]


def test_a_stream_started_over_sse_resumes_over_the_socket(
        gateway: GatewayServer, fake: FakeProvider, sockets: list[Socket]) -> None:
    tokens = [f"s{i} " for i in range(40)]
    model = fake.scenario(tokens=tokens, delay=0.02)
    sse = gateway.stream("POST", "/v1/streams", {"model": f"anthropic/{model}", "prompt": "x"},
                         headers=A)
    stream_id = sse.header("X-Stream-ID")
    assert stream_id is not None
    first = sse.read_until(lambda e: e.event == "token" and int(e.id) >= 3).event
    sse.drop()
    ws = open_ws(sockets, gateway)
    ws.send(type="resume", stream_id=stream_id, last_event_id=first.id)
    rest = ws.to_the_end(stream_id)[stream_id]
    assert rest[0]["id"] == int(first.id) + 1
    full = sse_events(gateway, stream_id)
    assert rest == full[int(first.id) + 1:]
    assert content(full) == "".join(tokens)
    assert len(fake.calls(model)) == 1


@pytest.mark.parametrize("grace", [0, 0.5])
def test_a_closed_socket_is_a_disconnect_for_each_of_its_streams(
        gateway: GatewayServer, fake: FakeProvider, sockets: list[Socket], grace: float) -> None:
    """Two streams, one streaming and one silent: both providers are closed after the grace."""
    busy = fake.scenario(tokens=LONG, delay=0.02)
    silent = fake.scenario(tokens=["a", "b", "c"], stall_after=1, stall_s=60)
    ws = open_ws(sockets, gateway)
    ids = []
    for model in (busy, silent):
        ws.send(type="start", model=f"openai/{model}", prompt="x", resume_grace_s=grace)
        ids.append(ws.until(lambda f: f["event"] == "start")[0]["stream_id"])
    ws.until(lambda f: f["event"] == "token" and f["stream_id"] == ids[1])
    fake.wait_call(silent)
    dropped = time.monotonic()
    ws.drop()
    for model in (busy, silent):
        call = fake.wait_closed(model)
        assert call.outcome == "peer_closed"
        assert call.closed_at is not None
        after = call.closed_at - dropped
        record(f"ws_closed_socket_to_provider_closed_ms[grace={grace}]", after * 1000)
        assert grace * 0.8 <= after < grace + 5.0  # the grace was honoured, then closed
    for stream_id in ids:
        final = sse_events(gateway, stream_id)[-1]
        assert final["event"] == "cancelled"
        assert final["data"] == {"reason": "client_disconnected"}


def test_a_conversation_over_the_socket(
        gateway: GatewayServer, fake: FakeProvider, sockets: list[Socket]) -> None:
    """``conversation_id`` on start frames: turn two sends turn one's messages and
    answer first; the kept turns are those of POST /v1/streams."""
    from tests.fake_provider import Behaviour

    model = fake.scenario_seq([Behaviour(tokens=["Hel", "lo"]), Behaviour(tokens=["Fine."])])
    conversation = f"ws-chat-{RUN}"
    ws = open_ws(sockets, gateway)
    ws.send(type="start", model=f"openai/{model}", prompt="Hi", conversation_id=conversation)
    (first,) = ws.to_the_end().values()
    ws.send(type="start", model=f"openai/{model}", conversation_id=conversation,
            messages=[{"role": "user", "content": "How are you?"}])
    (second,) = ws.to_the_end().values()
    assert (content(first), content(second)) == ("Hello", "Fine.")
    sent = fake.wait_call(model, 1).body
    assert isinstance(sent, dict)
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [
        ("user", "Hi"), ("assistant", "Hello"), ("user", "How are you?")]
    kept = gateway.request("GET", f"/v1/conversations/{conversation}", headers=A).json()
    assert [(m["role"], m["content"], m["stream_id"]) for m in kept["messages"]] == [
        ("user", "Hi", first[0]["stream_id"]), ("assistant", "Hello", first[0]["stream_id"]),
        ("user", "How are you?", second[0]["stream_id"]),
        ("assistant", "Fine.", second[0]["stream_id"])]


# ------------------------------------------------------------------------------ auth, owners


@pytest.mark.parametrize("headers", [None, {"Authorization": "Bearer sk-wrong-0123456789"}],
                         ids=["no key", "wrong key"])
def test_no_key_or_a_wrong_key_is_401_at_the_handshake(
        gateway: GatewayServer, headers: dict[str, str] | None) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://{gateway.host}:{gateway.port}/v1/ws", additional_headers=headers,
                open_timeout=5, proxy=None, legacy=True)
    response = refused.value.response
    assert response.status_code == 401
    assert json.loads(response.body or b"")["error"]["code"] == "unauthorized"


def test_a_browser_authenticates_with_a_bearer_subprotocol(
        gateway: GatewayServer, sockets: list[Socket]) -> None:
    """``new WebSocket(url, ["sse-gateway", "bearer." + key])``: a browser cannot send
    headers; the server picks ``sse-gateway``. A wrong key so offered is a 401."""
    ws = open_ws(sockets, gateway, None, subprotocols=["sse-gateway", f"bearer.{KEY_A}"])
    assert ws.conn.subprotocol == "sse-gateway"
    ws.send(type="start", model="demo/echo", prompt="from a browser")
    (frames,) = ws.to_the_end().values()
    assert content(frames) == "from a browser"
    stream_id = frames[0]["stream_id"]
    assert gateway.request("GET", f"/v1/streams/{stream_id}", headers=A).status == 200
    with pytest.raises(InvalidStatus) as refused:
        Socket(gateway, None, subprotocols=["sse-gateway", "bearer.sk-wrong-0123456789"])
    assert refused.value.response.status_code == 401
    token = gateway.request("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x",
                                                    "detach": True}, headers=A).json()
    by_token = open_ws(sockets, gateway, None,
                       subprotocols=["sse-gateway", f"bearer.{token['token']}"])
    by_token.send(type="start", model="demo/echo", prompt="x")
    assert by_token.recv() == error("unauthorized")
    by_token.send(type="resume", stream_id=token["stream_id"])
    assert by_token.to_the_end(token["stream_id"])[token["stream_id"]][-1]["event"] == "done"


def test_a_plain_get_is_refused_as_json(gateway: GatewayServer) -> None:
    reply = gateway.request("GET", "/v1/ws", headers=A)
    assert reply.status == 400
    assert reply.json()["error"]["code"] == "invalid_request"


def test_a_token_socket_may_only_resume_and_cancel_its_own_stream(
        gateway: GatewayServer, fake: FakeProvider, sockets: list[Socket]) -> None:
    model = fake.scenario(tokens=LONG, delay=0.02)
    mine = gateway.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x"},
                          headers=A)
    stream_id, token = mine.header("X-Stream-ID"), mine.header("X-Stream-Token")
    assert stream_id and token
    mine.read_until(lambda e: e.event == "token")
    other = gateway.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x y"},
                           headers=A)
    other_id = other.header("X-Stream-ID")
    other.read_all()
    for how in ({"query": f"?token={token}", "headers": None},
                {"query": "", "headers": {"Authorization": f"Bearer {token}"}}):
        ws = open_ws(sockets, gateway, **how)  # type: ignore[arg-type]
        ws.send(type="start", model="demo/echo", prompt="x")
        assert ws.recv() == error("unauthorized")
        ws.send(type="resume", stream_id=other_id)  # the same key's, not the token's
        assert ws.recv() == error("not_found", f"no stream {other_id!r}", stream_id=other_id)
        ws.send(type="cancel", stream_id=other_id)
        assert ws.recv() == error("not_found", stream_id=other_id)
        ws.send(type="resume", stream_id=stream_id, last_event_id=1)
        assert ws.until(lambda f: f.get("event") == "token")[0]["id"] == 2
    ws.send(type="cancel", stream_id=stream_id)
    assert ws.to_the_end(stream_id)[stream_id][-1]["data"] == {"reason": "deleted"}
    assert fake.wait_closed(model).outcome == "peer_closed"


def test_another_keys_stream_is_unknown(
        gateway: GatewayServer, fake: FakeProvider, sockets: list[Socket]) -> None:
    model = fake.scenario(tokens=LONG, delay=0.02)
    a = open_ws(sockets, gateway, A)
    a.send(type="start", model=f"openai/{model}", prompt="x")
    stream_id = a.until(lambda f: f["event"] == "token")[0]["stream_id"]
    b = open_ws(sockets, gateway, B)
    for frame in ({"type": "resume", "stream_id": stream_id}, {"type": "cancel",
                                                               "stream_id": stream_id}):
        b.send(**frame)
        assert b.recv() == error("not_found", f"no stream {stream_id!r}", stream_id=stream_id)
    a.send(type="cancel", stream_id=stream_id)
    assert fake.wait_closed(model).outcome == "peer_closed"


# ------------------------------------------------------------------------------ bad frames


def test_bad_frames_are_answered_and_the_socket_stays_open(
        gateway: GatewayServer, sockets: list[Socket]) -> None:
    ws = open_ws(sockets, gateway)
    cases: list[tuple[str, Any]] = [
        ("{not json", error("invalid_request", "not valid JSON")),
        ("[1, 2]", error("invalid_request", "must be a JSON object")),
        (json.dumps({"type": "subscribe"}), error("invalid_request", "type:")),
        (json.dumps({"stream_id": "x"}), error("invalid_request", "type:", stream_id="x")),
        (json.dumps({"type": "start", "model": "demo/echo", "prompt": "x", "detach": True}),
         error("invalid_request", "detach")),
        (json.dumps({"type": "start", "model": "demo/echo", "prompt": "x",
                     "stream_id": "short"}), error("invalid_request", "stream_id",
                                                   stream_id="short")),
        (json.dumps({"type": "start", "model": "nope/nope", "prompt": "x",
                     "stream_id": f"client-{RUN}-0002"}),
         error("unknown_model", stream_id=f"client-{RUN}-0002")),
        (json.dumps({"type": "start", "model": "demo/echo"}), error("invalid_request")),
        (json.dumps({"type": "resume", "stream_id": f"client-{RUN}-0003",
                     "last_event_id": "\uff11"}),
         error("invalid_request", "last_event_id", stream_id=f"client-{RUN}-0003")),
        (json.dumps({"type": "resume", "stream_id": f"client-{RUN}-0003",
                     "last_event_id": -1}), error("invalid_request", "last_event_id")),
        (json.dumps({"type": "resume", "stream_id": f"client-{RUN}-0003"}),
         error("not_found", stream_id=f"client-{RUN}-0003")),
        (json.dumps({"type": "cancel"}), error("invalid_request", "stream_id")),
        (json.dumps({"type": "cancel", "stream_id": f"client-{RUN}-0003", "x": 1}),
         error("invalid_request", "x:")),
    ]
    before = refused_frames(gateway)
    for text, expected in cases:
        ws.conn.send(text)
        assert ws.recv() == expected, text
    assert refused_frames(gateway) - before == len(cases)
    assert metric(gateway, "sse_websockets_open") >= 1
    ws.send(type="start", model="demo/echo", prompt="still open", stream_id=f"client-{RUN}-0004")
    frames = ws.to_the_end(f"client-{RUN}-0004")[f"client-{RUN}-0004"]
    assert content(frames) == "still open"
    ws.send(type="resume", stream_id=f"client-{RUN}-0004", last_event_id=0)  # ended: replayed
    assert ws.to_the_end(f"client-{RUN}-0004")[f"client-{RUN}-0004"] == frames[1:]


def metric(server: GatewayServer, name: str) -> float:
    """The sum of a metric's samples in /metrics (every worker's)."""
    text = server.request("GET", "/metrics").body.decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + " ", name + "{")))


def refused_frames(server: GatewayServer) -> float:
    return metric(server, "sse_websocket_frames_refused_total")


def test_a_stream_is_followed_once_per_socket(
        gateway: GatewayServer, fake: FakeProvider, sockets: list[Socket]) -> None:
    model = fake.scenario(tokens=LONG, delay=0.02)
    ws = open_ws(sockets, gateway)
    ws.send(type="start", model=f"openai/{model}", prompt="x", stream_id=f"client-{RUN}-0005")
    ws.until(lambda f: f.get("event") == "token")
    ws.send(type="resume", stream_id=f"client-{RUN}-0005")
    assert ws.until(lambda f: "type" in f)[-1] == error(
        "invalid_request", "already follows", stream_id=f"client-{RUN}-0005")
    ws.send(type="cancel", stream_id=f"client-{RUN}-0005")
    assert fake.wait_closed(model).outcome == "peer_closed"


def test_a_frame_over_the_body_limit_closes_the_socket_1009(
        gateway: GatewayServer, sockets: list[Socket]) -> None:
    ws = open_ws(sockets, gateway)
    ws.send(type="start", model="demo/echo", prompt="x" * (1024 * 1024 + 1))
    assert ws.closed_with() == 1009


# ------------------------------------------------------------------------------ limits


def test_a_start_frame_counts_in_the_same_bucket_as_post(
        tight: GatewayServer, sockets: list[Socket]) -> None:
    """RATELIMIT_CREATE 3/minute for one key, used through both doors."""
    rl = {"Authorization": f"Bearer {KEY_RL}"}
    post = tight.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": "a"}, headers=rl)
    assert post.status == 200
    post.read_all()
    ws = open_ws(sockets, tight, rl)
    for i in range(2):
        ws.send(type="start", model="demo/echo", prompt=f"w{i}")
        ws.to_the_end()
    ws.send(type="start", model="demo/echo", prompt="over")
    refused = ws.recv()
    assert refused == error("rate_limited")
    assert 1 <= refused["retry_after"] <= 60
    again = tight.request("POST", "/v1/streams", {"model": "demo/echo", "prompt": "b"},
                          headers=rl)
    assert again.status == 429
    # Resumes count with GET .../events (2/minute), cancels with DELETE (2/minute).
    stream_id = post.header("X-Stream-ID")
    ws.send(type="resume", stream_id=stream_id)
    ws.to_the_end(stream_id)
    assert tight.request("GET", f"/v1/streams/{stream_id}/events", headers=rl).status == 200
    ws.send(type="resume", stream_id=stream_id)
    assert ws.recv() == error("rate_limited")
    assert tight.request("GET", f"/v1/streams/{stream_id}/events", headers=rl).status == 429
    assert tight.request("DELETE", f"/v1/streams/{stream_id}", headers=rl).status == 200
    ws.send(type="cancel", stream_id=stream_id)
    ws.send(type="cancel", stream_id=stream_id)
    assert ws.recv() == error("rate_limited")
    assert tight.request("DELETE", f"/v1/streams/{stream_id}", headers=rl).status == 429


def test_opening_sockets_is_rated_before_the_upgrade(tight: GatewayServer,
                                                      sockets: list[Socket]) -> None:
    """RATELIMIT_EVENTS 2/minute: a key's third socket in a minute is a plain 429."""
    key = {"Authorization": f"Bearer {KEY_OPEN}"}
    for _ in range(2):
        open_ws(sockets, tight, key)
    with pytest.raises(InvalidStatus) as refused:
        Socket(tight, key)
    response = refused.value.response
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert json.loads(response.body or b"{}")["error"]["code"] == "rate_limited"


def test_an_open_socket_is_one_of_its_keys_readers(fake: FakeProvider,
                                                    sockets: list[Socket]) -> None:
    """MAX_READERS_PER_KEY=2: a key's SSE responses and sockets count together (a key
    cannot hold sockets without end), and a closed socket's place comes back."""
    key = {"Authorization": f"Bearer {KEY_A}"}
    model = fake.scenario(tokens=LONG, delay=0.05)
    env = gateway_env(fake, API_KEYS=KEY_A, MAX_READERS_PER_KEY="2")
    with GatewayServer(env, label="ws-readers") as server:
        post = server.stream("POST", "/v1/streams", {"model": f"openai/{model}",
                                                     "prompt": "x"}, headers=key)
        post.read_until(lambda e: e.event == "token")  # its reader: the first
        first = open_ws(sockets, server, key)  # the second
        with pytest.raises(InvalidStatus) as refused:
            Socket(server, key)
        assert refused.value.response.status_code == 429
        assert json.loads(refused.value.response.body or b"{}")["error"]["code"] == \
            "too_many_readers"
        events = f"/v1/streams/{post.header('X-Stream-ID')}/events"
        reply = server.request("GET", events, headers=key)
        assert reply.status == 429 and reply.json()["error"]["code"] == "too_many_readers"
        first.close()
        deadline = time.monotonic() + 10
        while (follower := server.stream("GET", events, headers=key)).status == 429:
            follower.read_all()
            assert time.monotonic() < deadline, "the closed socket's place never came back"
            time.sleep(0.02)
        assert follower.status == 200
        follower.read_until(lambda e: e.event == "token")
        follower.drop()
        server.request("DELETE", f"/v1/streams/{post.header('X-Stream-ID')}", headers=key)
        assert fake.wait_closed(model).outcome == "peer_closed"


def test_streams_per_key_cap_holds_across_socket_and_post(
        tight: GatewayServer, fake: FakeProvider, sockets: list[Socket]) -> None:
    cap = {"Authorization": f"Bearer {KEY_CAP}"}
    model = fake.scenario(tokens=LONG, delay=0.02)
    post = tight.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x"},
                        headers=cap)
    post.read_until(lambda e: e.event == "token")
    ws = open_ws(sockets, tight, cap)
    ws.send(type="start", model=f"openai/{model}", prompt="y", stream_id=f"client-{RUN}-0006")
    ws.until(lambda f: f.get("event") == "token")
    ws.send(type="start", model=f"openai/{model}", prompt="z", stream_id=f"client-{RUN}-0007")
    refused = ws.until(lambda f: "type" in f)[-1]
    assert refused == error("too_many_streams", stream_id=f"client-{RUN}-0007")
    assert refused["retry_after"] == 1
    ws.send(type="cancel", stream_id=f"client-{RUN}-0006")
    tight.request("DELETE", f"/v1/streams/{post.header('X-Stream-ID')}", headers=cap)
    for i in range(2):
        assert fake.wait_closed(model, i).outcome == "peer_closed"


def test_a_client_that_takes_no_bytes_is_dropped_after_the_write_timeout(
        tight: GatewayServer, fake: FakeProvider) -> None:
    """WRITE_TIMEOUT_S=1; a client with a tiny receive window that stops reading after
    the handshake: dropped, so its stream (grace 0) ends and its provider is closed."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    from tests.live.test_slow_clients import small_window_socket

    model = fake.scenario(tokens=["x" * 32 * 1024] * 100, delay=0.03)
    client = WSConnection(ConnectionType.CLIENT)
    sock = small_window_socket(tight)
    try:
        sock.sendall(client.send(Request(host=tight.host, target="/v1/ws",
                                         extra_headers=[(b"authorization",
                                                         f"Bearer {KEY_A}".encode())])))
        while not any(isinstance(e, AcceptConnection) for e in client.events()):
            client.receive_data(sock.recv(4096))
        started = time.monotonic()
        sock.sendall(client.send(TextMessage(json.dumps(
            {"type": "start", "model": f"openai/{model}", "prompt": "x", "resume_grace_s": 0,
             "stream_id": f"stuck-{RUN}-0001"}))))
        call = fake.wait_closed(model)  # and never read another byte
        assert call.outcome == "peer_closed"
        assert call.closed_at is not None and 1.0 <= call.closed_at - started < 8
        assert call.tokens_sent < 100
        final = sse_events(tight, f"stuck-{RUN}-0001")[-1]  # read to its end
        assert (final["event"], final["data"]) == ("cancelled",
                                                   {"reason": "client_disconnected"})
    finally:
        sock.close()


def test_a_peer_that_stops_answering_pings_is_dropped(
        tight: GatewayServer, fake: FakeProvider) -> None:
    """A half-open connection (the peer vanished without a FIN) is found by pings: no
    pong by the next ping (HEARTBEAT_S 0.5) and the socket is closed, so its stream
    (grace 0, provider silent) ends and the provider is closed."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    model = fake.scenario(tokens=["a", "b"], stall_after=1, stall_s=60)
    client = WSConnection(ConnectionType.CLIENT)
    with socket.create_connection((tight.host, tight.port), timeout=10) as sock:
        sock.sendall(client.send(Request(host=tight.host, target="/v1/ws",
                                         extra_headers=[(b"authorization",
                                                         f"Bearer {KEY_A}".encode())])))
        while not any(isinstance(e, AcceptConnection) for e in client.events()):
            client.receive_data(sock.recv(4096))
        sock.sendall(client.send(TextMessage(json.dumps(
            {"type": "start", "model": f"openai/{model}", "prompt": "x", "resume_grace_s": 0,
             "stream_id": f"mute-{RUN}-00001"}))))
        fake.wait_call(model)
        silent = time.monotonic()
        call = fake.wait_closed(model)  # nothing read, no pong sent
        assert call.outcome == "peer_closed"
        assert call.closed_at is not None and 0.4 <= call.closed_at - silent < 5
    final = sse_events(tight, f"mute-{RUN}-00001")[-1]
    assert (final["event"], final["data"]) == ("cancelled", {"reason": "client_disconnected"})


# ------------------------------------------------------------------------------ nginx


def test_a_stream_over_the_socket_through_nginx_and_an_idle_socket_outlives_its_timeout(
        gateway: GatewayServer, fake: FakeProvider, sockets: list[Socket]) -> None:
    """nginx.conf as shipped, its read timeouts cut to 2 s: pings (every 0.5 s) keep an
    idle socket open past them."""
    tokens = [f"n{i} " for i in range(30)]
    model = fake.scenario(tokens=tokens, delay=0.01)
    with NginxServer([(gateway.host, gateway.port)], read_timeout="2s") as nginx:
        ws = open_ws(sockets, nginx)
        ws.send(type="start", model=f"openai/{model}", prompt="x")
        frames = ws.to_the_end()
        (stream_id,) = frames
        assert content(frames[stream_id]) == "".join(tokens)
        with pytest.raises(TimeoutError):
            ws.recv(timeout=3)  # idle longer than nginx's read timeout
        ws.send(type="resume", stream_id=stream_id, last_event_id=len(tokens))  # the last token
        assert ws.to_the_end(stream_id)[stream_id] == frames[stream_id][-1:]
        ws.close()  # an open socket would hold nginx's graceful stop


# ------------------------------------------------------------------------------ figures


def test_figures_cancel_and_reconnect(
        gateway: GatewayServer, fake: FakeProvider, sockets: list[Socket]) -> None:
    cancel_ms, replay_ms = [], []
    ws = open_ws(sockets, gateway)
    for _ in range(20):
        model = fake.scenario(tokens=LONG, delay=0.02)
        ws.send(type="start", model=f"openai/{model}", prompt="x")
        stream_id = ws.until(lambda f: f.get("event") == "token")[0]["stream_id"]
        asked = time.monotonic()
        ws.send(type="cancel", stream_id=stream_id)
        call = fake.wait_closed(model)
        assert call.outcome == "peer_closed" and call.closed_at is not None
        cancel_ms.append((call.closed_at - asked) * 1000)
        ws.to_the_end(stream_id)
    for _ in range(20):
        model = fake.scenario(tokens=LONG, delay=0.02)
        first = open_ws(sockets, gateway)
        first.send(type="start", model=f"openai/{model}", prompt="x", resume_grace_s=10)
        seen = first.until(lambda f: f.get("event") == "token" and f["id"] >= 3)
        stream_id = seen[0]["stream_id"]
        first.drop()
        began = time.monotonic()
        again = open_ws(sockets, gateway)
        # From event 1: events 2.. are stored, so the first frame is a replayed one
        # (after the last one seen, the next would come at the provider's pace).
        again.send(type="resume", stream_id=stream_id, last_event_id=1)
        frame = again.recv()
        replay_ms.append((time.monotonic() - began) * 1000)
        assert frame == seen[2]
        again.send(type="cancel", stream_id=stream_id)
        assert fake.wait_closed(model).outcome == "peer_closed"
    for name, values in (("ws_cancel_frame_to_provider_closed_ms", cancel_ms),
                         ("ws_reconnect_to_first_replayed_event_ms", replay_ms)):
        for value in values:
            record(name, value)
        print(f"{name}: median {statistics.median(values):.1f} worst {max(values):.1f}")
        assert max(values) < 2000


# ------------------------------------------------------------------------------ drain (last)


def test_a_draining_worker_refuses_starts_and_closes_its_sockets_1001(
        tight: GatewayServer, fake: FakeProvider, sockets: list[Socket]) -> None:
    model = fake.scenario(tokens=LONG, delay=0.02)
    drain = {"Authorization": f"Bearer {KEY_DRAIN}"}
    idle = open_ws(sockets, tight, drain)
    busy = open_ws(sockets, tight, drain)
    busy.send(type="start", model=f"openai/{model}", prompt="x")
    stream_id = busy.until(lambda f: f.get("event") == "token")[0]["stream_id"]
    os.kill(worker_pid(tight), signal.SIGTERM)
    assert idle.closed_with() == 1001
    busy.send(type="start", model="demo/echo", prompt="y")
    frames = busy.until(lambda f: "type" in f or f.get("event") in TERMINAL)
    refused_or_end = frames[-1]
    if "type" in refused_or_end:
        assert refused_or_end == error("overloaded", "shutting down", retry_after=1)
        frames = busy.until(lambda f: f.get("event") in TERMINAL)
    assert frames[-1]["stream_id"] == stream_id
    assert frames[-1]["data"] == {"reason": "shutdown"}
    assert busy.closed_with() == 1001
    assert fake.wait_closed(model).outcome == "peer_closed"
