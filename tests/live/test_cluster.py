"""Two gunicorn instances (two workers each) behind the repository's nginx.conf, one Redis.

The producer of a stream, the reader that resumes it and the one that cancels
it are different processes: every assertion here is about that.
"""

from __future__ import annotations

import http.client
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import record
from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer, SSEStream, open_sse, tokens_text
from tests.live.infra import NginxServer
from tests.test_broker import REDIS_URL

LONG = [f"w{i} " for i in range(600)]
PRODUCER_TIMEOUT_S = 1.0


@dataclass
class Cluster:
    a: GatewayServer
    b: GatewayServer
    nginx: NginxServer


def cluster_env(fake: FakeProvider, **extra: str) -> dict[str, str]:
    settings = {"REDIS_URL": REDIS_URL, "WORKERS": "2", "TRUSTED_PROXIES": "1",
                "PRODUCER_TIMEOUT_S": str(PRODUCER_TIMEOUT_S), **extra}
    return gateway_env(fake, **settings)


@pytest.fixture(scope="module")
def cluster(fake: FakeProvider) -> Iterator[Cluster]:
    a = GatewayServer(cluster_env(fake), label="A")
    b = GatewayServer(cluster_env(fake), label="B")
    nginx: NginxServer | None = None
    try:
        a.start()
        b.start()
        nginx = NginxServer([(a.host, a.port), (b.host, b.port)]).start()
        yield Cluster(a, b, nginx)
    finally:
        if nginx is not None:
            nginx.stop()
        a.stop()
        b.stop()


def through_nginx(cluster: Cluster, method: str, path: str, body: object = None,
                  source: str | None = None) -> SSEStream:
    """An SSE request through nginx, from a chosen loopback address."""
    return open_sse(cluster.nginx.host, cluster.nginx.port, method, path, body, source=source)


def test_streams_through_nginx_arrive_unbuffered(cluster: Cluster, fake: FakeProvider) -> None:
    tokens = [f"t{i} " for i in range(6)]
    model = fake.scenario(tokens=tokens, delay=0.3)
    sent = time.monotonic()
    stream = through_nginx(cluster, "POST", "/v1/streams", {"model": f"openai/{model}",
                                                            "prompt": "x"})
    assert stream.status == 200
    events = stream.read_all()
    arrivals = [r.at for r in stream.received if r.event.event == "token"]
    assert tokens_text(events) == "".join(tokens)
    assert arrivals[0] - sent < 0.5  # the first token did not wait for the rest
    assert arrivals[-1] - arrivals[0] > 1.2
    record("first_token_through_nginx_ms", (arrivals[0] - sent) * 1000)


def test_the_app_sees_the_client_address_behind_nginx(cluster: Cluster) -> None:
    stream = through_nginx(cluster, "POST", "/v1/streams", {"model": "demo/echo", "prompt": "x"},
                           source="127.0.0.2")
    stream_id = stream.header("X-Stream-ID")
    stream.read_all()
    logs = cluster.a.log() + cluster.b.log()
    assert f"stream {stream_id}: demo/echo for 127.0.0.2" in logs  # not nginx's 127.0.0.1


def test_delete_on_b_closes_the_provider_of_a_stream_on_a(
        cluster: Cluster, fake: FakeProvider) -> None:
    for i in range(20):
        silent = i % 2 == 1  # half of them while the provider is silent
        model = fake.scenario(tokens=LONG, delay=0.02, stall_after=3 if silent else None,
                              stall_s=60)
        producer = cluster.a.stream("POST", "/v1/streams", {"model": f"anthropic/{model}",
                                                             "prompt": "x"})
        stream_id = producer.header("X-Stream-ID")
        producer.read_until(lambda e: e.event == "token")
        reader = cluster.b.stream("GET", f"/v1/streams/{stream_id}/events")
        reader.read_until(lambda e: e.event == "token")
        asked = time.monotonic()
        reply = cluster.b.request("DELETE", f"/v1/streams/{stream_id}")
        assert reply.status == 202
        call = fake.wait_closed(model)
        assert call.outcome == "peer_closed"
        record("delete_on_B_to_provider_closed_on_A_ms", (call.closed_at - asked) * 1000)  # type: ignore[operator]
        for stream in (producer, reader):
            events = stream.read_all()
            assert events[-1].event == "cancelled"
            assert events[-1].json() == {"reason": "deleted"}
        assert cluster.b.request("GET", f"/v1/streams/{stream_id}").json()["status"] == "cancelled"
        assert cluster.a.request("DELETE", f"/v1/streams/{stream_id}").status == 200


def test_resume_on_b_after_a_drop_on_a_loses_nothing(cluster: Cluster, fake: FakeProvider) -> None:
    for _ in range(20):
        tokens = [f"r{i} " for i in range(30)]
        model = fake.scenario(tokens=tokens, delay=0.02)
        first = cluster.a.stream("POST", "/v1/streams", {"model": f"openai/{model}",
                                                          "prompt": "x", "resume_grace_s": 10})
        stream_id = first.header("X-Stream-ID")
        seen = []
        for item in first.events():
            seen.append(item.event)
            if item.event.event == "token" and len(seen) > 8:
                break
        first.drop()
        position = int(seen[-1].id)  # type: ignore[arg-type]
        while cluster.b.request("GET", f"/v1/streams/{stream_id}").json()[
                "last_event_id"] < position + 5:
            time.sleep(0.01)  # let events pile up: this measures replay, not generation
        asked = time.monotonic()
        resumed = cluster.b.stream("GET", f"/v1/streams/{stream_id}/events",
                                   headers={"Last-Event-ID": str(position)})
        rest = resumed.read_all()
        record("reconnect_to_first_replayed_event_ms", (resumed.received[0].at - asked) * 1000)
        assert tokens_text(seen) + tokens_text(rest) == "".join(tokens)
        ids = [int(e.id) for e in seen + rest]  # type: ignore[arg-type]
        assert ids == list(range(len(ids)))
        assert rest[-1].event == "done"


