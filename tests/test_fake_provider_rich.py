"""Everything the fake provider streams besides text, as both official SDKs parse it.

Each scenario kind (reasoning in every OpenAI-compatible shape, refusals, tool
calls single, parallel, split, whole, with their arguments before the name,
``[DONE]`` without a finish reason, cumulative usage, Anthropic thinking with
its signature, redacted thinking) is served in both wire formats where the
format has it, and each real recording in tests/recordings is served verbatim.
The openai SDK's chunks are folded with the recording tests' ``accumulate``
(``create(stream=True)``: the ``chat.completions.stream`` helper is used too
where it copes: it turns list-shaped content into ""), the anthropic SDK
assembles its message with ``messages.stream(...).get_final_message()``;
every result is compared whole.

Then the request checks the fake makes as the real APIs do (400 with their
words): Anthropic thinking blocks sent back unsigned or with a signature the
fake did not give, tool results that answer no call, calls left unanswered,
thinking enabled but the last assistant turn's thinking dropped; OpenAI tool
messages that answer nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from fake_wire import (
    SIGNATURE_KEY,
    AnthropicDialect,
    OpenAIDialect,
    sse_events,
)
from tests.fake_provider import (
    RECORDINGS,
    Behaviour,
    FakeProvider,
    Raw,
    Reasoning,
    RedactedThinking,
    Refusal,
    Token,
    ToolArgs,
    ToolCall,
    recorded,
    thinking_signature,
)
from tests.test_recordings_openai import accumulate

HI: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def oai(fake: FakeProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{fake.url}/v1", api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def ant(fake: FakeProvider) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake.url, api_key="x", max_retries=0) as client:
        yield client


def oai_accumulate(oai: openai.OpenAI, model: str, messages: list[Any] = HI) -> dict[str, Any]:
    chunks = list(oai.chat.completions.create(
        model=model, messages=messages, stream=True, stream_options={"include_usage": True}))
    return accumulate(chunks)


def oai_helper_message(oai: openai.OpenAI, model: str) -> tuple[dict[str, Any], str | None]:
    with oai.chat.completions.stream(model=model, messages=HI) as stream:
        choice = stream.get_final_completion().choices[0]
    return choice.message.model_dump(exclude_none=True), choice.finish_reason


def ant_message(ant: anthropic.Anthropic, model: str, messages: list[Any] = HI,
                **extra: Any) -> anthropic.types.Message:
    with ant.messages.stream(model=model, max_tokens=100, messages=messages, **extra) as stream:
        return stream.get_final_message()


def ant_dump(message: anthropic.types.Message) -> dict[str, Any]:
    """The assembled message without its random id: content, stop reason, usage."""
    dump = message.model_dump(mode="json", exclude_none=True)
    return {"content": dump["content"], "stop_reason": dump.get("stop_reason"),
            "usage": dump["usage"]}


def oai_usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    return {"completion_tokens": completion, "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens_details": {"reasoning_tokens": reasoning},
            "prompt_tokens_details": {"cached_tokens": cached}}


def oai_expected(chunks: int, usage: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``accumulate``'s result: content "" (the role chunk's), nothing else unless given."""
    return {"chunks": chunks, "content": "", "reasoning_content": None, "reasoning": None,
            "thinking": None, "refusal": None, "tool_calls": {}, "finish_reason": "stop",
            "usage": usage, "extra_fields": [], **fields}


def ant_usage(input_tokens: int = 7, output_tokens: int = 0, **more: Any) -> dict[str, Any]:
    return {"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "input_tokens": input_tokens, "output_tokens": output_tokens, **more}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def thinking(value: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": value, "signature": thinking_signature(value)}


