"""The conventions common SSE clients rely on (contract: "Conventions that common SSE
clients rely on"), checked on the wire against the real gunicorn, on both brokers.

The third-party libraries themselves run in tests/live/test_sse_clients.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer, tokens_text
from tests.test_broker import REDIS_URL

ALPHA, BETA = "sk-alpha-conventions", "sk-beta-conventions"


@pytest.fixture(scope="module", params=["memory", "redis"])
def keyed(fake: FakeProvider, request: pytest.FixtureRequest) -> Iterator[GatewayServer]:
    extra = {"REDIS_URL": REDIS_URL} if request.param == "redis" else {}
    server = GatewayServer(gateway_env(fake, API_KEYS=f"{ALPHA},{BETA}", **extra),
                           label=request.param)
    try:
        yield server.start()
    finally:
        server.stop()


def bearer(key: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **more}


def finished_stream(gateway: GatewayServer, fake: FakeProvider) -> tuple[str, int, bytes]:
    model = fake.scenario(tokens=["a", "b", "c"])
    stream = gateway.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x"})
    events = stream.read_all()
    assert events[-1].event == "done"
    return stream.header("X-Stream-ID") or "", int(events[-1].id or -1), bytes(stream.raw)


def test_a_position_at_or_past_the_terminal_event_answers_204(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    stream_id, terminal, original = finished_stream(gateway, fake)
    path = f"/v1/streams/{stream_id}/events"
    for headers, query in (({"Last-Event-ID": str(terminal)}, ""), ({}, f"?last_event_id={terminal}"),
                           ({"Last-Event-ID": "999"}, ""), ({}, "?last_event_id=999")):
        reply = gateway.request("GET", path + query, headers=headers)
        assert (reply.status, reply.body) == (204, b""), (headers, query)
        assert reply.headers["x-stream-id"] == stream_id
        assert "content-type" not in reply.headers
    # One before the terminal event: that event alone, byte-identical.
    before = gateway.stream("GET", path, headers={"Last-Event-ID": str(terminal - 1)})
    assert [e.event for e in before.read_all()] == ["done"]
    assert bytes(before.raw) == b"retry: 2000\n" + original[original.index(f"id: {terminal}\n".encode()):]


def test_a_running_stream_answers_410_for_a_position_it_never_reached(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=[f"t{i} " for i in range(200)], delay=0.02)
    stream = gateway.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x"})
    stream.read_until(lambda e: e.event == "token")
    stream_id = stream.header("X-Stream-ID")
    reply = gateway.request("GET", f"/v1/streams/{stream_id}/events",
                            headers={"Last-Event-ID": "100000"})
    assert reply.status == 410
    assert reply.json()["error"]["code"] == "position_gone"
    gateway.request("DELETE", f"/v1/streams/{stream_id}")


@pytest.mark.parametrize("bad", ["%2B3", "1_0", "-1", "%D9%A3", "%EF%BC%93", "1e3", "%205",
                                 "18446744073709551616", "9" * 19, "9" * 3000])
def test_last_event_id_is_ascii_digits_only(gateway: GatewayServer, fake: FakeProvider,
                                            bad: str) -> None:
    stream_id, _, _ = finished_stream(gateway, fake)
    reply = gateway.request("GET", f"/v1/streams/{stream_id}/events?last_event_id={bad}")
    assert reply.status == 400
    assert reply.json()["error"]["param"] == "last_event_id"
    assert "Traceback" not in gateway.log()


def test_no_block_without_data_ends_with_a_blank_line(gateway: GatewayServer,
                                                      fake: FakeProvider) -> None:
    # Heartbeats every 0.5 s while the provider thinks, and between two tokens.
    model = fake.scenario(tokens=["one", " two"], ttft=1.2, delay=1.2)
    stream = gateway.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x"})
    events = stream.read_all()
    raw = bytes(stream.raw)
    assert raw.startswith(b"retry: 2000\nid: 0\nevent: start\ndata: {")
    assert raw.count(b": ping\n") >= 2
    blocks = raw.split(b"\n\n")
    assert blocks[-1] == b""
    for block in blocks[:-1]:
        assert b"\ndata: " in b"\n" + block, block
    assert [e.event for e in events] == ["start", "token", "token", "done"]
    assert tokens_text(events) == "one two"


def test_a_post_with_last_event_id_resumes_its_stream_without_a_second_request(
        keyed: GatewayServer, fake: FakeProvider) -> None:
    tokens = [f"w{i} " for i in range(40)]
    model = fake.scenario(tokens=tokens, delay=0.02)
    body = {"model": f"openai/{model}", "prompt": "resume me", "resume_grace_s": 30}
    sid = f"retried-post-{secrets.token_hex(8)}"  # Redis outlives one run
    first = keyed.stream("POST", "/v1/streams", body, headers=bearer(ALPHA, **{"X-Stream-ID": sid}))
    assert first.status == 200
    seen = []
    for item in first.events():
        seen.append(item.event)
        if len(seen) == 6:
            break
    first.drop()
    last = seen[-1].id or ""
    # What fetch-event-source and requests-sse do: the same POST again, with Last-Event-ID.
    again = keyed.stream("POST", "/v1/streams", body,
                         headers=bearer(ALPHA, **{"X-Stream-ID": sid, "Last-Event-ID": last}))
    assert again.status == 200
    assert again.header("X-Stream-ID") == sid
    rest = again.read_all()
    assert rest[0].id == str(int(last) + 1)
    assert tokens_text(seen) + tokens_text(rest) == "".join(tokens)
    ids = [int(e.id or -1) for e in seen + rest]
    assert ids == list(range(len(ids)))
    # The same POST with no position (its first answer was lost before any event):
    # the stream from the start, not a 409 and not a second provider request.
    replay = keyed.stream("POST", "/v1/streams", body, headers=bearer(ALPHA, **{"X-Stream-ID": sid}))
    assert replay.status == 200
    assert tokens_text(replay.read_all()) == "".join(tokens)
    assert len(fake.calls(model)) == 1
    # Another request under the same id is a conflict; resuming another key's id is unknown.
    other = keyed.request("POST", "/v1/streams", {**body, "prompt": "another"},
                          headers=bearer(ALPHA, **{"X-Stream-ID": sid}))
    assert (other.status, other.json()["error"]["code"]) == (409, "stream_exists")
    theirs = keyed.request("POST", "/v1/streams", body,
                           headers=bearer(BETA, **{"X-Stream-ID": sid, "Last-Event-ID": last}))
    assert (theirs.status, theirs.json()["error"]["code"]) == (404, "not_found")
    assert len(fake.calls(model)) == 1


def test_a_post_with_last_event_id_needs_the_stream_id(keyed: GatewayServer,
                                                       fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["x"])
    body = {"model": f"openai/{model}", "prompt": "x"}
    reply = keyed.request("POST", "/v1/streams", body, headers=bearer(ALPHA, **{"Last-Event-ID": "4"}))
    assert reply.status == 400
    assert reply.json()["error"]["param"] == "Last-Event-ID"
    reply = keyed.request("POST", "/v1/streams", body,
                          headers=bearer(ALPHA, **{"Last-Event-ID": "x4",
                                                   "X-Stream-ID": "never-made-0123456789"}))
    assert (reply.status, reply.json()["error"]["param"]) == (400, "last_event_id")
    assert fake.calls(model) == []


def test_stream_ids_are_scoped_by_owner(keyed: GatewayServer, fake: FakeProvider) -> None:
    sid = f"same-id-for-both-keys-{secrets.token_hex(8)}"
    alpha_model = fake.scenario(tokens=["alpha", "!"], delay=0.3)
    beta_model = fake.scenario(tokens=["beta", "?"])
    alpha = keyed.stream("POST", "/v1/streams", {"model": f"openai/{alpha_model}", "prompt": "a"},
                         headers=bearer(ALPHA, **{"X-Stream-ID": sid}))
    assert alpha.status == 200
    alpha.read_until(lambda e: e.event == "start")
    # The other key neither collides with the id nor learns it exists.
    beta = keyed.stream("POST", "/v1/streams", {"model": f"openai/{beta_model}", "prompt": "b"},
                        headers=bearer(BETA, **{"X-Stream-ID": sid}))
    assert beta.status == 200
    beta_events = beta.read_all()
    assert beta_events[0].json()["stream_id"] == sid
    assert tokens_text(beta_events) == "beta?"
    status = keyed.request("GET", f"/v1/streams/{sid}", headers=bearer(BETA)).json()
    assert (status["stream_id"], status["model"], status["status"]) == (
        sid, f"openai/{beta_model}", "done")
    alpha_events = alpha.read_all()
    assert tokens_text(alpha_events) == "alpha!"
    status = keyed.request("GET", f"/v1/streams/{sid}", headers=bearer(ALPHA)).json()
    assert (status["stream_id"], status["model"]) == (sid, f"openai/{alpha_model}")
    replay = keyed.stream("GET", f"/v1/streams/{sid}/events", headers=bearer(BETA))
    assert tokens_text(replay.read_all()) == "beta?"
