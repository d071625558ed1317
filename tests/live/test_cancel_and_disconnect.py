"""DELETE, client drops, resume grace and resume: the provider's side is asserted."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import record
from tests.fake_provider import FakeProvider
from tests.live.gateway import GatewayServer, tokens_text

LONG = [f"w{i} " for i in range(400)]


def start(gateway: GatewayServer, model: str, **body: object):
    stream = gateway.stream("POST", "/v1/streams", {"model": model, "prompt": "x", **body})
    assert stream.status == 200
    return stream, stream.header("X-Stream-ID")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_delete_closes_the_provider_connection_and_ends_every_reader(
        gateway: GatewayServer, fake: FakeProvider, provider: str) -> None:
    model = fake.scenario(tokens=LONG, delay=0.05)
    first, stream_id = start(gateway, f"{provider}/{model}")
    first.read_until(lambda e: e.event == "token")
    second = gateway.stream("GET", f"/v1/streams/{stream_id}/events")
    second.read_until(lambda e: e.event == "token")
    asked = time.monotonic()
    reply = gateway.request("DELETE", f"/v1/streams/{stream_id}")
    assert reply.status == 202
    assert reply.json()["status"] in ("running", "cancelled")
    call = fake.wait_closed(model)
    assert call.outcome == "peer_closed"
    assert call.closed_at is not None and call.closed_at - asked < 1.0
    for reader in (first, second):
        events = reader.read_all()
        assert events[-1].event == "cancelled"
        assert events[-1].json() == {"reason": "deleted"}
        assert [e.event for e in events].count("cancelled") == 1
    assert call.tokens_sent < len(LONG)
    status = gateway.request("GET", f"/v1/streams/{stream_id}").json()
    assert status["status"] == "cancelled"
    again = gateway.request("DELETE", f"/v1/streams/{stream_id}")
    assert again.status == 200
    assert again.json() == status


def test_delete_to_provider_closed_latency(gateway: GatewayServer, fake: FakeProvider) -> None:
    """Twenty cancels, half while the provider streams, half while it is silent."""
    for i in range(20):
        silent = i % 2 == 1
        model = fake.scenario(tokens=LONG, delay=0.02, stall_after=2 if silent else None,
                              stall_s=60)
        stream, stream_id = start(gateway, f"openai/{model}")
        stream.read_until(lambda e: e.event == "token")
        if silent:
            fake.wait_call(model)
        asked = time.monotonic()
        assert gateway.request("DELETE", f"/v1/streams/{stream_id}").status == 202
        call = fake.wait_closed(model)
        assert call.outcome == "peer_closed"
        assert call.closed_at is not None
        record(f"delete_to_provider_closed_ms[{gateway.label}]", (call.closed_at - asked) * 1000)
        assert stream.read_all()[-1].json() == {"reason": "deleted"}


def test_delete_while_waiting_for_the_first_token(gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["never"], ttft=60)
    stream, stream_id = start(gateway, f"anthropic/{model}")
    stream.read_until(lambda e: e.event == "start")
    fake.wait_call(model)
    asked = time.monotonic()
    gateway.request("DELETE", f"/v1/streams/{stream_id}")
    call = fake.wait_closed(model)
    assert call.outcome == "peer_closed" and call.closed_at - asked < 1.0  # type: ignore[operator]
    assert [e.event for e in stream.read_all()] == ["start", "cancelled"]


def test_delete_unknown_stream_is_404(gateway: GatewayServer) -> None:
    reply = gateway.request("DELETE", "/v1/streams/no-such-stream-0123456789")
    assert reply.status == 404
    assert reply.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_client_drop_with_no_grace_closes_the_provider_at_once(
        gateway: GatewayServer, fake: FakeProvider, reset: bool) -> None:
    for _ in range(10):
        model = fake.scenario(tokens=LONG, delay=0.02)
        stream, stream_id = start(gateway, f"openai/{model}", resume_grace_s=0)
        stream.read_until(lambda e: e.event == "token")
        dropped = time.monotonic()
        stream.drop(reset=reset)
        call = fake.wait_closed(model)
        assert call.outcome == "peer_closed"
        record(f"client_drop_to_provider_closed_ms[{gateway.label}]",
               (call.closed_at - dropped) * 1000)  # type: ignore[operator]
        assert call.closed_at - dropped < 1.0  # type: ignore[operator]
        final = gateway.stream("GET", f"/v1/streams/{stream_id}/events",
                               headers={"Last-Event-ID": "0"}).read_all()
        assert final[-1].event == "cancelled"
        assert final[-1].json() == {"reason": "client_disconnected"}


def test_client_drop_is_noticed_while_the_provider_is_silent(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["a", "b", "c"], stall_after=1, stall_s=60)
    stream, _ = start(gateway, f"anthropic/{model}", resume_grace_s=0)
    stream.read_until(lambda e: e.event == "token")
    dropped = time.monotonic()
    stream.drop()
    call = fake.wait_closed(model, timeout=5)
    assert call.outcome == "peer_closed"
    assert call.closed_at - dropped < 0.5  # type: ignore[operator]


def test_bytes_the_client_sends_while_streaming_are_not_a_disconnect(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    """A pipelined request makes the client socket readable for good: the watch must
    leave the bytes alone, keep the stream going, and not spin on them."""
    tokens = [f"t{i} " for i in range(40)]
    model = fake.scenario(tokens=tokens, delay=0.03)
    stream, _ = start(gateway, f"openai/{model}")
    stream.read_until(lambda e: e.event == "token")
    worker = Path(f"/proc/{gateway.process.pid}/task/{gateway.process.pid}/children"
                  ).read_text().split()  # type: ignore[union-attr]
    assert len(worker) == 1
    cpu_before = _cpu_seconds(int(worker[0]))
    sock = stream.connection.sock
    assert sock is not None
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
    events = stream.read_all()
    assert tokens_text(events) == "".join(tokens)
    assert events[-1].event == "done"
    assert fake.wait_closed(model).outcome == "complete"
    # The rest of the stream took ~1.2 s; a watch woken by the bytes at every turn
    # of the event loop would have kept the worker busy all along.
    assert _cpu_seconds(int(worker[0])) - cpu_before < 0.5


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_client_drop_keeps_generating_for_the_grace_then_closes(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=LONG, delay=0.02)
    stream, stream_id = start(gateway, f"openai/{model}", resume_grace_s=1.5)
    stream.read_until(lambda e: e.event == "token")
    dropped = time.monotonic()
    stream.drop()
    call = fake.wait_closed(model, timeout=10)
    assert call.outcome == "peer_closed"
    waited = call.closed_at - dropped  # type: ignore[operator]
    assert 1.4 < waited < 3.0
    final = gateway.stream("GET", f"/v1/streams/{stream_id}/events").read_all()
    assert final[-1].json() == {"reason": "client_disconnected"}
    assert len(tokens_text(final)) > 0


def test_resume_after_a_drop_gets_every_token_exactly_once(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    tokens = [f"tok{i} " for i in range(60)]
    model = fake.scenario(tokens=tokens, delay=0.03)
    stream, stream_id = start(gateway, f"anthropic/{model}", resume_grace_s=10)
    seen = []
    for item in stream.events():
        seen.append(item.event)
        if item.event.event == "token" and len(seen) >= 10:
            break
    stream.drop()
    last_id = seen[-1].id
    resumed = gateway.stream("GET", f"/v1/streams/{stream_id}/events",
                             headers={"Last-Event-ID": str(last_id)})
    assert resumed.status == 200
    assert resumed.header("X-Stream-ID") == stream_id
    rest = resumed.read_all()
    assert bytes(resumed.raw).startswith(b"retry: 2000\nid: ")
    assert rest[0].id == str(int(last_id) + 1)
    assert tokens_text(seen) + tokens_text(rest) == "".join(tokens)
    assert rest[-1].event == "done"
    ids = [int(e.id) for e in seen + rest]  # type: ignore[arg-type]
    assert ids == list(range(len(ids)))


def test_replay_is_byte_identical_and_query_position_works(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["a", "b", "c", "d"], delay=0.05)  # one event each
    stream, stream_id = start(gateway, f"openai/{model}")
    stream.read_all()
    original = bytes(stream.raw)
    replay = gateway.stream("GET", f"/v1/streams/{stream_id}/events")
    replay.read_all()
    strip = lambda raw: raw.replace(b": ping\n", b"")  # noqa: E731 - heartbeats may differ
    assert strip(bytes(replay.raw)) == strip(original)
    tail = gateway.stream("GET", f"/v1/streams/{stream_id}/events?last_event_id=3")
    assert [e.id for e in tail.read_all()] == ["4", "5"]
    whole = strip(original)
    assert strip(bytes(tail.raw)) == b"retry: 2000\n" + whole[whole.index(b"id: 4\n"):]


def test_reattaching_within_the_grace_keeps_the_stream_alive(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    tokens = [f"x{i} " for i in range(80)]
    model = fake.scenario(tokens=tokens, delay=0.03)
    stream, stream_id = start(gateway, f"openai/{model}", resume_grace_s=0.5)
    stream.read_until(lambda e: e.event == "token")
    stream.drop()
    resumed = gateway.stream("GET", f"/v1/streams/{stream_id}/events")
    events = resumed.read_all()  # takes ~2.4 s: far longer than the grace
    assert events[-1].event == "done"
    assert tokens_text(events) == "".join(tokens)
    assert fake.wait_closed(model).outcome == "complete"


def test_several_readers_follow_one_stream(gateway: GatewayServer, fake: FakeProvider) -> None:
    tokens = [f"r{i} " for i in range(30)]
    model = fake.scenario(tokens=tokens, delay=0.02)
    first, stream_id = start(gateway, f"openai/{model}")
    others = [gateway.stream("GET", f"/v1/streams/{stream_id}/events") for _ in range(3)]
    for reader in [first, *others]:
        events = reader.read_all()
        assert tokens_text(events) == "".join(tokens)
        assert events[-1].event == "done"


def test_events_of_unknown_stream_and_bad_position(gateway: GatewayServer) -> None:
    reply = gateway.request("GET", "/v1/streams/unknown-stream-000000/events")
    assert reply.status == 404
    assert reply.json()["error"]["code"] == "not_found"
    stream = gateway.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x"})
    stream_id = stream.header("X-Stream-ID")
    stream.read_all()
    for bad in ("abc", "-5", "1.5", "+3", "1_0", "18446744073709551616"):
        reply = gateway.request("GET", f"/v1/streams/{stream_id}/events",
                                headers={"Last-Event-ID": bad})
        assert reply.status == 400, bad
        assert reply.json()["error"] == {"code": "invalid_request", "param": "last_event_id",
                                         "message": "last_event_id: must be an event id "
                                                    "(ASCII digits, at most 18)"}