def tool_use(call_id: str, name: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": value}


def oai_call(call_id: str, name: str, arguments: str) -> dict[str, str]:
    return {"id": call_id, "name": name, "arguments": arguments}


REASONING: list[Token] = [Reasoning("Let me "), Reasoning("think."), "Paris", "."]
WEATHER: list[Token] = ["Checking.", ToolCall(0, "call_a", "get_weather"), ToolArgs(0, '{"city"'),
           ToolArgs(0, ': "Paris"}')]
PARALLEL: list[Token] = [ToolCall(0, "call_a", "get_weather", '{"ci'), ToolArgs(0, 'ty": "Paris"}'),
            ToolCall(1, "call_b", "get_time"), ToolArgs(1, '{"tz": '), ToolArgs(1, '"CET"}')]

# --------------------------------------------------------------------------- OpenAI


@pytest.mark.parametrize(("behaviour", "expected"), [
    pytest.param(Behaviour(tokens=["Hel", "lo"]),
                 oai_expected(5, oai_usage(7, 2), content="Hello"), id="text"),
    pytest.param(Behaviour(tokens=["Hel", "lo"], list_content=True),
                 oai_expected(5, oai_usage(7, 2), content="Hello"), id="text-as-list"),
    pytest.param(Behaviour(tokens=REASONING),
                 oai_expected(7, oai_usage(7, 4), content="Paris.",
                              reasoning_content="Let me think.",
                              extra_fields=["delta.reasoning_content"]),
                 id="reasoning_content"),
    pytest.param(Behaviour(tokens=REASONING, reasoning_field="reasoning"),
                 oai_expected(7, oai_usage(7, 4), content="Paris.", reasoning="Let me think.",
                              extra_fields=["delta.reasoning"]),
                 id="reasoning"),
    pytest.param(Behaviour(tokens=REASONING, reasoning_field="list"),
                 oai_expected(7, oai_usage(7, 4), content="Paris.", thinking="Let me think."),
                 id="reasoning-list"),
    pytest.param(Behaviour(tokens=REASONING, reasoning_field="list", list_content=True),
                 oai_expected(7, oai_usage(7, 4), content="Paris.", thinking="Let me think."),
                 id="reasoning-list-text-list"),
    pytest.param(Behaviour(tokens=[Refusal("I can't"), Refusal(" help with that.")]),
                 oai_expected(5, oai_usage(7, 2), refusal="I can't help with that."),
                 id="refusal"),
    pytest.param(Behaviour(tokens=WEATHER, finish_reason="tool_calls"),
                 oai_expected(7, oai_usage(7, 4), content="Checking.", finish_reason="tool_calls",
                              tool_calls={"0": oai_call("call_a", "get_weather",
                                                        '{"city": "Paris"}')}),
                 id="tool-call-split"),
    pytest.param(Behaviour(tokens=[ToolCall(0, "call_w", "now", "{}")],
                           finish_reason="tool_calls"),
                 oai_expected(4, oai_usage(7, 1), finish_reason="tool_calls",
                              tool_calls={"0": oai_call("call_w", "now", "{}")}),
                 id="tool-call-whole"),
    pytest.param(Behaviour(tokens=PARALLEL, finish_reason="tool_calls"),
                 oai_expected(8, oai_usage(7, 5), finish_reason="tool_calls", tool_calls={
                     "0": oai_call("call_a", "get_weather", '{"city": "Paris"}'),
                     "1": oai_call("call_b", "get_time", '{"tz": "CET"}')}),
                 id="parallel"),
    pytest.param(Behaviour(tokens=[ToolCall(0, "call_a", "f"), ToolCall(1, "call_b", "g"),
                                   ToolArgs(1, '{"x":'), ToolArgs(0, "{}"), ToolArgs(1, "1}")],
                           finish_reason="tool_calls"),
                 oai_expected(8, oai_usage(7, 5), finish_reason="tool_calls", tool_calls={
                     "0": oai_call("call_a", "f", "{}"), "1": oai_call("call_b", "g", '{"x":1}')}),
                 id="parallel-interleaved"),
    pytest.param(Behaviour(tokens=[ToolArgs(0, '{"q": '), ToolArgs(0, '"fa'),
                                   ToolCall(0, "call_s", "search"), ToolArgs(0, 'ke"}')],
                           finish_reason="tool_calls"),
                 oai_expected(7, oai_usage(7, 4), finish_reason="tool_calls",
                              tool_calls={"0": oai_call("call_s", "search", '{"q": "fake"}')}),
                 id="arguments-before-name"),
    pytest.param(Behaviour(tokens=["a", "b"], finish_reason=None),
                 oai_expected(4, oai_usage(7, 2), content="ab", finish_reason=None),
                 id="done-without-finish-reason"),
    pytest.param(Behaviour(tokens=[Reasoning("hm"), "ok"], input_tokens=1000,
                           cache_read_input_tokens=800, reasoning_tokens=64, output_tokens=70,
                           finish_reason="length"),
                 oai_expected(5, oai_usage(1000, 70, cached=800, reasoning=64), content="ok",
                              reasoning_content="hm", finish_reason="length",
                              extra_fields=["delta.reasoning_content"]),
                 id="usage-cached-and-reasoning"),
])
def test_openai_sdk_accumulates_every_shape(
    fake: FakeProvider, oai: openai.OpenAI, behaviour: Behaviour, expected: dict[str, Any]
) -> None:
    model = fake.scenario(behaviour)
    assert oai_accumulate(oai, model) == expected
    call = fake.wait_closed(model)
    assert (call.outcome, call.tokens_sent) == ("complete", len(behaviour.tokens))


@pytest.mark.parametrize(("behaviour", "message", "finish_reason"), [
    pytest.param(Behaviour(tokens=REASONING),
                 {"role": "assistant", "content": "Paris.", "reasoning_content": "Let me think."},
                 "stop", id="reasoning_content"),
    pytest.param(Behaviour(tokens=REASONING, reasoning_field="reasoning"),
                 {"role": "assistant", "content": "Paris.", "reasoning": "Let me think."},
                 "stop", id="reasoning"),
    pytest.param(Behaviour(tokens=[Refusal("No"), Refusal(".")]),
                 {"role": "assistant", "content": "", "refusal": "No."}, "stop", id="refusal"),
    pytest.param(Behaviour(tokens=PARALLEL, finish_reason="tool_calls"),
                 {"role": "assistant", "content": "", "tool_calls": [
                     {"index": 0, "id": "call_a", "type": "function",
                      "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                     {"index": 1, "id": "call_b", "type": "function",
                      "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}}]},
                 "tool_calls", id="parallel"),
    pytest.param(Behaviour(tokens=[ToolArgs(0, "{}"), ToolCall(0, "call_s", "search")],
                           finish_reason="tool_calls"),
                 {"role": "assistant", "content": "", "tool_calls": [
                     {"index": 0, "id": "call_s", "type": "function",
                      "function": {"name": "search", "arguments": "{}"}}]},
                 "tool_calls", id="arguments-before-name"),
    pytest.param(Behaviour(tokens=["x"], finish_reason=None),
                 {"role": "assistant", "content": "x"}, None, id="done-without-finish-reason"),
])
def test_openai_stream_helper_where_it_copes(
    fake: FakeProvider, oai: openai.OpenAI, behaviour: Behaviour, message: dict[str, Any],
    finish_reason: str | None,
) -> None:
    model = fake.scenario(behaviour)
    assert oai_helper_message(oai, model) == (message, finish_reason)


def test_openai_chunks_carry_each_shape_as_providers_send_it(
    fake: FakeProvider, oai: openai.OpenAI
) -> None:
    """The deltas themselves: DeepSeek's content null beside reasoning_content, arguments
    before the call's id and name, Mistral's list parts, no finish chunk."""
    model = fake.scenario(tokens=[Reasoning("r"), ToolArgs(0, "{"), ToolCall(0, "c1", "f"), "t"],
                          finish_reason=None)
    deltas = [chunk.choices[0].delta.to_dict()
              for chunk in oai.chat.completions.create(model=model, messages=HI, stream=True)]
    assert deltas == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": None, "reasoning_content": "r"},
        {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]},
        {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                         "function": {"name": "f", "arguments": ""}}]},
        {"content": "t"},
    ]
    model = fake.scenario(tokens=[Reasoning("r"), "t"], reasoning_field="list", list_content=True)
    chunks = list(oai.chat.completions.create(model=model, messages=HI, stream=True))
    assert [c.choices[0].delta.content for c in chunks[1:3]] == [
        [{"type": "thinking", "thinking": [{"type": "text", "text": "r"}]}],
        [{"type": "text", "text": "t"}],
    ]
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, None, "stop"]


