"""Bad requests over real HTTP: answered with the JSON error body before any stream."""

from __future__ import annotations

import http.client

from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import ROOT, GatewayServer


def test_bad_requests_get_json_errors(gateway: GatewayServer) -> None:
    cases = [
        (b"{not json", {"Content-Type": "application/json"}, 400, "invalid_request"),
        (b'{"model": "demo/echo", "prompt": "x"}', {"Content-Type": "text/plain"}, 415,
         "unsupported_media_type"),
        (b'{"model": "demo/echo", "prompt": "' + b"x" * (1024 * 1024) + b'"}',
         {"Content-Type": "application/json"}, 413, "payload_too_large"),
        (b'{"model": "nope/x", "prompt": "x"}', {"Content-Type": "application/json"}, 400,
         "unknown_model"),
        (b'{"model": "demo/echo", "prompt": "x", "max_tokens": 999999}',
         {"Content-Type": "application/json"}, 400, "invalid_request"),
    ]
    for body, headers, status, code in cases:
        reply = gateway.request("POST", "/v1/streams", body, headers)
        assert reply.status == status, (body[:40], reply.body[:200])
        assert reply.headers["content-type"] == "application/json"
        assert reply.json()["error"]["code"] == code
        assert b"Traceback" not in reply.body and str(ROOT).encode() not in reply.body


def test_oversize_chunked_body_is_refused(gateway: GatewayServer) -> None:
    connection = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    try:
        def chunks():  # valid JSON of 2.5 MiB, sent without a Content-Length
            yield b'{"model": "demo/echo", "prompt": "'
            yield from (b"x" * 65536 for _ in range(40))
            yield b'"}'

        connection.request("POST", "/v1/streams", body=chunks(),
                           headers={"Content-Type": "application/json"},
                           encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413
        assert b'"payload_too_large"' in response.read()
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused before the whole body was sent: also a refusal
    finally:
        connection.close()
    assert gateway.request("GET", "/healthz").status == 200


def test_worker_stream_limit_answers_503(fake: FakeProvider) -> None:
    with GatewayServer(gateway_env(fake, MAX_ACTIVE_STREAMS="2")) as server:
        model = fake.scenario(tokens=["a", "b"], stall_after=1, stall_s=60)
        running = [server.stream("POST", "/v1/streams", {"model": f"openai/{model}",
                                                          "prompt": "x"}) for _ in range(2)]
        for stream in running:
            stream.read_until(lambda e: e.event == "token")
        refused = server.request("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x"})
        assert refused.status == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        stream_id = running[0].header("X-Stream-ID")
        server.request("DELETE", f"/v1/streams/{stream_id}")
        assert running[0].read_all()[-1].event == "cancelled"
        ok = server.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x"})
        assert ok.status == 200
        assert ok.read_all()[-1].event == "done"
