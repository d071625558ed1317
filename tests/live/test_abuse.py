"""Caps a hostile client with a valid key (or none) tries to get around: readers per
stream and per key, and guessing API keys. Real gunicorn, both brokers."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import record
from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer, Reply, SSEStream, open_sse
from tests.test_broker import REDIS_URL

KEY, OTHER = "sk-abuse-one-0123", "sk-abuse-two-4567"
PER_STREAM, PER_KEY, AUTH_FAILURES = 3, 5, 10


@pytest.fixture(scope="module", params=["memory", "redis"])
def capped(fake: FakeProvider, request: pytest.FixtureRequest) -> Iterator[GatewayServer]:
    extra = {"REDIS_URL": REDIS_URL} if request.param == "redis" else {}
    env = gateway_env(fake, API_KEYS=f"{KEY},{OTHER}", MAX_READERS_PER_STREAM=str(PER_STREAM),
                      MAX_READERS_PER_KEY=str(PER_KEY),
                      RATELIMIT_AUTH_FAILURES=f"{AUTH_FAILURES}/minute", **extra)
    server = GatewayServer(env, label=request.param)
    try:
        yield server.start()
    finally:
        server.stop()


def fresh_address() -> str:
    """A loopback address of its own: failure counts outlive a run in the shared Redis."""
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"


def request_from(server: GatewayServer, source: str, method: str, path: str,
                 headers: dict[str, str] | None = None) -> Reply:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10,
                                            source_address=(source, 0))
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                     response.read())
    finally:
        connection.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def slow_stream(server: GatewayServer, fake: FakeProvider, key: str) -> tuple[SSEStream, str]:
    model = fake.scenario(tokens=[f"s{i} " for i in range(400)], delay=0.05)
    stream = server.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x"},
                           headers=bearer(key))
    assert stream.status == 200
    stream.read_until(lambda e: e.event == "start")
    return stream, stream.header("X-Stream-ID") or ""


def attach_at_once(server: GatewayServer, stream_id: str, key: str, count: int) -> list[SSEStream]:
    """``count`` readers of one stream, all asked for at the same moment."""
    go = threading.Barrier(count)
    opened: list[SSEStream] = []

    def one() -> None:
        go.wait()
        opened.append(open_sse(server.host, server.port, "GET", f"/v1/streams/{stream_id}/events",
                               headers=bearer(key)))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return opened


def refusal(stream: SSEStream) -> dict[str, object]:
    assert stream.status == 429
    assert stream.header("Retry-After") == "1"
    body: dict[str, object] = json.loads(stream.response.read())["error"]
    return body


def test_readers_of_one_stream_are_capped_also_when_they_come_at_once(
        capped: GatewayServer, fake: FakeProvider) -> None:
    first, stream_id = slow_stream(capped, fake, KEY)  # the POST's own reader is one
    readers = attach_at_once(capped, stream_id, KEY, 8)
    admitted = [r for r in readers if r.status == 200]
    refused = [r for r in readers if r.status != 200]
    assert len(admitted) == PER_STREAM - 1
    for stream in refused:
        assert refusal(stream) == {
            "code": "too_many_readers",
            "message": f"at most {PER_STREAM} readers may follow this stream at once; "
                       "close one first"}
    record("readers admitted per stream (cap 3, 8 asked at once)", len(admitted) + 1)
    # A reader that leaves frees its place (the feed gives its lease back as soon
    # as it sees the connection close): wait for that, bounded.
    admitted[0].close()
    deadline = time.monotonic() + 5
    while True:
        again = open_sse(capped.host, capped.port, "GET", f"/v1/streams/{stream_id}/events",
                         headers=bearer(KEY))
        if again.status == 200 or time.monotonic() > deadline:
            break
        again.response.read()
    assert again.status == 200
    capped.request("DELETE", f"/v1/streams/{stream_id}", headers=bearer(KEY))
    for stream in (first, again, *admitted[1:]):
        assert stream.read_all()[-1].event == "cancelled"


def test_readers_of_one_key_are_capped_across_its_streams(
        capped: GatewayServer, fake: FakeProvider) -> None:
    one, first_id = slow_stream(capped, fake, KEY)
    two, second_id = slow_stream(capped, fake, KEY)
    held = [one, two]
    held += attach_at_once(capped, first_id, KEY, 2)
    held += attach_at_once(capped, second_id, KEY, 2)  # 6 asked for, 5 allowed
    admitted = [s for s in held if s.status == 200]
    refused = [s for s in held if s.status != 200]
    assert len(admitted) == PER_KEY
    assert [refusal(s)["message"] for s in refused] == [
        f"at most {PER_KEY} readers may follow one key at once; close one first"]
    # A new stream of that key needs a reader too: refused before any provider request.
    model = fake.scenario(tokens=["never"])
    reply = capped.request("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x"},
                           headers=bearer(KEY))
    assert (reply.status, reply.json()["error"]["code"]) == (429, "too_many_readers")
    assert fake.calls(model) == []
    # Another key is not affected.
    theirs, their_id = slow_stream(capped, fake, OTHER)
    capped.request("DELETE", f"/v1/streams/{their_id}", headers=bearer(OTHER))
    for stream_id in (first_id, second_id):
        capped.request("DELETE", f"/v1/streams/{stream_id}", headers=bearer(KEY))
    for stream in (*admitted, theirs):
        assert stream.read_all()[-1].event == "cancelled"


def test_wrong_keys_are_counted_per_address_and_lock_it_out(capped: GatewayServer) -> None:
    guesser, bystander = fresh_address(), fresh_address()
    statuses = [request_from(capped, guesser, "GET", "/v1/models", bearer(f"sk-guess-{i}")).status
                for i in range(40)]
    assert statuses == [401] * AUTH_FAILURES + [429] * (40 - AUTH_FAILURES)
    locked = request_from(capped, guesser, "GET", "/v1/models", bearer(f"sk-guess-{99}"))
    assert locked.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(locked.headers["retry-after"]) <= 60
    # Locked out whatever the key: a right key must not stand out from the wrong ones.
    right = request_from(capped, guesser, "GET", "/v1/models", bearer(KEY))
    assert right.status == 429
    no_key = request_from(capped, guesser, "POST", "/v1/streams")
    assert no_key.status == 429
    # Another address is not affected.
    assert request_from(capped, bystander, "GET", "/v1/models", bearer(KEY)).status == 200
    assert request_from(capped, bystander, "GET", "/v1/models", bearer("sk-x")).status == 401
    assert request_from(capped, bystander, "GET", "/healthz").status == 200