# --------------------------------------------------------------------------- Anthropic


@pytest.mark.parametrize(("behaviour", "expected"), [
    pytest.param(Behaviour(tokens=["Hel", "lo"]),
                 {"content": [text("Hello")], "stop_reason": "end_turn",
                  "usage": ant_usage(output_tokens=2)}, id="text"),
    pytest.param(Behaviour(tokens=REASONING),
                 {"content": [thinking("Let me think."), text("Paris.")],
                  "stop_reason": "end_turn", "usage": ant_usage(output_tokens=4)},
                 id="thinking-signed"),
    pytest.param(Behaviour(tokens=[Refusal("I can't"), Refusal(" help with that.")]),
                 {"content": [text("I can't help with that.")], "stop_reason": "refusal",
                  "usage": ant_usage(output_tokens=2)}, id="refusal"),
    pytest.param(Behaviour(tokens=WEATHER, finish_reason="tool_calls"),
                 {"content": [text("Checking."), tool_use("call_a", "get_weather",
                                                          {"city": "Paris"})],
                  "stop_reason": "tool_use", "usage": ant_usage(output_tokens=4)},
                 id="tool-call-split"),
    pytest.param(Behaviour(tokens=[ToolCall(0, "toolu_w", "now", "{}")]),
                 {"content": [tool_use("toolu_w", "now", {})], "stop_reason": "tool_use",
                  "usage": ant_usage(output_tokens=1)}, id="tool-call-whole-stop-is-tool_use"),
    pytest.param(Behaviour(tokens=PARALLEL, finish_reason="tool_calls"),
                 {"content": [tool_use("call_a", "get_weather", {"city": "Paris"}),
                              tool_use("call_b", "get_time", {"tz": "CET"})],
                  "stop_reason": "tool_use", "usage": ant_usage(output_tokens=5)},
                 id="parallel"),
    pytest.param(Behaviour(tokens=[Reasoning("First "), Reasoning("a call."),
                                   ToolCall(0, "toolu_1", "f", "{}"), Reasoning("Then words."),
                                   "Done"], finish_reason="tool_calls"),
                 {"content": [thinking("First a call."), tool_use("toolu_1", "f", {}),
                              thinking("Then words."), text("Done")],
                  "stop_reason": "tool_use", "usage": ant_usage(output_tokens=5)},
                 id="interleaved-thinking"),
    pytest.param(Behaviour(tokens=[RedactedThinking("EmwKAhgBEgy3va3pzix/LafPsn4a"),
                                   Reasoning("x"), RedactedThinking("second"), "hi"]),
                 {"content": [{"type": "redacted_thinking",
                               "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
                              thinking("x"), {"type": "redacted_thinking", "data": "second"},
                              text("hi")],
                  "stop_reason": "end_turn", "usage": ant_usage(output_tokens=4)},
                 id="redacted-thinking"),
    pytest.param(Behaviour(tokens=["a", "b"], finish_reason=None),
                 {"content": [text("ab")], "stop_reason": None,
                  "usage": ant_usage(output_tokens=2)}, id="no-stop-reason"),
    pytest.param(Behaviour(tokens=["a"], finish_reason="length"),
                 {"content": [text("a")], "stop_reason": "max_tokens",
                  "usage": ant_usage(output_tokens=1)}, id="length"),
    pytest.param(Behaviour(tokens=[Reasoning("hm"), "ok"], input_tokens=12,
                           final_input_tokens=10423, cache_read_input_tokens=300,
                           cache_creation_input_tokens=40, reasoning_tokens=33, output_tokens=90),
                 {"content": [thinking("hm"), text("ok")], "stop_reason": "end_turn",
                  "usage": {"cache_creation_input_tokens": 40, "cache_read_input_tokens": 300,
                            "input_tokens": 10423, "output_tokens": 90,
                            "output_tokens_details": {"thinking_tokens": 33}}},
                 id="cumulative-usage"),
])
def test_anthropic_sdk_assembles_every_shape(
    fake: FakeProvider, ant: anthropic.Anthropic, behaviour: Behaviour, expected: dict[str, Any]
) -> None:
    model = fake.scenario(behaviour)
    assert ant_dump(ant_message(ant, model)) == expected
    call = fake.wait_closed(model)
    assert (call.outcome, call.tokens_sent) == ("complete", len(behaviour.tokens))


def test_anthropic_blocks_open_and_close_as_the_kind_changes(
    fake: FakeProvider, ant: anthropic.Anthropic
) -> None:
    model = fake.scenario(tokens=[Reasoning("a"), Reasoning("b"), "x", ToolCall(0, "t1", "f"),
                                  ToolArgs(0, "{}"), RedactedThinking("r"), Refusal("no")],
                          input_tokens=5, final_input_tokens=9)
    seen: list[tuple[Any, ...]] = []
    for event in ant.messages.create(model=model, max_tokens=10, messages=HI, stream=True):
        data: dict[str, Any] = event.to_dict()
        if event.type == "content_block_start":
            seen.append(("start", data["index"], data["content_block"]))
        elif event.type == "content_block_delta":
            seen.append(("delta", data["index"], data["delta"]))
        elif event.type == "content_block_stop":
            seen.append(("stop", data["index"]))
        elif event.type == "message_start":
            seen.append(("message_start", data["message"]["usage"]))
        else:
            seen.append((event.type, data.get("delta"), data.get("usage")))
    assert seen == [
        ("message_start", {"input_tokens": 5, "cache_creation_input_tokens": 0,
                           "cache_read_input_tokens": 0, "output_tokens": 1}),
        ("start", 0, {"type": "thinking", "thinking": "", "signature": ""}),
        ("delta", 0, {"type": "thinking_delta", "thinking": "a"}),
        ("delta", 0, {"type": "thinking_delta", "thinking": "b"}),
        ("delta", 0, {"type": "signature_delta", "signature": thinking_signature("ab")}),
        ("stop", 0),
        ("start", 1, {"type": "text", "text": ""}),
        ("delta", 1, {"type": "text_delta", "text": "x"}),
        ("stop", 1),
        ("start", 2, {"type": "tool_use", "id": "t1", "name": "f", "input": {}}),
        ("delta", 2, {"type": "input_json_delta", "partial_json": ""}),
        ("delta", 2, {"type": "input_json_delta", "partial_json": "{}"}),
        ("stop", 2),
        ("start", 3, {"type": "redacted_thinking", "data": "r"}),
        ("stop", 3),
        ("start", 4, {"type": "text", "text": ""}),
        ("delta", 4, {"type": "text_delta", "text": "no"}),
        ("stop", 4),
        ("message_delta", {"stop_reason": "refusal", "stop_sequence": None},
         {"input_tokens": 9, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
          "output_tokens": 7}),
        ("message_stop", None, None),
    ]


def test_a_drop_inside_a_thinking_block_leaves_it_unsigned(
    fake: FakeProvider, ant: anthropic.Anthropic
) -> None:
    model = fake.scenario(tokens=[Reasoning("a"), Reasoning("b"), "x"], drop_after=2)
    deltas = []
    with pytest.raises(httpx2.RemoteProtocolError):
        for event in ant.messages.create(model=model, max_tokens=10, messages=HI, stream=True):
            if event.type == "content_block_delta":
                deltas.append(event.delta.to_dict())
    assert deltas == [{"type": "thinking_delta", "thinking": "a"},
                      {"type": "thinking_delta", "thinking": "b"}]
    call = fake.wait_closed(model)
    assert (call.outcome, call.tokens_sent) == ("dropped", 2)


# --------------------------------------------------------------------------- not in a format


def test_what_a_format_cannot_carry_is_a_clear_404(
    fake: FakeProvider, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    model = fake.scenario(tokens=[RedactedThinking("r"), "x"])
    with pytest.raises(openai.NotFoundError) as oai_error:
        oai_accumulate(oai, model)
    assert oai_error.value.body["message"] == (  # type: ignore[index]
        f"The model `{model}` cannot be served on /v1/chat/completions: "
        "redacted thinking exists only in Anthropic messages.")
    for tokens in ([ToolArgs(0, "{}"), ToolCall(0, "c", "f")],
                   [ToolCall(0, "a", "f"), ToolCall(1, "b", "g"), ToolArgs(0, "{}")],
                   [ToolCall(0, "a", "f"), "text", ToolArgs(0, "{}")]):
        model = fake.scenario(tokens=tokens)
        with pytest.raises(anthropic.NotFoundError) as ant_error:
            ant_message(ant, model)
        assert ant_error.value.body["error"]["message"] == (  # type: ignore[index]
            f"The model `{model}` cannot be served on /v1/messages: ToolArgs(0) does not "
            "follow its ToolCall: Anthropic streams one tool_use block at a time, its id and "
            "name first.")
        assert fake.wait_closed(model).outcome == "error_status"


def test_only_plain_text_is_answered_without_a_stream(
    fake: FakeProvider, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    for behaviour in (Behaviour(tokens=[Reasoning("r"), "x"]),
                      Behaviour(tokens=[Raw(b"data: [DONE]\n\n")], verbatim=True)):
        model = fake.scenario(behaviour)
        with pytest.raises(openai.BadRequestError) as oai_error:
            oai.chat.completions.create(model=model, messages=HI)
        assert oai_error.value.body["message"] == (  # type: ignore[index]
            "This fake answers only text without `stream: true`; ask for a stream.")
        with pytest.raises(anthropic.BadRequestError):
            ant.messages.create(model=model, max_tokens=10, messages=HI)


# --------------------------------------------------------------------------- recordings

OPENAI_RECORDINGS = sorted(p.stem for p in (RECORDINGS / "openai").glob("*.sse"))
ANTHROPIC_RECORDINGS = sorted(p.stem for p in (RECORDINGS / "anthropic").glob("*.sse")
                              if p.stem != "error_midstream_fragment")


@pytest.mark.parametrize("name", OPENAI_RECORDINGS)
def test_openai_recordings_are_served_verbatim(
    fake: FakeProvider, oai: openai.OpenAI, name: str
) -> None:
    path = RECORDINGS / "openai" / f"{name}.sse"
    model = fake.scenario(recorded(path))
    expected = json.loads(path.with_suffix(".expected.json").read_text(encoding="utf-8"))
    assert oai_accumulate(oai, model) == expected
    call = fake.wait_closed(model)
    assert (call.outcome, call.tokens_sent) == ("complete", len(sse_events(path.read_bytes())))


@pytest.mark.parametrize("name", ANTHROPIC_RECORDINGS)
def test_anthropic_recordings_are_served_verbatim(
    fake: FakeProvider, ant: anthropic.Anthropic, name: str
) -> None:
    path = RECORDINGS / "anthropic" / f"{name}.sse"
    model = fake.scenario(recorded(path))
    expected = json.loads(path.with_suffix(".expected.json").read_text(encoding="utf-8"))
    assert ant_message(ant, model).model_dump(mode="json") == expected
    call = fake.wait_closed(model)
    assert (call.outcome, call.tokens_sent) == ("complete", len(sse_events(path.read_bytes())))


def test_the_anthropic_error_fragment_is_served_verbatim(
    fake: FakeProvider, ant: anthropic.Anthropic
) -> None:
    model = fake.scenario(recorded(RECORDINGS / "anthropic" / "error_midstream_fragment.sse"))
    seen = []
    with pytest.raises(anthropic.APIStatusError) as raised:
        for event in ant.messages.create(model=model, max_tokens=10, messages=HI, stream=True):
            seen.append(event.delta.text)  # type: ignore[union-attr]
    assert seen == ["d with a replacement character", " ("]
    assert raised.value.body == {"type": "error", "error": {
        "details": None, "type": "api_error", "message": "Internal server error"}}


def test_a_recording_keeps_the_faults_and_counts_events(
    fake: FakeProvider, ant: anthropic.Anthropic
) -> None:
    model = fake.scenario(recorded(RECORDINGS / "anthropic" / "text_basic.sse", drop_after=5))
    types = []
    with pytest.raises(httpx2.RemoteProtocolError):
        for event in ant.messages.create(model=model, max_tokens=10, messages=HI, stream=True):
            types.append(event.type)
    # message_start, content_block_start, ping (skipped by the SDK), two deltas
    assert types == ["message_start", "content_block_start", "content_block_delta",
                     "content_block_delta"]
    call = fake.wait_closed(model)
    assert (call.outcome, call.tokens_sent) == ("dropped", 5)


def test_a_recording_is_not_served_on_the_other_api(
    fake: FakeProvider, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    model = fake.scenario(recorded(RECORDINGS / "anthropic" / "text_basic.sse"))
    with pytest.raises(openai.NotFoundError) as oai_error:
        oai_accumulate(oai, model)
    assert oai_error.value.body["message"] == (  # type: ignore[index]
        f"The model `{model}` cannot be served on /v1/chat/completions: it is a recorded "
        "anthropic stream.")
    model = fake.scenario(recorded(RECORDINGS / "openai" / "openai_refusal.sse"))
    with pytest.raises(anthropic.NotFoundError) as ant_error:
        ant_message(ant, model)
    assert ant_error.value.body["error"]["message"] == (  # type: ignore[index]
        f"The model `{model}` cannot be served on /v1/messages: it is a recorded openai "
        "stream.")


# --------------------------------------------------------------------------- request checks


def test_anthropic_thinking_round_trip_is_accepted_as_given_back(
    fake: FakeProvider, ant: anthropic.Anthropic
) -> None:
    """Thinking, a tool call; the SDK's own message goes back with the tool result: 200."""
    model = fake.scenario_seq([
        Behaviour(tokens=[Reasoning("Need the time."), ToolCall(0, "toolu_t", "now", "{}")]),
        Behaviour(tokens=["It is noon."]),
    ])
    thinking_on = {"type": "enabled", "budget_tokens": 1024}
    first = ant_message(ant, model, thinking=thinking_on)
    assert ant_dump(first)["content"] == [thinking("Need the time."), tool_use("toolu_t", "now", {})]
    history = [*HI, {"role": "assistant", "content": first.content},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_t",
                                             "content": "12:00"}]}]
    second = ant_message(ant, model, history, thinking=thinking_on)
    assert ant_dump(second)["content"] == [text("It is noon.")]
    sent = fake.wait_closed(model, 1).body["messages"][1]["content"]
    assert sent == [{"type": "thinking", "thinking": "Need the time.",
                     "signature": thinking_signature("Need the time.")},
                    {"type": "tool_use", "id": "toolu_t", "name": "now", "input": {}}]


def _assistant(*blocks: dict[str, Any]) -> list[Any]:
    """user, assistant(blocks), user(tool result for toolu_t when a block calls it)."""
    results = [{"type": "tool_result", "tool_use_id": b["id"], "content": "ok"}
               for b in blocks if b["type"] == "tool_use"]
    return [*HI, {"role": "assistant", "content": list(blocks)},
            {"role": "user", "content": results or "go on"}]


SIGNED = thinking("Need the time.")
CALL = tool_use("toolu_t", "now", {})


@pytest.mark.parametrize(("messages", "thinking_on", "error"), [
    pytest.param(_assistant({"type": "thinking", "thinking": "Need the time."}, CALL), True,
                 "messages.1.content.0.thinking.signature: Field required", id="unsigned"),
    pytest.param(_assistant({"type": "thinking", "signature": "x"}), False,
                 "messages.1.content.0.thinking.thinking: Field required", id="no-thinking-text"),
    pytest.param(_assistant({"type": "redacted_thinking"}), False,
                 "messages.1.content.0.redacted_thinking.data: Field required",
                 id="redacted-without-data"),
    pytest.param(_assistant(text("a"), {**SIGNED, "signature": thinking_signature("other")}),
                 False, "messages.1.content.1: Invalid `signature` in `thinking` block",
                 id="forged-signature"),
    pytest.param(_assistant({**SIGNED, "thinking": "Need the time!"}, CALL), True,
                 "messages.1.content.0: Invalid `signature` in `thinking` block",
                 id="edited-thinking"),
    pytest.param([*HI, {"role": "assistant", "content": [CALL]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x",
                                                "content": "ok"}]}], False,
                 "messages.1: `tool_use` ids were found without `tool_result` blocks immediately "
                 "after: toolu_t. Each `tool_use` block must have a corresponding `tool_result` "
                 "block in the next message.", id="call-unanswered"),
    pytest.param([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x",
                                                "content": "ok"}]}], False,
                 "messages.0.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
                 "toolu_x. Each `tool_result` block must have a corresponding `tool_use` block in "
                 "the previous message.", id="result-answers-nothing"),
    pytest.param(_assistant(text("Let me look."), CALL), True,
                 "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but "
                 "found `text`. When `thinking` is enabled, a final `assistant` message must "
                 "start with a thinking block (preceeding the lastmost set of `tool_use` and "
                 "`tool_result` blocks). We recommend you include thinking blocks from previous "
                 "turns. To avoid this requirement, disable `thinking`. Please consult our "
                 "documentation at https://docs.claude.com/en/docs/build-with-claude/"
                 "extended-thinking", id="thinking-dropped-before-the-call"),
])
def test_anthropic_rejects_what_the_api_rejects(
    fake: FakeProvider, ant: anthropic.Anthropic, messages: list[Any], thinking_on: bool,
    error: str,
) -> None:
    model = fake.scenario(tokens=["never"])
    extra: dict[str, Any] = {"thinking": {"type": "enabled", "budget_tokens": 1024}} if thinking_on else {}
    with pytest.raises(anthropic.BadRequestError) as raised:
        ant.messages.create(model=model, max_tokens=2000, messages=messages, stream=True,
                            **extra)
    assert raised.value.body["error"] == {  # type: ignore[index]
        "type": "invalid_request_error", "message": error}
    call = fake.wait_closed(model)
    assert (call.outcome, call.body["messages"]) == ("error_status", messages)


