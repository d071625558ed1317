"""API keys, stream ownership, request rates, per-key stream limits and CORS."""

from __future__ import annotations

import http.client
import secrets
from collections.abc import Iterator

import pytest

from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer, Reply
from tests.test_broker import REDIS_URL

# Fresh keys each run: their rate counts live in Redis, across runs.
ALPHA, BETA, GAMMA = (f"sk-{name}-{secrets.token_hex(6)}" for name in ("alpha", "beta", "gamma"))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[GatewayServer]:
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text(f"# one key a line\n\n{GAMMA}\n")
    env = gateway_env(fake, API_KEYS=f"{ALPHA}, {BETA}", API_KEYS_FILE=str(keys_file),
                      REDIS_URL=REDIS_URL, RATELIMIT_STATUS="5/minute",
                      MAX_STREAMS_PER_KEY="2")
    with GatewayServer(env) as server:
        yield server


def test_every_v1_route_needs_a_valid_key(keyed: GatewayServer) -> None:
    for headers in ({}, bearer("sk-wrong"), {"Authorization": f"Basic {ALPHA}"},
                    {"Authorization": "Bearer"}, {"Authorization": f"bearer  {ALPHA}x"}):
        for method, path, body in (("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x"}),
                                   ("GET", "/v1/models", None),
                                   ("GET", "/v1/streams/some-stream-id-0000", None),
                                   ("DELETE", "/v1/streams/some-stream-id-0000", None),
                                   ("GET", "/v1/streams/some-stream-id-0000/events", None)):
            reply = keyed.request(method, path, body, headers)
            assert reply.status == 401, (method, path, headers)
            assert reply.json() == {"error": {
                "code": "unauthorized",
                "message": "a valid API key is required: Authorization: Bearer <key>"}}
            assert reply.headers["www-authenticate"] == 'Bearer realm="sse-gateway"'
    assert keyed.request("GET", "/healthz").status == 200  # operations stay open
    for key in (ALPHA, BETA, GAMMA):  # from API_KEYS and from API_KEYS_FILE
        assert keyed.request("GET", "/v1/models", headers=bearer(key)).status == 200
    assert keyed.request("GET", "/v1/models", headers={"Authorization": f"bearer {ALPHA}"}
                         ).status == 200  # the scheme is case-insensitive


def test_keys_are_never_logged(keyed: GatewayServer) -> None:
    keyed.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x"},
                 headers=bearer(ALPHA)).read_all()
    log = keyed.log()
    for key in (ALPHA, BETA, GAMMA, "sk-wrong"):
        assert key not in log
    assert "runs open" not in log
    assert "key_" in log  # the stream's log line names the key id instead


def test_another_keys_stream_is_404_on_every_route(keyed: GatewayServer,
                                                   fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["a", "b"], stall_after=1, stall_s=30)
    stream = keyed.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x"},
                          headers=bearer(ALPHA))
    stream_id = stream.header("X-Stream-ID")
    stream.read_until(lambda e: e.event == "token")
    unknown = "unknown-stream-id-0000"
    for method, suffix in (("GET", ""), ("GET", "/events"), ("DELETE", "")):
        theirs = keyed.request(method, f"/v1/streams/{stream_id}{suffix}", headers=bearer(BETA))
        nobody = keyed.request(method, f"/v1/streams/{unknown}{suffix}", headers=bearer(BETA))
        assert theirs.status == nobody.status == 404
        assert theirs.json()["error"]["code"] == "not_found"
        assert theirs.json()["error"]["message"].replace(stream_id, unknown) == \
            nobody.json()["error"]["message"]
    assert keyed.request("GET", f"/v1/streams/{stream_id}", headers=bearer(ALPHA)).status == 200
    assert fake.calls(model)[0].outcome is None  # BETA's DELETE did nothing
    assert keyed.request("DELETE", f"/v1/streams/{stream_id}",
                         headers=bearer(ALPHA)).status == 202
    assert stream.read_all()[-1].json() == {"reason": "deleted"}


def test_rate_limit_per_key_with_headers_and_json(keyed: GatewayServer) -> None:
    replies: list[Reply] = [keyed.request("GET", "/v1/streams/x-unknown-stream-000",
                                          headers=bearer(GAMMA)) for _ in range(6)]
    assert [r.status for r in replies] == [404] * 5 + [429]
    limited = replies[-1]
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) > 0
    assert limited.headers["x-ratelimit-limit"] == "5"
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert "x-ratelimit-reset" in limited.headers
    assert replies[0].headers["x-ratelimit-remaining"] == "4"
    # Another key has its own count.
    assert keyed.request("GET", "/v1/streams/x-unknown-stream-000",
                         headers=bearer(BETA)).status == 404


