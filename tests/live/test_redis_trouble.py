"""Redis going away and coming back, and what thousands of streams leave in it.

Each test runs its own redis-server (the machine's one is never stopped).
"""

from __future__ import annotations

import time

import redis

from tests.conftest import record
from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer, tokens_text
from tests.live.infra import RedisServer


def test_redis_outage_is_visible_never_hangs_and_heals(fake: FakeProvider) -> None:
    with RedisServer() as store, GatewayServer(gateway_env(
            fake, REDIS_URL=store.url, WORKERS="2", RATELIMIT_CREATE="100/minute",
            RATELIMIT_STATUS="100/minute")) as server:
        assert server.request("GET", "/readyz").json() == {
            "status": "ok", "broker": "redis",
            "providers": {"demo": True, "openai": True, "anthropic": True}}
        model = fake.scenario(tokens=["a", "b", "c"], stall_after=1, stall_s=60)
        running = server.stream("POST", "/v1/streams", {"model": f"openai/{model}",
                                                         "prompt": "x"})
        running.read_until(lambda e: e.event == "token")

        stopped = time.monotonic()
        store.stop()
        events = running.read_all()  # must end, not hang
        record("redis_down_to_reader_error_ms", (running.received[-1].at - stopped) * 1000)
        assert events[-1].event == "error"
        assert events[-1].id == "1"  # unnumbered: the last event id stays at the last token
        assert events[-1].json() == {"code": "internal_error",
                                     "message": "the stream store is unreachable; resume later",
                                     "retryable": True, "provider": "openai"}
        assert fake.wait_closed(model, timeout=15).outcome == "peer_closed"  # not billed on

        ready = server.request("GET", "/readyz", timeout=15)
        assert (ready.status, ready.json()["status"], ready.json()["broker"]) == (
            503, "unavailable", "unreachable")
        refused = server.request("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x"},
                                 timeout=15)
        assert refused.status == 503
        assert refused.headers["retry-after"] == "5"
        assert refused.json() == {"error": {"code": "overloaded",
                                            "message": "the stream store is unreachable; "
                                                       "retry shortly"}}

        store.restart()
        deadline = time.monotonic() + 15
        while server.request("GET", "/readyz").status != 200:
            assert time.monotonic() < deadline, "not ready again after Redis came back"
            time.sleep(0.1)  # readiness is polled, as an orchestrator would
        for _ in range(4):  # both workers, without a restart
            events = server.stream("POST", "/v1/streams",
                                   {"model": "demo/echo", "prompt": "back again"}).read_all()
            assert tokens_text(events) == "back again"
            assert events[-1].event == "done"
        assert "Traceback" not in server.log()


def test_redis_memory_stays_flat_over_a_thousand_finished_streams(fake: FakeProvider) -> None:
    with RedisServer() as store, GatewayServer(gateway_env(
            fake, REDIS_URL=store.url, STREAM_TTL_S="3", DEMO_TTFT_S="0",
            DEMO_TOKEN_DELAY_S="0")) as server:
        client = redis.Redis.from_url(store.url)
        server.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": "warm"}).read_all()
        deadline = time.monotonic() + 10
        while client.dbsize() and time.monotonic() < deadline:
            time.sleep(0.1)  # expiry is a clock
        before = client.info("memory")["used_memory"]
        prompt = "a few words to stream back, " * 4
        for _ in range(1000):
            events = server.stream("POST", "/v1/streams",
                                   {"model": "demo/echo", "prompt": prompt}).read_all()
            assert events[-1].event == "done"
        full = client.info("memory")["used_memory"]
        keys_full = client.dbsize()
        deadline = time.monotonic() + 20
        while client.dbsize() and time.monotonic() < deadline:
            time.sleep(0.2)  # every key carries an expiry: wait for it
        after = client.info("memory")["used_memory"]
        record("redis_memory_before_kib", before / 1024)
        record("redis_memory_1000_finished_within_ttl_kib", full / 1024)
        record("redis_memory_1000_finished_after_ttl_kib", after / 1024)
        assert keys_full > 0
        assert client.dbsize() == 0
        assert after - before < 256 * 1024  # back to where it was, give or take allocator slack
        client.close()
