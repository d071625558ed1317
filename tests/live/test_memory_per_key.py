"""What one API key can make a worker hold is bounded, whatever it sends.

The worst a key can do is run ``MAX_STREAMS_PER_KEY`` streams at once, each
with the largest prompt, to a model that makes one event per word: ``demo/echo``
answers a 1 MiB prompt of one-letter words with 524,288 token events. Then
start more. What stays is bounded by the README's formula (README, "Known
limits"):

    MAX_STREAMS_PER_KEY x (MAX_STREAM_BYTES + MAX_CONTENT_LENGTH) + MAX_STORED_BYTES_PER_KEY

One gateway (gunicorn, gevent worker, in-memory broker: what a stream keeps is
in the worker) with small caps, and one key sending rounds of such streams,
each read to its end: a first round of long answers (131,072 events each, a
quarter of a whole one: eight times what a stream keeps; whole answers took
~16 s of the worker's CPU each, a minute of the suite, and held no more),
then rounds cut at ``max_tokens`` 32768 (each still keeps more than
``MAX_STREAM_BYTES``). The
worker's peak RSS (``VmHWM``) above its RSS before must stay under twice the
formula plus an allowance for the requests being parsed and the batches being
written. Before the byte caps the same load held ~30 MiB per running stream
(the demo's list of every word) and up to 100,000 events per ended stream, for
``STREAM_TTL_S``: measured +218 MiB against this bound of 44 MiB; now ~+20 MiB.
"""

from __future__ import annotations

import http.client
import json
import secrets
import threading
from pathlib import Path

import pytest

from tests.conftest import record
from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer, worker_pid

MIB = 1024 * 1024
STREAMS = 4  # MAX_STREAMS_PER_KEY
STREAM_BYTES = 1 * MIB  # MAX_STREAM_BYTES
STORED_BYTES = 4 * MIB  # MAX_STORED_BYTES_PER_KEY
BODY_BYTES = 1 * MIB  # MAX_CONTENT_LENGTH
ROUNDS = 3  # the first of long answers
LONG, CUT = 131072, 32768  # max_tokens of the first round, and of the others
WORDS = (BODY_BYTES - 100) // 2  # "a " repeated: one token event each
FORMULA = STREAMS * (STREAM_BYTES + BODY_BYTES) + STORED_BYTES
# Beyond twice the formula: per running stream, the request body while it is
# read and parsed (bytes, then the decoded JSON: ~2 x MAX_CONTENT_LENGTH) and
# one read batch joined for the socket; and the allocator's slack.
ALLOWANCE = STREAMS * 3 * BODY_BYTES + 8 * MIB
KEY_A, KEY_B = (f"sk-{name}-{secrets.token_hex(6)}" for name in ("a", "b"))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def big_stream(server: GatewayServer, out: dict[str, object], max_tokens: int | None) -> None:
    """POST the largest prompt and read the answer to its end, keeping only its tail."""
    body = json.dumps({"model": "demo/echo", "prompt": "a " * WORDS,
                       **({"max_tokens": max_tokens} if max_tokens else {})}).encode()
    connection = http.client.HTTPConnection(server.host, server.port, timeout=120)
    try:
        connection.request("POST", "/v1/streams", body=body, headers={
            **bearer(KEY_A), "Content-Type": "application/json"})
        response = connection.getresponse()
        out["status"], out["id"] = response.status, response.getheader("X-Stream-ID")
        tail, size = b"", 0
        while chunk := response.read1(1 << 20):
            size += len(chunk)
            tail = (tail + chunk)[-4096:]
        out["bytes"], out["tail"] = size, tail
    except Exception as exc:  # reported by the test, not lost in the thread
        out["error"] = repr(exc)
    finally:
        connection.close()


@pytest.mark.timeout(400)
def test_one_key_cannot_make_a_worker_hold_more_than_the_formula(fake: FakeProvider) -> None:
    env = gateway_env(fake, API_KEYS=f"{KEY_A},{KEY_B}", MAX_STREAMS_PER_KEY=str(STREAMS),
                      MAX_STREAM_BYTES=str(STREAM_BYTES), MAX_STORED_BYTES_PER_KEY=str(STORED_BYTES),
                      MAX_CONTENT_LENGTH=str(BODY_BYTES), DEMO_TTFT_S="0",
                      DEMO_TOKEN_DELAY_S="0", WRITE_TIMEOUT_S="60", MAX_TOKENS_LIMIT=str(LONG))
    with GatewayServer(env) as server:
        # Another key's stream, ended before the flood: it must survive it.
        other = server.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": "kept"},
                              headers=bearer(KEY_B))
        assert [e.event for e in other.read_all()][-1] == "done"
        other_id = other.header("X-Stream-ID")
        pid = worker_pid(server)
        baseline = status_kib(pid, "VmRSS")
        streams: list[dict[str, object]] = []
        for i in range(ROUNDS):
            round_: list[dict[str, object]] = [{} for _ in range(STREAMS)]
            threads = [threading.Thread(target=big_stream,
                                        args=(server, out, CUT if i else LONG))
                       for out in round_]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=600)
            streams += round_
        peak = status_kib(pid, "VmHWM")
        growth_mib = (peak - baseline) / 1024
        record("memory_per_key_worker_growth_mib", growth_mib)
        for i, out in enumerate(streams):
            assert "error" not in out and out["status"] == 200, out
            assert b"event: done" in out["tail"], out["tail"]  # type: ignore[operator]
            assert out["bytes"] > (4 * MIB if i < STREAMS else STREAM_BYTES)  # type: ignore[operator]
        bound_mib = (2 * FORMULA + ALLOWANCE) / MIB
        assert growth_mib < bound_mib, (
            f"one key grew the worker by {growth_mib:.0f} MiB (baseline {baseline // 1024} MiB); "
            f"the bound is {bound_mib:.0f} MiB")

        # Over its store cap, the key's oldest ended streams are forgotten...
        first, last = streams[0]["id"], streams[-1]["id"]
        assert server.request("GET", f"/v1/streams/{first}", headers=bearer(KEY_A)).status == 404
        reply = server.request("GET", f"/v1/streams/{last}", headers=bearer(KEY_A))
        assert reply.status == 200 and reply.json()["status"] == "done"
        # ... its newest keeps its last MAX_STREAM_BYTES: older positions are gone...
        reply = server.request("GET", f"/v1/streams/{last}/events",
                               headers={**bearer(KEY_A), "Last-Event-ID": "0"})
        assert reply.status == 410 and reply.json()["error"]["code"] == "position_gone"
        replay = server.stream("GET", f"/v1/streams/{last}/events", headers={
            **bearer(KEY_A), "Last-Event-ID": str(CUT - 10)})
        assert [e.event for e in replay.read_all()] == ["token"] * 10 + ["done"]
        # ... and another key's stream is still kept: one key cannot push out another's.
        reply = server.request("GET", f"/v1/streams/{other_id}", headers=bearer(KEY_B))
        assert reply.status == 200 and reply.json()["status"] == "done"