def test_streams_per_key(keyed: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["a", "b"], stall_after=1, stall_s=30)
    running = []
    for _ in range(2):
        stream = keyed.stream("POST", "/v1/streams", {"model": f"openai/{model}",
                                                      "prompt": "x"}, headers=bearer(BETA))
        stream.read_until(lambda e: e.event == "token")
        running.append(stream)
    refused = keyed.request("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x"},
                            headers=bearer(BETA))
    assert refused.status == 429
    assert refused.json()["error"]["code"] == "too_many_streams"
    assert refused.headers["retry-after"] == "1"
    other = keyed.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x"},
                         headers=bearer(ALPHA))
    assert other.status == 200 and other.read_all()[-1].event == "done"
    stream_id = running[0].header("X-Stream-ID")
    keyed.request("DELETE", f"/v1/streams/{stream_id}", headers=bearer(BETA))
    running[0].read_all()
    again = keyed.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x"},
                         headers=bearer(BETA))
    assert again.status == 200 and again.read_all()[-1].event == "done"
    keyed.request("DELETE", f"/v1/streams/{running[1].header('X-Stream-ID')}",
                  headers=bearer(BETA))


def test_open_gateway_says_so_and_limits_by_address(fake: FakeProvider) -> None:
    with GatewayServer(gateway_env(fake, RATELIMIT_CREATE="2/minute")) as server:
        assert server.log().count("no API keys configured") == 1
        statuses = []
        for source in ("127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"):
            connection = http.client.HTTPConnection(server.host, server.port, timeout=10,
                                                    source_address=(source, 0))
            connection.request("POST", "/v1/streams", body=b'{"model": "demo/echo", '
                               b'"prompt": "x"}', headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
            connection.close()
        assert statuses == [200, 200, 429, 200, 200]


def test_rate_limits_are_shared_by_processes_through_redis(fake: FakeProvider) -> None:
    """Two gateway processes (as two workers or two hosts would be) count one rate.

    Which worker of one instance accepts a connection is the kernel's choice
    (sequential requests often all reach the same one), so the requests
    alternate between two instances instead: each would allow 6 on its own."""
    key = f"sk-shared-{secrets.token_hex(6)}"
    env = gateway_env(fake, REDIS_URL=REDIS_URL, RATELIMIT_CREATE="6/minute", API_KEYS=key)
    with GatewayServer(env) as first, GatewayServer(env) as second:
        statuses = []
        for index in range(14):
            server = (first, second)[index % 2]
            stream = server.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x"},
                                   headers=bearer(key))
            statuses.append(stream.status)
            stream.read_all()
        assert statuses.count(200) == 6 and statuses.count(429) == 8
        assert statuses[:6] == [200] * 6  # both instances served, then both refused


def test_cors_allow_list_preflight_and_exposed_headers(fake: FakeProvider) -> None:
    origin = "https://chat.example.com"
    with GatewayServer(gateway_env(fake, CORS_ORIGINS=f"{origin}, https://other.example")
                       ) as server:
        for method, path in (("POST", "/v1/streams"), ("DELETE", "/v1/streams/abc-0123456789abcd")):
            reply = server.request("OPTIONS", path, headers={
                "Origin": origin, "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "authorization, content-type, x-stream-id"})
            assert reply.status == 200
            assert reply.headers["access-control-allow-origin"] == origin
            assert method in reply.headers["access-control-allow-methods"]
            allowed = reply.headers["access-control-allow-headers"].lower()
            assert {"authorization", "content-type", "x-stream-id"} <= {
                h.strip() for h in allowed.split(",")}
        stream = server.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x"},
                               headers={"Origin": origin})
        assert stream.header("Access-Control-Allow-Origin") == origin
        assert "X-Stream-ID" in (stream.header("Access-Control-Expose-Headers") or "")
        stream.read_all()
        stranger = server.request("OPTIONS", "/v1/streams", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in stranger.headers


def test_no_cors_by_default(fake: FakeProvider, keyed: GatewayServer) -> None:
    reply = keyed.request("OPTIONS", "/v1/streams", headers={
        "Origin": "https://chat.example.com", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in reply.headers


def test_retry_after_only_on_refusals_and_vary_origin_with_cors(fake: FakeProvider) -> None:
    origin = "https://chat.example.com"
    with GatewayServer(gateway_env(fake, CORS_ORIGINS=origin, RATELIMIT_MODELS="3/minute")
                       ) as server:
        replies = [server.request("GET", "/v1/models", headers={"Origin": origin})
                   for _ in range(4)]
        assert [r.status for r in replies] == [200, 200, 200, 429]
        for reply in replies[:3]:
            assert "retry-after" not in reply.headers  # a 200 asks nobody to wait
            assert reply.headers["x-ratelimit-limit"] == "3"
        assert int(replies[3].headers["retry-after"]) > 0
        stranger = server.request("GET", "/v1/models", headers={"Origin": "https://evil.example"})
        preflight = server.request("OPTIONS", "/v1/streams", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})
        stream = server.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x"},
                               headers={"Origin": origin})
        stream.read_all()
        for headers in (*(r.headers for r in (*replies, stranger, preflight)),
                        {k.lower(): v for k, v in stream.response.getheaders()}):
            assert "Origin" in [v.strip() for v in headers.get("vary", "").split(",")], headers
        assert "retry-after" not in {k.lower() for k, _ in stream.response.getheaders()}


def test_the_demo_page_sends_a_content_security_policy(keyed: GatewayServer) -> None:
    page = keyed.request("GET", "/")
    assert page.status == 200
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "'unsafe-inline'" not in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
