"""Redis going away and coming back, and what thousands of streams leave in it.

Each test runs its own redis-server (the machine's one is never stopped).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from sse_gateway.transports.sse import ServerSentEvent
from tests.conftest import record
from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer, tokens_text
from tests.live.infra import RedisServer
from tests.live.test_cluster import worker_pids

STORE_UNREACHABLE = {"code": "internal_error", "provider": "openai", "retryable": True,
                     "message": "the stream store is unreachable; resume later"}


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


def test_a_killed_worker_with_no_reader_ends_error_and_delete_answers_200(
        fake: FakeProvider) -> None:
    producer_timeout = 1.0
    env = {"PRODUCER_TIMEOUT_S": str(producer_timeout), "WORKERS": "1"}
    with RedisServer() as store, \
            GatewayServer(gateway_env(fake, REDIS_URL=store.url, **env), label="P") as producer, \
            GatewayServer(gateway_env(fake, REDIS_URL=store.url, **env), label="O") as other:
        assert producer.process is not None
        model = fake.scenario(tokens=[f"w{i} " for i in range(600)], delay=0.05)
        first = producer.stream("POST", "/v1/streams", {"model": f"openai/{model}",
                                                        "prompt": "x", "resume_grace_s": 120})
        stream_id = first.header("X-Stream-ID")
        first.read_until(lambda e: e.event == "token")
        first.drop()  # nobody reads: the grace keeps it going
        (worker,) = worker_pids(producer.process.pid)
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        bound = producer_timeout * 1.5 + 3  # the README's figure, with a generous margin
        while (status := other.request("GET", f"/v1/streams/{stream_id}").json())[
                "status"] == "running":
            assert time.monotonic() - killed < bound, "still running: nobody declared it lost"
            time.sleep(0.05)  # a status poller, as a client without a reader would be
        waited = time.monotonic() - killed
        record("sigkill_to_status_error_no_reader_s", waited)
        assert status["status"] == "error"
        reply = other.request("DELETE", f"/v1/streams/{stream_id}")
        assert reply.status == 200  # already ended: nothing to cancel
        assert reply.json()["status"] == "error"
        events = other.stream("GET", f"/v1/streams/{stream_id}/events",
                              headers={"Last-Event-ID": "0"}).read_all()
        assert events[-1].event == "error"
        assert events[-1].json() == {"code": "stream_lost",
                                     "message": "the process producing this stream stopped",
                                     "retryable": True, "provider": "openai"}
        assert "Traceback" not in other.log()


def freeze(store: RedisServer, seconds: float) -> None:
    """Stall the private redis-server (SIGSTOP) for ``seconds``, then let it go on."""
    assert store.process is not None
    os.kill(store.process.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)  # the length of the stall is what is tested, not a wait
    finally:
        os.kill(store.process.pid, signal.SIGCONT)


def read_through_outages(server: GatewayServer, stream_id: str, first: list[ServerSentEvent]
                         ) -> list[ServerSentEvent]:
    """All numbered events of a stream, resuming after each "store unreachable" error
    as the README says a client should; the unnumbered errors are left out."""
    events = [e for e in first if not (e.event == "error" and e.json() == STORE_UNREACHABLE)]
    for _ in range(20):
        if events and events[-1].event in ("done", "error", "cancelled"):
            return events
        rest = server.stream("GET", f"/v1/streams/{stream_id}/events",
                             headers={"Last-Event-ID": events[-1].id or ""}).read_all()
        events += [e for e in rest if not (e.event == "error" and e.json() == STORE_UNREACHABLE)]
        time.sleep(0.2)  # resume backoff, as a client's
    raise AssertionError(f"no terminal event: {events[-3:]}")


def through_a_freeze(fake: FakeProvider, producer_timeout_s: str, tokens: list[str],
                     stall_s: float) -> tuple[list[ServerSentEvent], str, str]:
    """Follow a stream (resuming as a client does) while its private Redis is frozen
    for ``stall_s``: its events, the fake's model and the gateway's log."""
    with RedisServer() as store, GatewayServer(gateway_env(
            fake, REDIS_URL=store.url, WORKERS="1", PRODUCER_TIMEOUT_S=producer_timeout_s)
            ) as server:
        model = fake.scenario(tokens=tokens, delay=0.1)
        first = server.stream("POST", "/v1/streams", {"model": f"openai/{model}",
                                                      "prompt": "x", "resume_grace_s": 60})
        stream_id = first.header("X-Stream-ID")
        first.read_until(lambda e: e.event == "token")
        freeze(store, stall_s)
        events = read_through_outages(server, stream_id, first.read_all())
        if events[-1].event == "error":  # the provider is closed before the end is written
            assert fake.wait_closed(model, timeout=15).outcome == "peer_closed"
        return events, model, server.log()


def test_a_redis_stall_longer_than_the_producer_timeout_is_ridden_through(
        fake: FakeProvider) -> None:
    stall_s = 6.0  # past redis-py's 5 s socket timeout: commands fail, and are applied later
    tokens = [f"s{i} " for i in range(40)]
    events, _, log = through_a_freeze(fake, "2", tokens, stall_s)
    assert events[-1].event == "done", events[-1]
    assert tokens_text(events) == "".join(tokens)
    ids = [int(e.id) for e in events]  # type: ignore[arg-type]
    assert ids == list(range(len(ids)))  # nothing lost, nothing twice
    record("redis_stall_ridden_through_s", stall_s)
    assert "Traceback" not in log


def test_a_redis_stall_beyond_the_ride_through_names_the_store(fake: FakeProvider) -> None:
    # A frozen store fails each command after redis-py's 5 s socket timeout;
    # the stream gives up at the first failure PRODUCER_TIMEOUT_S after the first.
    tokens = [f"s{i} " for i in range(400)]
    events, _, log = through_a_freeze(fake, "1", tokens, 12.0)
    assert events[-1].event == "error", events[-1]
    end = events[-1].json()
    assert (end["code"], end["retryable"]) == ("internal_error", True)
    found = re.fullmatch(r"the stream store was unreachable for (\d+\.\d) s", end["message"])
    assert found, end
    record("redis_stall_given_up_after_s", float(found[1]))
    text = tokens_text(events)
    assert "".join(tokens).startswith(text) and text  # a prefix, nothing twice
    ids = [int(e.id) for e in events]  # type: ignore[arg-type]
    assert ids == list(range(len(ids)))
    assert "the stream store was unreachable for" in log
    assert "Traceback" not in log


NODE_DRIVER = Path(__file__).with_name("sse_client_node.mjs")


def test_the_browser_client_resumes_after_a_store_outage(fake: FakeProvider) -> None:
    # app/static/sse-client.js under Node, with Node's fetch: the feed's id-less
    # "store unreachable" error must make it resume, not give up.
    node = shutil.which("node")
    assert node, "node is needed for the browser client's live test"
    stall_s = 6.0  # past redis-py's 5 s socket timeout: the feed's read fails
    with RedisServer() as store, GatewayServer(gateway_env(
            fake, REDIS_URL=store.url, WORKERS="1", PRODUCER_TIMEOUT_S="2")) as server:
        tokens = [f"n{i} " for i in range(40)]
        model = fake.scenario(tokens=tokens, delay=0.1)
        client = subprocess.Popen(
            [node, str(NODE_DRIVER), server.url, json.dumps({
                "model": f"openai/{model}", "prompt": "x", "resumeGraceS": 60})],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert client.stdout is not None
            lines = []
            for raw in client.stdout:  # until the first token has arrived
                lines.append(json.loads(raw))
                if lines[-1]["kind"] in ("token", "result"):
                    break
            assert lines[-1]["kind"] == "token", lines
            freeze(store, stall_s)
            output, errors = client.communicate(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(timeout=5)
        lines += [json.loads(line) for line in output.splitlines()]
        result = lines[-1]
        reconnects = [line for line in lines if line["kind"] == "reconnecting"]
        record("node_client_reconnects_over_a_store_outage", len(reconnects))
        assert result["kind"] == "result", (lines, errors)
        assert result["status"] == "done", (result, errors)
        assert result["text"] == "".join(tokens)
        assert [line["text"] for line in lines if line["kind"] == "token"] == tokens
        assert result["ids"] == [str(i) for i in range(len(result["ids"]))]  # none twice
        assert result["types"][-1] == "done"
        assert any(line["code"] == "internal_error" and
                   line["message"] == STORE_UNREACHABLE["message"] for line in reconnects), lines
        assert "Traceback" not in server.log()