@pytest.mark.parametrize(("messages", "thinking_on"), [
    pytest.param(_assistant(SIGNED, CALL), True, id="signed-thinking-then-call"),
    pytest.param(_assistant({"type": "redacted_thinking", "data": "r"}, CALL), True,
                 id="redacted-then-call"),
    pytest.param(_assistant(text("Let me look."), CALL), False, id="call-without-thinking"),
    pytest.param(_assistant(text("plain")), True, id="last-turn-without-call"),
])
def test_anthropic_accepts_valid_histories(
    fake: FakeProvider, ant: anthropic.Anthropic, messages: list[Any], thinking_on: bool
) -> None:
    model = fake.scenario(tokens=["fine"])
    extra: dict[str, Any] = {"thinking": {"type": "enabled", "budget_tokens": 1024}} if thinking_on else {}
    assert ant_dump(ant_message(ant, model, messages, **extra))["content"] == [text("fine")]


def _oai_history(*calls: str, answers: tuple[str, ...] = ()) -> list[Any]:
    assistant = {"role": "assistant", "content": None, "tool_calls": [
        {"id": c, "type": "function", "function": {"name": "now", "arguments": "{}"}}
        for c in calls]}
    return [*HI, assistant, *({"role": "tool", "tool_call_id": a, "content": "12:00"}
                             for a in answers)]


