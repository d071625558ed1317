"""Everything a model streams, through the real gunicorn, the real SDKs and the fake provider.

Every real recorded stream in ``tests/recordings`` is served by the fake provider
(verbatim) to the gateway; what reaches the client is checked per kind against
what the official SDK assembles from the same bytes (``<name>.expected.json``).
Then the rules that protect the bill (the fake's request count), and multi-turn
round trips whose second turn the fake accepts only if the first was rebuilt
exactly (tool call ids; Anthropic's thinking signatures).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from httpx_sse import ServerSentEvent

import fake_wire as fw
from tests.fake_provider import RECORDINGS, FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer

OPENAI = sorted(p.stem for p in (RECORDINGS / "openai").glob("*.sse"))
ANTHROPIC = sorted(p.name.removesuffix(".expected.json")
                   for p in (RECORDINGS / "anthropic").glob("*.expected.json"))
OUTPUT = {"token", "reasoning", "refusal", "tool_call", "tool_call_delta", "tool_call_done"}
# Reasoning the openai SDK does not accumulate (it knows no reasoning_details).
DETAILS_ONLY = {"snowflake_reasoning_details_only": "15 * 27 = 405"}
ANTHROPIC_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "refusal": "refusal"}


def run(gateway: GatewayServer, body: dict[str, Any]) -> tuple[str, list[ServerSentEvent]]:
    """POST a stream, read it to its end; check the rules every stream keeps."""
    stream = gateway.stream("POST", "/v1/streams", body)
    assert stream.status == 200, bytes(stream.response.read())
    events = stream.read_all()
    assert [e.id for e in events] == [str(i) for i in range(len(events))]
    assert events[0].event == "start"
    assert [e.event in ("done", "error", "cancelled") for e in events] == [
        False] * (len(events) - 1) + [True]
    assert {e.event for e in events[1:-1]} <= OUTPUT
    for e in events[1:-1]:  # no empty output event
        data = e.json()
        assert data.get("content", "x") and data.get("arguments", "x"), e
    stream_id = stream.header("X-Stream-ID")
    assert stream_id
    return stream_id, events


def joined(events: list[ServerSentEvent], name: str) -> str:
    return "".join(e.json()["content"] for e in events if e.event == name)


def calls(events: list[ServerSentEvent]) -> dict[int, tuple[str, str, str]]:
    """Per index: (id, name, arguments) from tool_call + deltas, checked against
    tool_call_done when one came."""
    started: dict[int, tuple[str, str]] = {}
    arguments: dict[int, str] = {}
    for e in events:
        data = e.json()
        if e.event == "tool_call":
            assert data["index"] == len(started)  # 0, 1, ... in order of appearance
            started[data["index"]] = (data["id"], data["name"])
            arguments[data["index"]] = ""
        elif e.event == "tool_call_delta":
            arguments[data["index"]] += data["arguments"]
        elif e.event == "tool_call_done":
            assert (data["id"], data["name"], data["arguments"]) == (
                *started[data["index"]], arguments[data["index"]])
    return {i: (*started[i], arguments[i]) for i in started}


def message_of(gateway: GatewayServer, stream_id: str) -> dict[str, Any]:
    reply = gateway.request("GET", f"/v1/streams/{stream_id}?include=message")
    assert reply.status == 200
    message: dict[str, Any] = reply.json()["message"]
    return message


def next_turn(events: list[ServerSentEvent]) -> dict[str, Any]:
    """The assistant message for the next turn, rebuilt from the events alone."""
    found = calls(events)
    message: dict[str, Any] = {"role": "assistant", "content": joined(events, "token") or None}
    if found:
        message["tool_calls"] = [{"id": i, "type": "function",
                                  "function": {"name": n, "arguments": a}}
                                 for i, n, a in (found[k] for k in sorted(found))]
    provider_data = events[-1].json().get("provider_data")
    if provider_data:
        message["provider_data"] = provider_data
    return message


# -- every real recording ------------------------------------------------------------------


@pytest.mark.parametrize("name", OPENAI)
def test_a_recorded_openai_compatible_stream_reaches_the_client_whole(
        gateway: GatewayServer, fake: FakeProvider, name: str) -> None:
    expected = json.loads((RECORDINGS / "openai" / f"{name}.expected.json").read_text())
    model = fake.scenario(fw.recorded(RECORDINGS / "openai" / f"{name}.sse"))
    stream_id, events = run(gateway, {"model": f"openai/{model}", "prompt": "hi"})
    assert joined(events, "token") == (expected["content"] or "")
    assert joined(events, "reasoning") == (expected["reasoning_content"] or expected["reasoning"]
                                           or expected["thinking"] or DETAILS_ONLY.get(name, ""))
    assert joined(events, "refusal") == (expected["refusal"] or "")
    assert calls(events) == {int(i): (c["id"], c["name"], c["arguments"])
                             for i, c in expected["tool_calls"].items()}
    done = events[-1]
    assert done.event == "done"
    reason = expected["finish_reason"]
    refused = bool(expected["refusal"])
    assert (done.json()["finish_reason"], done.json()["provider_finish_reason"]) == (
        "refusal" if refused else reason or ("tool_calls" if expected["tool_calls"] else "stop"),
        reason)
    usage = done.json()["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (
        expected["usage"]["prompt_tokens"], expected["usage"]["completion_tokens"])
    details = expected["usage"].get("completion_tokens_details") or {}
    assert usage.get("reasoning_tokens") == details.get("reasoning_tokens")
    assert len(fake.calls(model)) == 1
    message = message_of(gateway, stream_id)
    assert (message["content"], message["reasoning"] or "", message["refusal"] or "") == (
        joined(events, "token"), joined(events, "reasoning"), joined(events, "refusal"))


@pytest.mark.parametrize("name", ANTHROPIC)
def test_a_recorded_anthropic_stream_reaches_the_client_whole(
        gateway: GatewayServer, fake: FakeProvider, name: str) -> None:
    expected = json.loads((RECORDINGS / "anthropic" / f"{name}.expected.json").read_text())
    model = fake.scenario(fw.recorded(RECORDINGS / "anthropic" / f"{name}.sse"))
    stream_id, events = run(gateway, {"model": f"anthropic/{model}", "prompt": "hi"})
    blocks = expected["content"]
    assert joined(events, "token") == "".join(b["text"] for b in blocks if b["type"] == "text")
    assert joined(events, "reasoning") == "".join(
        b["thinking"] for b in blocks if b["type"] == "thinking")
    tools = [b for b in blocks if b["type"] == "tool_use"]
    found = calls(events)
    assert [(i, n) for i, n, _ in found.values()] == [(b["id"], b["name"]) for b in tools]
    stop = expected["stop_reason"]
    completed = {e.json()["index"] for e in events if e.event == "tool_call_done"}
    for index, block in enumerate(tools):
        if index in completed:  # the SDK keeps the parsed input
            assert json.loads(found[index][2]) == block["input"]
        else:  # cut off by max_tokens: the SDK parsed the partial JSON; ours is its prefix
            assert stop == "max_tokens"
    done = events[-1]
    assert done.event == "done"
    assert (done.json()["finish_reason"], done.json()["provider_finish_reason"]) == (
        ANTHROPIC_STOP.get(stop, "other"), stop)
    thinking = [b for b in blocks if b["type"] in ("thinking", "redacted_thinking")]
    assert (done.json().get("provider_data") or {}).get("anthropic", {}).get(
        "thinking_blocks", []) == thinking
    usage = done.json()["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (
        expected["usage"]["input_tokens"], expected["usage"]["output_tokens"])
    assert len(fake.calls(model)) == 1
    message = message_of(gateway, stream_id)
    assert message["provider_data"] == done.json().get("provider_data")


def test_an_error_in_a_recorded_anthropic_stream_ends_it_once(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    """litellm's recorded tail: two text deltas, then ``api_error``. Output was
    relayed, so nothing is retried."""
    model = fake.scenario(fw.recorded(RECORDINGS / "anthropic" / "error_midstream_fragment.sse"))
    _, events = run(gateway, {"model": f"anthropic/{model}", "prompt": "hi"})
    assert events[-1].event == "error"
    assert events[-1].json()["code"] == "upstream_unavailable"
    assert joined(events, "token")
    assert len(fake.calls(model)) == 1


# -- the rules that protect the bill -------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_an_end_marker_without_a_finish_reason_is_done_and_asked_once(
        gateway: GatewayServer, fake: FakeProvider, provider: str) -> None:
    model = fake.scenario(tokens=["4"], finish_reason=None)
    _, events = run(gateway, {"model": f"{provider}/{model}", "prompt": "2+2?"})
    assert (events[-1].event, events[-1].json()["finish_reason"],
            events[-1].json()["provider_finish_reason"]) == ("done", "stop", None)
    assert joined(events, "token") == "4"
    assert len(fake.calls(model)) == 1


@pytest.mark.parametrize("first", [fw.Reasoning("Hm"), fw.Refusal("No"),
                                   fw.ToolCall(0, "call_1", "f")],
                         ids=["reasoning", "refusal", "tool_call"])
def test_nothing_is_retried_once_any_output_was_relayed(
        gateway: GatewayServer, fake: FakeProvider, first: Any) -> None:
    model = fake.scenario(tokens=[first, "more"], drop_after=1)
    _, events = run(gateway, {"model": f"openai/{model}", "prompt": "hi"})
    assert events[-1].event == "error"
    assert events[-1].json()["code"] in ("upstream_unavailable", "upstream_error")
    assert len(fake.calls(model)) == 1


@pytest.fixture(scope="module")
def impatient(fake: FakeProvider) -> Iterator[GatewayServer]:
    """A gateway whose time to first token and silence limits are 1 s each."""
    server = GatewayServer(gateway_env(fake, TTFT_TIMEOUT_S="1", TOKEN_TIMEOUT_S="1",
                                       MAX_IMAGE_BYTES="300"), label="impatient")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_thinking_longer_than_the_first_token_timeout_is_not_silence(
        impatient: GatewayServer, fake: FakeProvider, provider: str) -> None:
    """Reasoning for 2 s (a delta every 0.1 s) under a 1 s time to first token: the
    think is output, so one request, and the answer arrives. (0.9 s of slack between
    two deltas: a busy machine does not make it silence.)"""
    model = fake.scenario(tokens=[fw.Reasoning(f"step {i}. ") for i in range(20)] + ["42"],
                          ttft=0.1, delay=0.1)
    _, events = run(impatient, {"model": f"{provider}/{model}", "prompt": "hi"})
    assert events[-1].event == "done", events[-1].json()
    assert joined(events, "reasoning") == "".join(f"step {i}. " for i in range(20))
    assert joined(events, "token") == "42"
    assert len(fake.calls(model)) == 1


def test_an_image_over_the_limit_is_413_before_anything_streams(
        impatient: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario()
    image = "data:image/png;base64," + "A" * 800  # 600 bytes decoded, over 300
    reply = impatient.request("POST", "/v1/streams", {
        "model": f"openai/{model}",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": image}}]}]})
    assert reply.status == 413
    assert reply.json()["error"]["code"] == "payload_too_large"
    assert reply.json()["error"]["param"] == "messages.0.content.1"
    assert fake.calls(model) == []


# -- requests translated, and multi-turn round trips ---------------------------------------

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_tool_round_trip(gateway: GatewayServer, fake: FakeProvider, provider: str) -> None:
    """Turn 1 asks for a tool (split arguments); the client rebuilds the assistant message
    from the events, runs the tool and sends its result; the provider (the fake checks the
    ids as the real APIs do) answers turn 2."""
    model = fake.scenario_seq([
        fw.Behaviour(tokens=["Let me check.", fw.ToolCall(0, "call_w1", "get_weather"),
                             fw.ToolArgs(0, '{"city": '), fw.ToolArgs(0, '"Paris"}')],
                     finish_reason="tool_calls"),
        fw.Behaviour(tokens=["It is ", "sunny in Paris."]),
    ])
    user = {"role": "user", "content": "Weather in Paris?"}
    first_id, first = run(gateway, {"model": f"{provider}/{model}", "messages": [user],
                                    "tools": [WEATHER], "tool_choice": "auto"})
    assert calls(first) == {0: ("call_w1", "get_weather", '{"city": "Paris"}')}
    assert (first[-1].json()["finish_reason"], joined(first, "token")) == (
        "tool_calls", "Let me check.")
    assistant = next_turn(first)
    assert {k: v for k, v in message_of(gateway, first_id).items() if v is not None} == {
        **assistant, "role": "assistant"}
    tool = {"role": "tool", "tool_call_id": "call_w1", "content": "sunny, 21 C"}
    _, second = run(gateway, {"model": f"{provider}/{model}",
                              "messages": [user, assistant, tool], "tools": [WEATHER]})
    assert (second[-1].event, joined(second, "token")) == ("done", "It is sunny in Paris.")
    sent = fake.calls(model)[1].body
    if provider == "openai":
        assert sent["messages"][1:] == [
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "call_w1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            tool]
        assert sent["tools"] == [WEATHER]
    else:
        assert sent["messages"][1:] == [
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "call_w1", "name": "get_weather",
                 "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_w1", "content": "sunny, 21 C"}]}]
        assert sent["tools"] == [{"name": "get_weather", "description": "The weather in a city",
                                  "input_schema": WEATHER["function"]["parameters"]}]
    assert len(fake.calls(model)) == 2


def thinking_turns(fake: FakeProvider) -> str:
    return fake.scenario_seq([
        fw.Behaviour(tokens=[fw.Reasoning("The user wants "), fw.Reasoning("the weather."),
                             fw.ToolCall(0, "call_t1", "get_weather"),
                             fw.ToolArgs(0, '{"city": "Oslo"}')],
                     finish_reason="tool_calls", input_tokens=30, final_input_tokens=31),
        fw.Behaviour(tokens=["Snow in Oslo."]),
    ])


def test_an_anthropic_thinking_round_trip(gateway: GatewayServer, fake: FakeProvider) -> None:
    """Thinking with tools: the signed thinking block reaches the client in
    ``done.provider_data`` and, sent back unchanged, is accepted by the provider (the
    fake checks the signature against the thinking text, as Anthropic does)."""
    model = thinking_turns(fake)
    user = {"role": "user", "content": "Weather in Oslo?"}
    body = {"model": f"anthropic/{model}", "tools": [WEATHER],
            "reasoning": {"budget_tokens": 2048}}
    _, first = run(gateway, {**body, "messages": [user]})
    assert joined(first, "reasoning") == "The user wants the weather."
    done = first[-1].json()
    assert done["provider_data"] == {"anthropic": {"thinking_blocks": [{
        "type": "thinking", "thinking": "The user wants the weather.",
        "signature": fw.thinking_signature("The user wants the weather.")}]}}
    assert done["usage"]["input_tokens"] == 31  # the final, cumulative figure
    sent = fake.calls(model)[0].body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert sent["max_tokens"] > 2048
    tool = {"role": "tool", "tool_call_id": "call_t1", "content": "snow"}
    _, second = run(gateway, {**body, "messages": [user, next_turn(first), tool]})
    assert (second[-1].event, joined(second, "token")) == ("done", "Snow in Oslo.")
    assert fake.calls(model)[1].body["messages"][1]["content"][0] == \
        done["provider_data"]["anthropic"]["thinking_blocks"][0]


@pytest.mark.parametrize("tamper", ["altered", "dropped"])
def test_a_thinking_block_not_sent_back_exactly_is_refused_by_the_provider(
        gateway: GatewayServer, fake: FakeProvider, tamper: str) -> None:
    model = thinking_turns(fake)
    user = {"role": "user", "content": "Weather in Oslo?"}
    body = {"model": f"anthropic/{model}", "tools": [WEATHER],
            "reasoning": {"budget_tokens": 2048}}
    _, first = run(gateway, {**body, "messages": [user]})
    assistant = next_turn(first)
    if tamper == "altered":
        assistant["provider_data"]["anthropic"]["thinking_blocks"][0]["thinking"] += "!"
    else:
        del assistant["provider_data"]
    tool = {"role": "tool", "tool_call_id": "call_t1", "content": "snow"}
    _, second = run(gateway, {**body, "messages": [user, assistant, tool]})
    assert (second[-1].event, second[-1].json()["code"]) == ("error", "upstream_bad_request")
    assert len(fake.calls(model)) == 2  # refused, and not retried


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_parallel_calls_a_refusal_and_list_shaped_content_arrive_as_events(
        gateway: GatewayServer, fake: FakeProvider, provider: str) -> None:
    model = fake.scenario(tokens=[
        fw.ToolCall(0, "call_a", "get_weather"), fw.ToolArgs(0, '{"city": "Rome"}'),
        fw.ToolCall(1, "call_b", "get_weather"), fw.ToolArgs(1, '{"city": '),
        fw.ToolArgs(1, '"Nice"}')], finish_reason="tool_calls")
    _, events = run(gateway, {"model": f"{provider}/{model}", "prompt": "hi",
                              "tools": [WEATHER]})
    assert calls(events) == {0: ("call_a", "get_weather", '{"city": "Rome"}'),
                             1: ("call_b", "get_weather", '{"city": "Nice"}')}
    refusing = fake.scenario(tokens=[fw.Refusal("I can't "), fw.Refusal("help with that.")])
    _, events = run(gateway, {"model": f"{provider}/{refusing}", "prompt": "hi"})
    # OpenAI streams a refusal in its own field; Anthropic as text, with stop_reason refusal.
    assert joined(events, "refusal" if provider == "openai" else "token") == (
        "I can't help with that.")
    assert (events[-1].json()["finish_reason"], events[-1].json()["provider_finish_reason"]) == (
        "refusal", "stop" if provider == "openai" else "refusal")
    if provider == "openai":
        for field in ("reasoning", "list"):
            listed = fake.scenario(tokens=[fw.Reasoning("Think."), "Answer"],
                                   reasoning_field=field, list_content=field == "list")
            _, events = run(gateway, {"model": f"openai/{listed}", "prompt": "hi"})
            assert (joined(events, "reasoning"), joined(events, "token")) == ("Think.",
                                                                              "Answer")


def test_images_and_options_are_translated_for_each_provider(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    png = "data:image/png;base64,iVBORw0KGgo="
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
               {"type": "image_url", "image_url": {"url": png}}]
    model = fake.scenario()
    run(gateway, {"model": f"anthropic/{model}", "messages": [{"role": "user",
                                                                "content": content}],
                  "stop": ["END"], "top_p": 0.5})
    sent = fake.calls(model)[0].body
    assert sent["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgo="}}]}]
    assert (sent["stop_sequences"], sent["top_p"]) == (["END"], 0.5)
    model = fake.scenario()
    run(gateway, {"model": f"openai/{model}", "messages": [{"role": "user", "content": content}],
                  "stop": "END", "seed": 7, "reasoning": {"effort": "low"},
                  "response_format": {"type": "json_object"}})
    sent = fake.calls(model)[0].body
    assert sent["messages"] == [{"role": "user", "content": content}]
    assert (sent["stop"], sent["seed"], sent["reasoning_effort"], sent["response_format"]) == (
        ["END"], 7, "low", {"type": "json_object"})


@pytest.mark.parametrize(("field", "value", "param"), [
    ("seed", 1, "seed"),
    ("response_format", {"type": "json_object"}, "response_format"),
    ("reasoning", {"effort": "high"}, "reasoning.effort"),
])
def test_a_field_anthropic_cannot_honour_is_400_naming_it(
        gateway: GatewayServer, fake: FakeProvider, field: str, value: Any, param: str) -> None:
    model = fake.scenario()
    reply = gateway.request("POST", "/v1/streams", {"model": f"anthropic/{model}",
                                                    "prompt": "hi", field: value})
    assert reply.status == 400
    assert (reply.json()["error"]["code"], reply.json()["error"]["param"]) == (
        "invalid_request", param)
    assert fake.calls(model) == []


def test_recordings_cover_every_kind() -> None:
    """The recordings this file replays include every kind of output."""
    text = "".join(Path(p).read_text() for p in (RECORDINGS / "openai").glob("*.sse"))
    for shape in ('"reasoning_content"', '"reasoning"', '"refusal":"', '"tool_calls"',
                  '"type":"thinking"'):
        assert shape in text, shape
