"""The official ``openai`` Python SDK as a client of the real gunicorn:
``POST /v1/chat/completions`` streamed and not, tools, reasoning, refusal, usage,
errors as the SDK's exception classes, a cancel from another request, and a resume
of the same chunks through ``GET /v1/streams/<id>/events``."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

import fake_wire as fw
from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer

KEY = "sk-gateway-openai-dialect-key"
LONG = [f"w{i} " for i in range(400)]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
PARALLEL = [fw.ToolCall(0, "call_w", "get_weather", '{"ci'), fw.ToolCall(1, "call_t", "get_time"),
            fw.ToolArgs(0, 'ty": "Par'), fw.ToolArgs(1, "{}"), fw.ToolArgs(0, 'is"}')]


def client(gateway: GatewayServer, api_key: str = "unused") -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0, timeout=20)


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_streamed_text_from_the_demo_provider(gateway: GatewayServer) -> None:
    with client(gateway) as sdk:
        chunks = list(sdk.chat.completions.create(model="demo/echo", stream=True,
                                                  messages=ask("one two three")))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two three"
    first, last = chunks[0], chunks[-1]
    assert first.choices[0].delta.role == "assistant"
    assert first.id.startswith("chatcmpl-") and {c.id for c in chunks} == {first.id}
    assert {c.model for c in chunks} == {"demo/echo"}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert last.choices[0].finish_reason == "stop" and last.usage is None


def test_streamed_text_and_usage_through_the_fake_openai(gateway: GatewayServer,
                                                         fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["Hello", ",", " wor", "ld"], input_tokens=11,
                          cache_read_input_tokens=3)
    with client(gateway) as sdk:
        chunks = list(sdk.chat.completions.create(
            model=f"openai/{model}", stream=True, messages=ask("hi"),
            stream_options={"include_usage": True}))
    assert [c.choices[0].delta.content for c in chunks if c.choices] == [
        "", "Hello", ",", " wor", "ld", None]
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage = chunks[-1]
    assert usage.choices == []
    assert usage.usage is not None
    assert usage.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 3},
        "completion_tokens_details": {"reasoning_tokens": 0}}


def test_streamed_parallel_tool_calls_with_the_stream_helper(gateway: GatewayServer,
                                                             fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["Checking.", *PARALLEL], finish_reason="tool_calls")
    with client(gateway) as sdk, sdk.chat.completions.stream(
            model=f"openai/{model}", messages=ask("weather and time?"),
            tools=[WEATHER, TIME]) as stream:  # type: ignore[list-item]
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.content == "Checking."
    assert [(c.id, c.function.name, c.function.arguments)  # type: ignore[union-attr]
            for c in message.tool_calls or []] == [
        ("call_w", "get_weather", '{"city": "Paris"}'), ("call_t", "get_time", "{}")]


def test_streamed_reasoning_and_refusal(gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=[fw.Reasoning("Let me"), fw.Reasoning(" think."),
                                  fw.Refusal("I can't"), fw.Refusal(" help.")])
    with client(gateway) as sdk:
        chunks = list(sdk.chat.completions.create(model=f"openai/{model}", stream=True,
                                                  messages=ask("x"), reasoning_effort="low"))
    deltas = [c.choices[0].delta for c in chunks]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == \
        "Let me think."
    assert "".join(d.refusal or "" for d in deltas) == "I can't help."
    assert chunks[-1].choices[0].finish_reason == "stop"
    request = fake.wait_call(model).body
    assert request["reasoning_effort"] == "low"


def test_not_streamed_text_and_tool_calls(gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=[fw.Reasoning("hm"), *PARALLEL], finish_reason="tool_calls")
    with client(gateway) as sdk:
        text = sdk.chat.completions.create(model="demo/echo", messages=ask("just this"))
        calls = sdk.chat.completions.create(model=f"openai/{model}", messages=ask("go"),
                                            tools=[WEATHER, TIME],  # type: ignore[list-item]
                                            max_completion_tokens=50)
    assert text.object == "chat.completion"
    assert text.choices[0].message.content == "just this"
    assert text.choices[0].finish_reason == "stop"
    assert text.usage is not None and text.usage.total_tokens == (
        text.usage.prompt_tokens + text.usage.completion_tokens)
    message = calls.choices[0].message
    assert calls.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert getattr(message, "reasoning_content", None) == "hm"
    assert [(c.id, c.function.name, c.function.arguments)  # type: ignore[union-attr]
            for c in message.tool_calls or []] == [
        ("call_w", "get_weather", '{"city": "Paris"}'), ("call_t", "get_time", "{}")]
    assert fake.wait_call(model).body["max_tokens"] == 50
    # The answer goes back as the next turn's history, as the SDK serialises it
    # (reasoning_content included); demo/echo repeats the last user message.
    with client(gateway) as sdk:
        reply = sdk.chat.completions.create(model="demo/echo", messages=[
            *ask("go"), message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": "call_w", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_t", "content": "noon"},
            {"role": "user", "content": "fine"}])
    assert reply.choices[0].message.content == "fine"


def test_unknown_model_and_unknown_field_are_bad_requests(gateway: GatewayServer) -> None:
    with client(gateway) as sdk:
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.chat.completions.create(model="nowhere/model", messages=ask("x"))
        assert refused.value.status_code == 400
        assert refused.value.code == "unknown_model"
        assert refused.value.param == "model"
        assert refused.value.type == "invalid_request_error"
        assert refused.value.response.headers["x-should-retry"] == "false"
        with pytest.raises(openai.BadRequestError) as unknown:
            sdk.chat.completions.create(model="demo/echo", messages=ask("x"), n=2)
        assert unknown.value.body == {"message": "n: only 1 is supported here",
                                      "type": "invalid_request_error",
                                      "code": "invalid_request", "param": "n"}


def test_an_upstream_failure_unstreamed_is_the_status_class(gateway: GatewayServer,
                                                            fake: FakeProvider) -> None:
    model = fake.scenario(status=429, retry_after=0)
    with client(gateway) as sdk, pytest.raises(openai.RateLimitError) as limited:
        sdk.chat.completions.create(model=f"openai/{model}", messages=ask("x"))
    assert limited.value.code == "upstream_rate_limited"
    assert limited.value.type == "rate_limit_error"


def test_an_error_mid_stream_raises_api_error(gateway: GatewayServer,
                                              fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["a", "b", "c"], error_event_after=2)
    seen = []
    with client(gateway) as sdk:
        stream = sdk.chat.completions.create(model=f"openai/{model}", stream=True,
                                             messages=ask("x"))
        with pytest.raises(openai.APIError) as failed:
            for chunk in stream:
                seen.append(chunk.choices[0].delta.content)
    assert seen == ["", "a", "b"]
    assert failed.value.body["code"] == "upstream_unavailable"  # type: ignore[index]


def test_a_cancel_from_another_request_ends_the_sdk_stream(gateway: GatewayServer,
                                                           fake: FakeProvider) -> None:
    model = fake.scenario(tokens=LONG, delay=0.05)
    with client(gateway) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model=f"openai/{model}", stream=True, messages=ask("x"))
        stream_id = raw.headers["x-stream-id"]
        assert raw.headers["x-stream-token"].startswith("sst_")
        stream = raw.parse()
        chunks = iter(stream)
        assert next(chunks).choices[0].delta.role == "assistant"
        assert next(chunks).choices[0].delta.content == "w0 "
        reply = gateway.request("DELETE", f"/v1/streams/{stream_id}")
        assert reply.status == 202
        with pytest.raises(openai.APIError) as cancelled:
            for _ in chunks:
                pass
    assert cancelled.value.body == {"message": "the stream was cancelled (deleted)",
                                    "type": "cancelled", "code": "cancelled", "param": None}
    call = fake.wait_closed(model)
    assert call.outcome == "peer_closed"
    assert gateway.request("GET", f"/v1/streams/{stream_id}").json()["status"] == "cancelled"


def test_a_resume_gives_the_same_chunks_after_a_position(gateway: GatewayServer,
                                                         fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["Hi", *PARALLEL], finish_reason="tool_calls")
    first = gateway.stream("POST", "/v1/chat/completions", {
        "model": f"openai/{model}", "messages": ask("x"), "stream": True,
        "stream_options": {"include_usage": True}})
    assert first.status == 200
    assert first.header("Content-Type") == "text/event-stream; charset=utf-8"
    stream_id = first.header("X-Stream-ID")
    whole = [(e.id, e.data) for e in first.read_all()]
    assert whole[-1] == (None, "[DONE]") or whole[-1][1] == "[DONE]"
    for position in (0, 3, 5):
        resumed = gateway.stream("GET", f"/v1/streams/{stream_id}/events"
                                 f"?last_event_id={position}")
        assert resumed.status == 200
        got = [(e.id, e.data) for e in resumed.read_all()]
        index = next(i for i, (event_id, _) in enumerate(whole)
                     if event_id is not None and int(event_id) > position)
        assert got == whole[index:]
    finish = json.loads(whole[-3][1])
    assert finish["choices"][0]["finish_reason"] == "tool_calls"
    assert json.loads(whole[-2][1])["usage"]["completion_tokens"] == 6


def test_a_named_stream_is_retried_not_paid_twice(gateway: GatewayServer,
                                                  fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["once"])
    with client(gateway) as sdk:
        for _ in range(2):
            reply = sdk.chat.completions.create(
                model=f"openai/{model}", messages=ask("x"),
                extra_headers={"X-Stream-ID": f"oai-retry-{model}-0000000"})
            assert reply.choices[0].message.content == "once"
    assert len(fake.calls(model)) == 1


@pytest.fixture(scope="module")
def keyed(fake: FakeProvider) -> Iterator[GatewayServer]:
    server = GatewayServer(gateway_env(fake, API_KEYS=KEY), label="openai-keyed")
    try:
        yield server.start()
    finally:
        server.stop()


def test_keys_a_wrong_one_is_an_authentication_error(keyed: GatewayServer) -> None:
    with client(keyed, "sk-wrong") as sdk, pytest.raises(openai.AuthenticationError) as refused:
        sdk.chat.completions.create(model="demo/echo", messages=ask("x"))
    assert refused.value.code == "unauthorized"
    with client(keyed, KEY) as sdk:
        reply = sdk.chat.completions.create(model="demo/echo", messages=ask("with key"))
    assert reply.choices[0].message.content == "with key"


def test_a_client_leaving_an_unstreamed_completion_cancels_it(gateway: GatewayServer,
                                                              fake: FakeProvider) -> None:
    model = fake.scenario(tokens=LONG, delay=0.05)
    connection = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    connection.request("POST", "/v1/chat/completions", headers={
        "Content-Type": "application/json"}, body=json.dumps(
        {"model": f"openai/{model}", "messages": ask("x")}).encode())
    fake.wait_call(model)
    left = time.monotonic()
    connection.close()  # no answer read: the client is gone
    call = fake.wait_closed(model)
    assert call.outcome == "peer_closed"
    assert call.closed_at is not None and call.closed_at - left < 2.0  # not after the grace
    assert call.tokens_sent < len(LONG)
