"""Streams through the real gunicorn to the real SDKs and the fake provider."""

from __future__ import annotations

import json
import secrets
import time

import pytest

from sse_gateway.providers.sdk import POOL_STREAMS
from tests.fake_provider import FakeProvider
from tests.live.conftest import HEARTBEAT_S, gateway_env
from tests.live.gateway import GatewayServer, tokens_text

HOSTILE = ["Hel", "lo", " wörld", " 😀", "\n", "data: not an event\n\n", "\"quoted\"",
           " back\\slash", "\r\n", "id: 99", " 中文", "\u2028", "end"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_tokens_relay_exactly_with_ids_and_one_terminal_event(
        gateway: GatewayServer, fake: FakeProvider, provider: str) -> None:
    model = fake.scenario(tokens=HOSTILE, input_tokens=11, output_tokens=13)
    stream = gateway.stream("POST", "/v1/streams",
                            {"model": f"{provider}/{model}", "prompt": "hi"})
    assert stream.status == 200
    assert stream.header("Content-Type") == "text/event-stream; charset=utf-8"
    assert stream.header("Cache-Control") == "no-cache"
    assert stream.header("X-Accel-Buffering") == "no"
    stream_id = stream.header("X-Stream-ID")
    assert stream_id and len(stream_id) >= 22
    assert stream.header("Location") == f"/v1/streams/{stream_id}"
    events = stream.read_all()
    assert bytes(stream.raw).startswith(b"retry: 2000\nid: 0\nevent: start\n")
    assert [e.id for e in events] == [str(i) for i in range(len(events))]
    assert events[0].event == "start"
    assert events[0].json() == {"stream_id": stream_id, "model": f"{provider}/{model}",
                                "created": pytest.approx(time.time(), abs=30)}
    assert tokens_text(events) == "".join(HOSTILE)
    assert {e.event for e in events[1:-1]} == {"token"}
    done = events[-1]
    assert done.event == "done"
    body = done.json()
    assert body["finish_reason"] == "stop"
    assert body["model"] == f"{provider}/{model}"
    usage = {"input_tokens": 11, "output_tokens": 13}
    if provider == "anthropic":  # the fake reports Anthropic's cache counts too (0)
        usage.update(cache_read_input_tokens=0, cache_creation_input_tokens=0)
    else:  # and OpenAI's cached and reasoning tokens (0 each)
        usage.update(cache_read_input_tokens=0, reasoning_tokens=0)
    assert body["usage"] == usage
    assert set(body["metrics"]) == {"ttft_ms", "duration_ms", "tokens_per_second"}
    status = gateway.request("GET", f"/v1/streams/{stream_id}").json()
    assert status == {"stream_id": stream_id, "status": "done", "model": f"{provider}/{model}",
                      "created": events[0].json()["created"], "last_event_id": len(events) - 1,
                      "usage": usage, "metadata": {}}
    with_message = gateway.request("GET", f"/v1/streams/{stream_id}?include=message").json()
    assert with_message == {**status, "message": {
        "role": "assistant", "content": "".join(HOSTILE), "tool_calls": None,
        "reasoning": None, "refusal": None, "provider_data": None}}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_finished_streams_reuse_the_provider_connection(fake: FakeProvider, provider: str) -> None:
    """The body is read to its end after the last event, so the connection goes back
    to the pool: the next stream skips the TCP (and, for real providers, TLS) handshake.
    (Up to POOL_STREAMS streams a worker has one pool; beyond, streams take pools in turn.)"""
    with GatewayServer(gateway_env(fake, MAX_ACTIVE_STREAMS=str(POOL_STREAMS))) as server:
        model = fake.scenario(tokens=["a", "b"])
        for _ in range(3):
            events = server.stream("POST", "/v1/streams",
                                   {"model": f"{provider}/{model}", "prompt": "hi"}).read_all()
            assert [e.event for e in events] == ["start", "token", "token", "done"]
        calls = fake.calls(model)
        assert [c.outcome for c in calls] == ["complete"] * 3
        assert len({c.peer for c in calls}) == 1, [c.peer for c in calls]


def test_openai_request_asks_for_usage_and_passes_options(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["ok"])
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    gateway.stream("POST", "/v1/streams", {"model": f"openai/{model}", "messages": messages,
                                            "max_tokens": 5, "temperature": 0.5}).read_all()
    sent = fake.wait_call(model).body
    assert sent["messages"] == messages
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert (sent["max_tokens"], sent["temperature"]) == (5, 0.5)


def test_anthropic_gets_system_messages_in_the_system_parameter(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["ok"])
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yes?"}, {"role": "user", "content": "go"}]
    events = gateway.stream("POST", "/v1/streams",
                            {"model": f"anthropic/{model}", "messages": messages}).read_all()
    assert events[-1].event == "done"
    sent = fake.wait_call(model).body
    assert sent["system"] == "be brief"
    assert sent["messages"] == messages[1:]
    assert sent["max_tokens"] == 4096  # DEFAULT_MAX_TOKENS: Anthropic requires one


def test_anthropic_stop_reason_is_reported_in_openai_terms(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["a", "b"], finish_reason="length")
    events = gateway.stream("POST", "/v1/streams",
                            {"model": f"anthropic/{model}", "prompt": "x"}).read_all()
    assert events[-1].json()["finish_reason"] == "length"


def test_tokens_arrive_incrementally(gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=[f"t{i} " for i in range(10)], delay=0.2)
    stream = gateway.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x"})
    for _ in stream.events():
        pass
    tokens = [r for r in stream.received if r.event.event == "token"]
    assert len(tokens) == 10  # one event each: the provider is slower than the relay
    assert tokens[-1].at - tokens[0].at > 1.5  # the first came long before the last was made


def test_heartbeats_while_waiting_for_the_first_token(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["late"], ttft=4 * HEARTBEAT_S)
    stream = gateway.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x"})
    start = stream.read_until(lambda e: e.event == "start")
    token = stream.read_until(lambda e: e.event == "token")
    pings_before_token = stream.decoder.comments.count("ping")
    assert token.at - start.at >= 3 * HEARTBEAT_S
    assert pings_before_token >= 3
    assert b": ping\n" in bytes(stream.raw)
    assert stream.read_all()[-1].event == "done"


def test_heartbeats_while_the_provider_stalls(gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["a", "b", "c"], stall_after=1, stall_s=4 * HEARTBEAT_S)
    stream = gateway.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x"})
    stream.read_until(lambda e: e.event == "token")
    before = stream.decoder.comments.count("ping")
    events = stream.read_all()
    assert stream.decoder.comments.count("ping") - before >= 3
    assert tokens_text(events) == "abc"


def test_demo_echo_streams_the_prompt_back(gateway: GatewayServer) -> None:
    prompt = "Hello there,  streaming   world!\nSecond line 😀"
    events = gateway.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": prompt}).read_all()
    assert tokens_text(events) == prompt
    assert len([e for e in events if e.event == "token"]) > 3
    assert events[-1].json()["usage"] == {"input_tokens": 7, "output_tokens": 7}


def test_demo_lorem_honours_max_tokens(gateway: GatewayServer) -> None:
    events = gateway.stream("POST", "/v1/streams",
                            {"model": "demo/lorem", "prompt": "x", "max_tokens": 7}).read_all()
    assert tokens_text(events) == "lorem ipsum dolor sit amet consectetur adipiscing"
    assert events[-1].json()["finish_reason"] == "stop"


def test_client_supplied_stream_id_and_duplicates(gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["x"])
    stream_id = f"client-chosen_id-{secrets.token_hex(8)}"  # Redis outlives one run
    stream = gateway.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x"},
                            headers={"X-Stream-ID": stream_id})
    assert stream.header("X-Stream-ID") == stream_id
    assert stream.read_all()[0].json()["stream_id"] == stream_id
    # Another request under the same id is a conflict (the same request is a
    # retry, which resumes: tests/live/test_conventions.py).
    again = gateway.request("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "y"},
                            headers={"X-Stream-ID": stream_id})
    assert again.status == 409
    assert again.json()["error"]["code"] == "stream_exists"
    assert len(fake.calls(model)) == 1