def test_replay_elsewhere_is_byte_identical(cluster: Cluster, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["ä", "ß", "ç\n", "ð"], delay=0.05)
    first = cluster.a.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x"})
    first.read_all()
    replay = cluster.b.stream("GET", f"/v1/streams/{first.header('X-Stream-ID')}/events")
    replay.read_all()
    strip = lambda raw: bytes(raw).replace(b": ping\n", b"")  # noqa: E731
    assert strip(replay.raw) == strip(first.raw)


def test_a_reader_on_b_keeps_a_stream_on_a_alive(cluster: Cluster, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=LONG, delay=0.02)
    first = cluster.a.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x",
                                                      "resume_grace_s": 1})
    stream_id = first.header("X-Stream-ID")
    first.read_until(lambda e: e.event == "token")
    reader = cluster.b.stream("GET", f"/v1/streams/{stream_id}/events")
    reader.read_until(lambda e: e.event == "token")
    first.drop()
    time.sleep(2.5)  # longer than the grace: the reader on B must keep it going
    assert fake.calls(model)[0].outcome is None
    reader.drop()
    dropped = time.monotonic()
    call = fake.wait_closed(model)
    assert call.outcome == "peer_closed"
    assert 0.9 < call.closed_at - dropped < 3.5  # type: ignore[operator]
    final = cluster.b.stream("GET", f"/v1/streams/{stream_id}/events",
                             headers={"Last-Event-ID": "0"}).read_all()
    assert final[-1].json() == {"reason": "client_disconnected"}


def test_several_readers_on_both_instances(cluster: Cluster, fake: FakeProvider) -> None:
    tokens = [f"m{i} " for i in range(40)]
    model = fake.scenario(tokens=tokens, delay=0.02)
    first = through_nginx(cluster, "POST", "/v1/streams", {"model": f"openai/{model}",
                                                          "prompt": "x"})
    stream_id = first.header("X-Stream-ID")
    readers = [server.stream("GET", f"/v1/streams/{stream_id}/events")
               for server in (cluster.a, cluster.b, cluster.a, cluster.b)]
    for reader in [first, *readers]:
        events = reader.read_all()
        assert tokens_text(events) == "".join(tokens)
        assert [e.event for e in events].count("done") == 1


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def test_a_killed_producer_ends_its_readers_with_stream_lost(
        cluster: Cluster, fake: FakeProvider) -> None:
    with GatewayServer(cluster_env(fake, WORKERS="1"), label="C") as producer_host:
        assert producer_host.process is not None
        model = fake.scenario(tokens=LONG, delay=0.05)
        first = producer_host.stream("POST", "/v1/streams", {"model": f"openai/{model}",
                                                              "prompt": "x"})
        stream_id = first.header("X-Stream-ID")
        first.read_until(lambda e: e.event == "token")
        reader = cluster.b.stream("GET", f"/v1/streams/{stream_id}/events")
        reader.read_until(lambda e: e.event == "token")
        (worker,) = worker_pids(producer_host.process.pid)
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        events = reader.read_all()
        waited = reader.received[-1].at - killed
        record("sigkill_to_stream_lost_ms", waited * 1000)
        assert events[-1].event == "error"
        assert events[-1].json() == {"code": "stream_lost",
                                     "message": "the process producing this stream stopped",
                                     "retryable": True, "provider": "openai"}
        assert waited < PRODUCER_TIMEOUT_S + 3
        ids = [int(e.id) for e in events]  # type: ignore[arg-type]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        status = cluster.a.request("GET", f"/v1/streams/{stream_id}").json()
        assert status["status"] == "error"


def test_an_expired_position_answers_410(fake: FakeProvider) -> None:
    env = gateway_env(fake, REDIS_URL=REDIS_URL, MAX_EVENTS_PER_STREAM="5")
    with GatewayServer(env) as server:
        model = fake.scenario(tokens=[f"e{i}" for i in range(12)], delay=0.02)
        stream = server.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x"})
        stream.read_all()
        stream_id = stream.header("X-Stream-ID")
        gone = server.request("GET", f"/v1/streams/{stream_id}/events",
                              headers={"Last-Event-ID": "2"})
        assert gone.status == 410
        assert gone.json()["error"]["code"] == "position_gone"
        tail = server.stream("GET", f"/v1/streams/{stream_id}/events",
                             headers={"Last-Event-ID": str(len(stream.received) - 4)})
        assert len(tail.read_all()) == 3


def test_direct_connection_reaches_both_instances(cluster: Cluster) -> None:
    for server in (cluster.a, cluster.b):
        connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
        connection.request("GET", "/readyz")
        assert connection.getresponse().status == 200
        connection.close()
