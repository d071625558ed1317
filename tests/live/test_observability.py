"""/metrics across workers, structured logs, and readiness."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import time

from tests.fake_provider import Behaviour, FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer
from tests.live.test_cluster import worker_pids
from tests.test_broker import REDIS_URL


def scrape(server: GatewayServer) -> dict[str, float]:
    """Samples as {'name{labels}': value}, from one worker or another."""
    reply = server.request("GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in reply.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(value for key, value in samples.items()
               if (key == name or key.startswith(name + "{")) and all(w in key for w in wanted))


def test_metrics_add_up_across_workers(fake: FakeProvider) -> None:
    # A fresh key each run: the cancel rate is counted in Redis, across runs.
    key = f"sk-metrics-{secrets.token_hex(6)}"
    auth = {"Authorization": f"Bearer {key}"}
    env = gateway_env(fake, REDIS_URL=REDIS_URL, WORKERS="2", ACCESS_LOG="-", API_KEYS=key,
                      RATELIMIT_CANCEL="2/minute", HEARTBEAT_S="0.2")
    with GatewayServer(env) as server:
        quick = fake.scenario(tokens=["a", "b", "c"], delay=0.01)
        failing = fake.scenario_seq([Behaviour(status=503), Behaviour(status=400)])
        slow = fake.scenario(tokens=["x", "y"], ttft=0.5)
        silent = fake.scenario(tokens=["a", "b"], stall_after=1, stall_s=30)
        for model in [f"openai/{quick}"] * 6 + [f"openai/{failing}", f"anthropic/{slow}"]:
            server.stream("POST", "/v1/streams", {"model": model, "prompt": "x"},
                          headers=auth).read_all()
        cancelled = server.stream("POST", "/v1/streams", {"model": f"openai/{silent}",
                                                          "prompt": "x"}, headers=auth)
        cancelled.read_until(lambda e: e.event == "token")
        stream_id = cancelled.header("X-Stream-ID")
        statuses = [server.request("DELETE", f"/v1/streams/{stream_id}", headers=auth).status
                    for _ in range(3)]  # the third is over RATELIMIT_CANCEL
        assert statuses[0] == 202 and statuses[2] == 429, statuses
        assert cancelled.read_all()[-1].event == "cancelled"

        pids = set(re.findall(r"pid=<(\d+)>", server.log()))
        assert len(pids) == 2  # the streams were spread over both workers
        for _ in range(4):  # every scrape, whichever worker answers, sees both
            samples = scrape(server)
            assert total(samples, "sse_streams_started_total") == 9
            assert total(samples, "sse_streams_ended_total", outcome="done") == 7
            assert total(samples, "sse_streams_ended_total", outcome="error",
                         reason="upstream_bad_request") == 1
            assert total(samples, "sse_streams_ended_total", outcome="cancelled",
                         reason="deleted") == 1
            assert total(samples, "sse_streams_active") == 0
            assert total(samples, "sse_tokens_relayed_total", provider="openai") == 19
            assert total(samples, "sse_retries_total", provider="openai") == 1
            assert total(samples, "sse_provider_errors_total", code="upstream_unavailable") == 1
            assert total(samples, "sse_time_to_first_token_seconds_count") == 8
            assert total(samples, "sse_stream_duration_seconds_count") == 9
            assert total(samples, "sse_cancel_to_provider_closed_seconds_count",
                         reason="deleted") == 1
            assert total(samples, "sse_rejections_total", reason="rate_limited") == 1
            assert total(samples, "sse_heartbeats_total") >= 2  # during the 0.5 s ttft
            slow_ttft = total(samples, "sse_time_to_first_token_seconds_bucket",
                              provider="anthropic", le="0.25")
            assert slow_ttft == 0  # the anthropic stream's first token took 0.5 s


def test_a_killed_workers_streams_leave_the_active_gauge(fake: FakeProvider) -> None:
    with GatewayServer(gateway_env(fake, REDIS_URL=REDIS_URL, WORKERS="2")) as server:
        assert server.process is not None
        silent = fake.scenario(tokens=["a", "b"], stall_after=1, stall_s=30)
        streams = [server.stream("POST", "/v1/streams", {"model": f"openai/{silent}",
                                                         "prompt": "x"}) for _ in range(4)]
        for stream in streams:
            stream.read_until(lambda e: e.event == "token")
        assert total(scrape(server), "sse_streams_active") == 4
        # Which worker got which stream is the kernel's choice (often one got all
        # four): kill both, and every stream must leave the gauge.
        for victim in worker_pids(server.process.pid):
            os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            try:
                active = total(scrape(server), "sse_streams_active")
            except OSError:
                active = -1  # the scrape hit a dying worker, or none is up yet
            if active == 0:
                break
            assert time.monotonic() < deadline, "the killed worker's gauge never dropped"
            time.sleep(0.1)  # the master notices the death, then marks it
        assert total(scrape(server), "sse_streams_started_total") == 4  # counters are kept


def test_json_logs_one_line_per_stream_end_without_keys(fake: FakeProvider) -> None:
    key = "sk-json-log-key-0001"
    with GatewayServer(gateway_env(fake, LOG_FORMAT="json", API_KEYS=key)) as server:
        stream = server.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": "a b"},
                               headers={"Authorization": f"Bearer {key}"})
        stream_id = stream.header("X-Stream-ID")
        stream.read_all()
        deadline = time.monotonic() + 5
        ends: list[dict[str, object]] = []
        while not ends and time.monotonic() < deadline:
            records = [json.loads(line) for line in server.log().splitlines()
                       if line.startswith("{")]
            ends = [r for r in records if r.get("stream_id") == stream_id
                    and r.get("outcome")]
            time.sleep(0.05)  # the line is written as the stream ends
        assert len(ends) == 1
        end = ends[0]
        assert {"asctime", "level", "logger", "pid", "message"} <= set(end)
        assert end["outcome"] == "done" and end["reason"] == "stop"
        assert end["model"] == "demo/echo" and end["tokens"] == 2 and end["retries"] == 0
        assert isinstance(end["ttft_ms"], float) and isinstance(end["duration_ms"], float)
        assert str(end["caller"]).startswith("key_")
        assert key not in server.log()


def test_readiness_names_the_broker_and_providers(fake: FakeProvider) -> None:
    with GatewayServer({"MODELS": "demo/echo"}) as server:
        reply = server.request("GET", "/readyz")
        assert (reply.status, reply.json()) == (200, {
            "status": "ok", "broker": "memory",
            "providers": {"demo": True, "openai": False, "anthropic": False}})