def test_generated_ids_are_unique_and_url_safe(gateway: GatewayServer) -> None:
    ids = set()
    for _ in range(5):
        stream = gateway.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x"})
        ids.add(stream.header("X-Stream-ID"))
        stream.read_all()
    assert len(ids) == 5
    for stream_id in ids:
        assert stream_id and len(stream_id) >= 22  # 18 random bytes = 144 bits
        assert set(stream_id) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                     "0123456789-_")


def test_status_of_a_running_stream(gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["a", "b"], stall_after=1, stall_s=30)
    stream = gateway.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x"})
    stream_id = stream.header("X-Stream-ID")
    stream.read_until(lambda e: e.event == "token")
    status = gateway.request("GET", f"/v1/streams/{stream_id}").json()
    assert (status["status"], status["last_event_id"], status["usage"]) == ("running", 1, None)
    gateway.request("DELETE", f"/v1/streams/{stream_id}")
    assert stream.read_all()[-1].event == "cancelled"


def test_models_list(gateway: GatewayServer) -> None:
    reply = gateway.request("GET", "/v1/models")
    assert reply.status == 200
    assert reply.json() == {"data": [{"id": "demo/echo", "provider": "demo"},
                                     {"id": "demo/lorem", "provider": "demo"}]}


def test_health_and_readiness(gateway: GatewayServer) -> None:
    assert gateway.request("GET", "/healthz").json() == {"status": "ok"}
    assert gateway.request("GET", "/readyz").status == 200


def test_worker_boots_patched_without_warnings(gateway: GatewayServer) -> None:
    log = gateway.log()
    assert "gateway ready" in log
    assert "MonkeyPatchWarning" not in log
    assert "Traceback" not in log


def test_models_list_marks_providers_without_keys(fake: FakeProvider) -> None:
    with GatewayServer({"MODELS": "demo/echo,openai/gpt-4o-mini,anthropic/claude-x"}) as server:
        assert server.request("GET", "/v1/models").json() == {"data": [
            {"id": "demo/echo", "provider": "demo"},
            {"id": "openai/gpt-4o-mini", "provider": "openai", "available": False},
            {"id": "anthropic/claude-x", "provider": "anthropic", "available": False}]}
        reply = server.request("POST", "/v1/streams", {"model": "openai/gpt-4o-mini",
                                                        "prompt": "x"})
        assert reply.status == 400
        assert reply.json()["error"]["code"] == "unknown_model"
        assert "OPENAI_API_KEY" in reply.json()["error"]["message"]


def test_raw_bytes_have_one_json_line_per_data(gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=HOSTILE)
    stream = gateway.stream("POST", "/v1/streams", {"model": f"anthropic/{model}", "prompt": "x"})
    stream.read_all()
    blocks = bytes(stream.raw).decode().split("\n\n")
    for block in blocks:
        data_lines = [line for line in block.split("\n") if line.startswith("data:")]
        assert len(data_lines) <= 1
        for line in data_lines:
            json.loads(line.removeprefix("data: "))