@pytest.mark.parametrize(("messages", "message", "param"), [
    pytest.param([*HI, {"role": "tool", "tool_call_id": "call_1", "content": "x"}],
                 "Invalid parameter: messages with role 'tool' must be a response to a "
                 "preceeding message with 'tool_calls'.", "messages.[1].role",
                 id="tool-answers-nothing"),
    pytest.param([*HI, {"role": "assistant", "content": "hi"},
                  {"role": "tool", "tool_call_id": "call_1", "content": "x"}],
                 "Invalid parameter: messages with role 'tool' must be a response to a "
                 "preceeding message with 'tool_calls'.", "messages.[2].role",
                 id="assistant-without-calls"),
    pytest.param(_oai_history("call_1", "call_2", answers=("call_1",)),
                 "An assistant message with 'tool_calls' must be followed by tool messages "
                 "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                 "response messages: call_2", "messages.[1].role", id="call-unanswered"),
    pytest.param([*_oai_history("call_1", answers=("call_1",)),
                  {"role": "tool", "tool_call_id": "call_9", "content": "x"}],
                 "Invalid parameter: 'tool_call_id' of 'call_9' not found in 'tool_calls' of "
                 "previous message.", None, id="unknown-call-id"),
])
def test_openai_rejects_what_the_api_rejects(
    fake: FakeProvider, oai: openai.OpenAI, messages: list[Any], message: str,
    param: str | None,
) -> None:
    model = fake.scenario(tokens=["never"])
    with pytest.raises(openai.BadRequestError) as raised:
        oai_accumulate(oai, model, messages)
    assert raised.value.body == {"message": message, "type": "invalid_request_error",
                                 "param": param, "code": None}
    call = fake.wait_closed(model)
    assert (call.outcome, call.body["messages"]) == ("error_status", messages)


def test_openai_tool_round_trip_is_accepted(fake: FakeProvider, oai: openai.OpenAI) -> None:
    model = fake.scenario_seq([
        Behaviour(tokens=PARALLEL, finish_reason="tool_calls"),
        Behaviour(tokens=["Paris, 12:00."]),
    ])
    with oai.chat.completions.stream(model=model, messages=HI) as stream:
        message = stream.get_final_completion().choices[0].message
    assert message.tool_calls is not None
    history = [*HI, message.model_dump(exclude_none=True, exclude={"parsed"}),
               *({"role": "tool", "tool_call_id": c.id, "content": "ok"}
                 for c in message.tool_calls)]
    assert oai_accumulate(oai, model, history)["content"] == "Paris, 12:00."
    sent = fake.wait_closed(model, 1).body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["call_a", "call_b"]


def test_check_requests_false_lets_anything_through(
    fake: FakeProvider, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    model = fake.scenario(tokens=["ok"], check_requests=False)
    bad = [{"role": "tool", "tool_call_id": "call_1", "content": "x"}]
    assert oai_accumulate(oai, model, bad)["content"] == "ok"
    unsigned = _assistant({"type": "thinking", "thinking": "t"})
    assert ant_dump(ant_message(ant, model, unsigned))["content"] == [text("ok")]


# --------------------------------------------------------------------------- fake_wire itself


def test_thinking_signature_is_an_hmac_of_the_text() -> None:
    digest = hmac.new(SIGNATURE_KEY, b"Need the time.", hashlib.sha256).digest()
    assert thinking_signature("Need the time.") == base64.b64encode(digest).decode()
    assert thinking_signature("a") != thinking_signature("b")


def test_sse_events_split_and_join_back() -> None:
    data = b"event: a\ndata: {}\n\ndata: x\n\ndata: tail"
    assert sse_events(data) == [b"event: a\ndata: {}\n\n", b"data: x\n\n", b"data: tail"]
    assert sse_events(b"data: x\n\n") == [b"data: x\n\n"]
    assert sse_events(b"") == []
    for path in sorted(RECORDINGS.glob("*/*.sse")):
        raw = path.read_bytes()
        assert b"".join(sse_events(raw)) == raw, path.name


def test_recorded_needs_to_know_its_api(tmp_path: Path) -> None:
    path = tmp_path / "stream.sse"
    path.write_bytes(b"data: [DONE]\n\n")
    with pytest.raises(ValueError, match="say which API"):
        recorded(path)
    behaviour = recorded(path, wire="openai", delay=0.5)
    assert behaviour.tokens == [Raw(b"data: [DONE]\n\n")]
    assert (behaviour.wire, behaviour.verbatim, behaviour.delay) == ("openai", True, 0.5)


def test_behaviour_refuses_what_is_no_stream_item() -> None:
    with pytest.raises(TypeError, match="not one string"):
        Behaviour(tokens="Hello")
    with pytest.raises(TypeError, match="not a stream item: 3"):
        Behaviour(tokens=["a", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unknown reasoning_field 'thoughts'"):
        Behaviour(reasoning_field="thoughts")  # type: ignore[arg-type]


def test_plain_text_renders_as_the_benchmarked_token_events() -> None:
    """``render`` of text is ``token`` (what bench/provider.py templates), in both formats."""
    texts = ["Hello", ",", " world", "!"]
    b = Behaviour(tokens=texts)
    for dialect in (OpenAIDialect("m", {}), AnthropicDialect("m", {})):
        dialect.preamble(b)
        assert [dialect.render(t, b) for t in texts] == [[dialect.token(t)] for t in texts]


def test_dialects_refuse_items_out_of_place() -> None:
    b = Behaviour()
    with pytest.raises(ValueError, match="cannot be streamed as chat completions"):
        OpenAIDialect("m", {}).render(RedactedThinking("r"), b)
    dialect = AnthropicDialect("m", {})
    dialect.preamble(b)
    with pytest.raises(ValueError, match="does not follow its ToolCall"):
        dialect.render(ToolArgs(0, "{}"), b)
