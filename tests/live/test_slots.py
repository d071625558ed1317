"""Per-key stream slots never leak, however streams end, across instances on Redis."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import redis

from tests.conftest import record
from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer
from tests.live.test_cluster import worker_pids
from tests.test_broker import REDIS_URL

KEY = f"sk-slots-{secrets.token_hex(6)}"
SLOTS = "sse:slots:key_" + hashlib.sha256(KEY.encode()).hexdigest()[:16]
LIMIT = 10
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Pair:
    a: GatewayServer
    b: GatewayServer


def env(fake: FakeProvider, **extra: str) -> dict[str, str]:
    settings = {"REDIS_URL": REDIS_URL, "API_KEYS": KEY, "MAX_STREAMS_PER_KEY": str(LIMIT),
                "PRODUCER_TIMEOUT_S": "1", **extra}
    return gateway_env(fake, **settings)


@pytest.fixture(scope="module")
def pair(fake: FakeProvider) -> Iterator[Pair]:
    with GatewayServer(env(fake, WORKERS="2")) as a, GatewayServer(env(fake, WORKERS="2")) as b:
        yield Pair(a, b)


@pytest.fixture(scope="module")
def store() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def held_after_end(store: redis.Redis, stream_id: str) -> float:
    """Seconds the stream's slot was still held once the client saw its end."""
    ended = time.monotonic()
    while store.zscore(SLOTS, stream_id) is not None:
        assert time.monotonic() - ended < 10, f"slot of {stream_id} never released"
        time.sleep(0.002)  # the release is another process's work: poll it
    return time.monotonic() - ended


def test_slots_never_leak(pair: Pair, fake: FakeProvider, store: redis.Redis) -> None:
    quick = fake.scenario(tokens=["a ", "b"], delay=0.01)
    failing = fake.scenario(status=400)
    silent = fake.scenario(tokens=["a", "b"], stall_after=1, stall_s=60)

    def done(server: GatewayServer) -> str:
        stream = server.stream("POST", "/v1/streams", {"model": f"openai/{quick}",
                                                       "prompt": "x"}, headers=AUTH)
        assert stream.read_all()[-1].event == "done"
        return str(stream.header("X-Stream-ID"))

    def error(server: GatewayServer) -> str:
        stream = server.stream("POST", "/v1/streams", {"model": f"anthropic/{failing}",
                                                       "prompt": "x"}, headers=AUTH)
        assert stream.read_all()[-1].event == "error"
        return str(stream.header("X-Stream-ID"))

    def deleted(server: GatewayServer) -> str:
        stream = server.stream("POST", "/v1/streams", {"model": f"openai/{silent}",
                                                       "prompt": "x"}, headers=AUTH)
        stream.read_until(lambda e: e.event == "token")
        other = pair.b if server is pair.a else pair.a  # cancelled from the other instance
        other.request("DELETE", f"/v1/streams/{stream.header('X-Stream-ID')}", headers=AUTH)
        assert stream.read_all()[-1].json() == {"reason": "deleted"}
        return str(stream.header("X-Stream-ID"))

    def dropped(grace: float) -> Callable[[GatewayServer], str]:
        def run(server: GatewayServer) -> str:
            stream = server.stream("POST", "/v1/streams", {
                "model": f"openai/{silent}", "prompt": "x", "resume_grace_s": grace},
                headers=AUTH)
            stream.read_until(lambda e: e.event == "token")
            stream.drop()
            stream_id = str(stream.header("X-Stream-ID"))
            deadline = time.monotonic() + 10
            while server.request("GET", f"/v1/streams/{stream_id}",
                                 headers=AUTH).json()["status"] == "running":
                assert time.monotonic() < deadline
                time.sleep(0.01)  # the end happens in the gateway: poll its status
            return stream_id
        return run

    endings = [done, error, deleted, dropped(0), dropped(0.3)]
    jobs = [(endings[i % len(endings)], (pair.a, pair.b)[i % 2]) for i in range(300)]

    def one(job: tuple[Callable[[GatewayServer], str], GatewayServer]) -> float:
        ending, server = job
        return held_after_end(store, ending(server))

    with ThreadPoolExecutor(max_workers=LIMIT - 2) as pool:
        holds = list(pool.map(one, jobs))
    for hold in holds:
        record("slot_held_after_stream_end_ms", hold * 1000)
    assert store.zcard(SLOTS) == 0
    assert max(holds) < 1.0


def test_slots_of_stopped_and_killed_workers_come_back(
        fake: FakeProvider, store: redis.Redis, pair: Pair) -> None:
    silent = fake.scenario(tokens=["a", "b"], stall_after=1, stall_s=60)

    def start_streams(server: GatewayServer, count: int) -> list:  # type: ignore[type-arg]
        streams = []
        for _ in range(count):
            stream = server.stream("POST", "/v1/streams", {"model": f"openai/{silent}",
                                                           "prompt": "x"}, headers=AUTH)
            stream.read_until(lambda e: e.event == "token")
            streams.append(stream)
        return streams

    with GatewayServer(env(fake)) as stopping, GatewayServer(env(fake)) as killed:
        assert stopping.process is not None and killed.process is not None
        graceful = start_streams(stopping, 4)
        doomed = start_streams(killed, 4)
        assert store.zcard(SLOTS) == 8
        stopping.process.send_signal(signal.SIGTERM)  # a deploy: streams end "shutdown"
        for stream in graceful:
            assert stream.read_all()[-1].json() == {"reason": "shutdown"}
        (worker,) = worker_pids(killed.process.pid)
        os.kill(worker, signal.SIGKILL)  # no finally runs: the slots must lapse
        killed_at = time.monotonic()
        while store.zcard(SLOTS) > 0:
            assert time.monotonic() - killed_at < 10, "slots of a killed worker never lapsed"
            time.sleep(0.05)
        record("slot_held_after_worker_sigkill_ms", (time.monotonic() - killed_at) * 1000)
        for stream in doomed:
            stream.drop()
    # Back to zero: exactly LIMIT streams fit again, the next one does not.
    running = start_streams(pair.a, LIMIT)
    refused = pair.b.request("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x"},
                             headers=AUTH)
    assert refused.status == 429 and refused.json()["error"]["code"] == "too_many_streams"
    for stream in running:
        pair.b.request("DELETE", f"/v1/streams/{stream.header('X-Stream-ID')}", headers=AUTH)
        stream.read_all()
