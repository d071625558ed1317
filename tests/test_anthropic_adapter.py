"""The Anthropic adapter, driven directly against a loopback server.

Parsing: every real recording in tests/recordings/anthropic is served (as
tests/test_recordings_anthropic.py serves it to the SDK) to AnthropicProvider,
and its deltas must carry, per kind, exactly what the SDK assembled in
<name>.expected.json. What no public recording shows (a
refusal, a tool_use without input deltas, unknown blocks, deltas and events)
is tested with streams written by hand below, marked HAND-WRITTEN.

Requests: the exact JSON body the loopback server receives. ``check``: every
field the Messages API cannot take is refused, naming it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sse_gateway.providers.anthropic import AnthropicProvider
from sse_gateway.providers.base import (
    ChatRequest,
    Delta,
    Finished,
    ImagePart,
    Message,
    NamedTool,
    Output,
    ProviderData,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Unrelayed,
    Unsupported,
    UpstreamError,
    UpstreamUnavailable,
    Usage,
)
from tests.replay import ReplayServer, replaying

RECORDINGS = Path(__file__).resolve().parent / "recordings" / "anthropic"
DEFAULT_MAX_TOKENS = 100
HI = ChatRequest("claude-x", (Message("user", "hi"),))
# How each recording finishes: (reason, provider_reason).
FINISHED = {
    "text_basic": Finished("stop", "end_turn"),
    "text_final_usage": Finished("stop", "end_turn"),
    "thinking_signature": Finished("stop", "end_turn"),
    "tool_use_fragments": Finished("tool_calls", "tool_use"),
    "tool_use_parallel": Finished("tool_calls", "tool_use"),
    "web_search_cumulative_usage": Finished("stop", "end_turn"),
    "max_tokens_partial_tool_input": Finished("length", "max_tokens"),
    "redacted_thinking": Finished("stop", "end_turn"),
}
# The arguments text of each call, exactly as its input_json_delta fragments concatenate.
ARGUMENTS = {
    "tool_use_fragments": ['{"location": "Paris"}'],
    "tool_use_parallel": ['{"parent": "/tmp", "name": "testdir1"}',
                          '{"parent": "/tmp", "name": "testdir2"}',
                          '{"parent": "/tmp", "name": "testdir3"}'],
    "max_tokens_partial_tool_input": [
        '{"filename": "taxes.txt", "lines_of_text": [\n'
        '"# COMPREHENSIVE TAX GUIDE FOR INDIVIDUALS WITH MULTIPLE W-2s",\n"",\n'
        '"## INTRODUCTION",\n"",\n"Filing taxes'],
}


class _Served:
    """The bytes the module's replay server answers with next."""

    body = b""


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayServer]:
    with replaying("/v1/messages", lambda _: _Served.body) as server:
        yield server


@pytest.fixture(scope="module")
def provider(replay: ReplayServer) -> Iterator[AnthropicProvider]:
    built = AnthropicProvider(api_key="sk-ant-x", base_url=replay.url, max_connections=4,
                              connect_timeout=2.0, default_max_tokens=DEFAULT_MAX_TOKENS)
    yield built
    built.close()


def run(provider: AnthropicProvider, body: bytes, request: ChatRequest = HI) -> list[Delta]:
    """Every delta the adapter yields for one request answered with ``body``."""
    _Served.body = body
    provider.check(request)
    return list(provider.stream(request))


def sse(*events: dict[str, Any]) -> bytes:
    """A HAND-WRITTEN stream: each event named after its type, as Anthropic sends it."""
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def message_start(input_tokens: int = 5) -> dict[str, Any]:
    return {"type": "message_start", "message": {
        "id": "msg_hand", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def block_delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_end(stop_reason: str | None = "end_turn", output_tokens: int = 7,
                ) -> list[dict[str, Any]]:
    return [{"type": "message_delta", "delta": {"stop_reason": stop_reason,
                                                "stop_sequence": None},
             "usage": {"output_tokens": output_tokens}},
            {"type": "message_stop"}]


def text_of(deltas: list[Delta], kind: type[TextDelta | ReasoningDelta]) -> str:
    return "".join(d.text for d in deltas if type(d) is kind)


def calls_of(deltas: list[Delta]) -> list[tuple[str, str, str, bool]]:
    """(id, name, arguments, ended) per call index, checking each delta's order."""
    calls: dict[int, list[Any]] = {}
    for d in deltas:
        if isinstance(d, ToolCallStart):
            assert d.index == len(calls) and d.index not in calls
            calls[d.index] = [d.id, d.name, "", False]
        elif isinstance(d, ToolCallDelta):
            assert not calls[d.index][3]
            calls[d.index][2] += d.arguments
        elif isinstance(d, ToolCallEnd):
            assert not calls[d.index][3]
            calls[d.index][3] = True
    return [tuple(c) for _, c in sorted(calls.items())]


def assert_well_formed(deltas: list[Delta]) -> None:
    """No empty output, and the stream's news last: its usage, then how it finished."""
    for d in deltas:
        if isinstance(d, (TextDelta, ReasoningDelta, RefusalDelta)):
            assert d.text
        elif isinstance(d, ToolCallDelta):
            assert d.arguments
    assert isinstance(deltas[-2], Usage) and isinstance(deltas[-1], Finished)
    assert not any(isinstance(d, (Usage, Finished)) for d in deltas[:-2])


# ------------------------------------------------------------------- real recordings


@pytest.mark.parametrize("name", sorted(FINISHED))
def test_each_recording_carries_what_the_sdk_assembled(
        provider: AnthropicProvider, name: str) -> None:
    expected = json.loads((RECORDINGS / f"{name}.expected.json").read_text())
    deltas = run(provider, (RECORDINGS / f"{name}.sse").read_bytes())
    assert_well_formed(deltas)
    blocks = expected["content"]
    assert text_of(deltas, TextDelta) == "".join(
        b["text"] for b in blocks if b["type"] == "text")
    thinking = [{"type": "thinking", "thinking": b["thinking"], "signature": b["signature"]}
                if b["type"] == "thinking" else {"type": "redacted_thinking", "data": b["data"]}
                for b in blocks if b["type"] in ("thinking", "redacted_thinking")]
    assert text_of(deltas, ReasoningDelta) == "".join(
        b["thinking"] for b in thinking if b["type"] == "thinking")
    assert [d for d in deltas if isinstance(d, ProviderData)] == [
        ProviderData("anthropic", "thinking_blocks", b) for b in thinking]
    uses = [b for b in blocks if b["type"] == "tool_use"]
    calls = calls_of(deltas)
    assert [(c[0], c[1]) for c in calls] == [(b["id"], b["name"]) for b in uses]
    assert [c[2] for c in calls] == ARGUMENTS.get(name, [])
    if name != "max_tokens_partial_tool_input":  # the one whose JSON was cut off
        assert [json.loads(c[2]) for c in calls] == [b["input"] for b in uses]
        assert all(c[3] for c in calls)
    usage = expected["usage"]
    assert deltas[-2:] == [Usage(usage["input_tokens"], usage["output_tokens"],
                                 usage["cache_read_input_tokens"],
                                 usage["cache_creation_input_tokens"]), FINISHED[name]]
    assert expected["stop_reason"] == FINISHED[name].provider_reason


def test_recordings_list_is_complete() -> None:
    assert sorted(p.stem for p in RECORDINGS.glob("*.sse")) == sorted(
        [*FINISHED, "error_midstream_fragment"])


def test_text_deltas_one_per_text_delta_event(provider: AnthropicProvider) -> None:
    deltas = run(provider, (RECORDINGS / "text_basic.sse").read_bytes())
    assert deltas == [TextDelta("Hello"), TextDelta(" there"), TextDelta("!"),
                      Usage(11, 6), Finished("stop", "end_turn")]


def test_thinking_streams_as_reasoning_then_its_signed_block(
        provider: AnthropicProvider) -> None:
    deltas = run(provider, (RECORDINGS / "thinking_signature.sse").read_bytes())
    kinds = [type(d).__name__ for d in deltas]
    # All the thinking, then its whole block (at its content_block_stop), then the text.
    assert kinds == ["ReasoningDelta"] * 5 + ["ProviderData"] + ["TextDelta"] * 26 + [
        "Usage", "Finished"]
    data = deltas[5]
    assert isinstance(data, ProviderData)
    assert data.item["signature"].startswith("ErUBCkYIARgCIkDs4EaIo9Cgsv")
    assert data.item["signature"].endswith("C7Dq3gSng==")
    assert data.item["thinking"].startswith("I'll give a direct explanation")


def test_tool_call_fragments_in_order(provider: AnthropicProvider) -> None:
    deltas = run(provider, (RECORDINGS / "tool_use_fragments.sse").read_bytes())
    assert deltas == [
        TextDelta("I"), TextDelta("'ll check the current weather in Paris for you."),
        ToolCallStart(0, "toolu_01NRLabsLyVHZPKxbKvkfSMn", "get_weather"),
        # the empty first fragment is not relayed
        ToolCallDelta(0, '{"locati'), ToolCallDelta(0, 'on": "P'), ToolCallDelta(0, "ar"),
        ToolCallDelta(0, 'is"}'), ToolCallEnd(0),
        Usage(377, 65, 0, 0), Finished("tool_calls", "tool_use")]


def test_parallel_calls_are_numbered_from_zero(provider: AnthropicProvider) -> None:
    """Anthropic's block indices are 1-3 (text is 0); the gateway's are 0-2."""
    deltas = run(provider, (RECORDINGS / "tool_use_parallel.sse").read_bytes())
    assert [d for d in deltas if isinstance(d, (ToolCallStart, ToolCallEnd))] == [
        ToolCallStart(0, "toolu_01GwpAyin6URSPn7ZuGSjXKz", "make_directory"), ToolCallEnd(0),
        ToolCallStart(1, "toolu_01Jqbxt5WYUt6RfpoBCHpA6X", "make_directory"), ToolCallEnd(1),
        ToolCallStart(2, "toolu_01Q7ptGyMTHtj8NTAu1q93qS", "make_directory"), ToolCallEnd(2)]


def test_max_tokens_inside_a_call_leaves_it_unfinished(provider: AnthropicProvider) -> None:
    deltas = run(provider, (RECORDINGS / "max_tokens_partial_tool_input.sse").read_bytes())
    assert calls_of(deltas) == [("toolu_01EKqbqmZrGRXy18eN7m9kvY", "make_file",
                                 ARGUMENTS["max_tokens_partial_tool_input"][0], False)]
    assert not any(isinstance(d, ToolCallEnd) for d in deltas)
    assert deltas[-2:] == [Usage(450, 124, 0, 0), Finished("length", "max_tokens")]


def test_web_search_final_cumulative_usage_and_what_is_not_relayed(
        provider: AnthropicProvider) -> None:
    deltas = run(provider, (RECORDINGS / "web_search_cumulative_usage.sse").read_bytes())
    # message_start said 2037 input tokens; the final message_delta's 15665 wins.
    assert deltas[-2:] == [Usage(15665, 795, 0, 0), Finished("stop", "end_turn")]
    # The server tool's blocks (its input_json_deltas included) and the citations
    # are named, once per block and once per citations_delta; nothing is a tool call.
    assert [d for d in deltas if isinstance(d, Unrelayed)] == [
        Unrelayed("server_tool_use"), Unrelayed("web_search_tool_result")] + [
        Unrelayed("citations")] * 14
    assert calls_of(deltas) == []
    assert sum(isinstance(d, TextDelta) for d in deltas) == 56


def test_error_event_mid_stream(provider: AnthropicProvider) -> None:
    _Served.body = (RECORDINGS / "error_midstream_fragment.sse").read_bytes()
    seen: list[Delta] = []
    with pytest.raises(UpstreamUnavailable) as raised:
        for delta in provider.stream(HI):
            seen.append(delta)
    assert seen == [TextDelta("d with a replacement character"), TextDelta(" (")]
    error = raised.value
    assert (error.code, error.retryable, error.provider, error.message) == (
        "upstream_unavailable", True, "anthropic",
        "anthropic reported an error during the stream")


def test_a_stream_cut_before_message_stop_is_an_error(provider: AnthropicProvider) -> None:
    raw = (RECORDINGS / "text_basic.sse").read_bytes()
    cut = raw[:raw.index(b"event: message_stop")]
    _Served.body = cut
    seen: list[Delta] = []
    with pytest.raises(UpstreamError, match="anthropic ended the stream before the model "
                                            "finished"):
        for delta in provider.stream(HI):
            seen.append(delta)
    assert seen == [TextDelta("Hello"), TextDelta(" there"), TextDelta("!")]


def test_an_event_that_is_not_json_is_an_error(provider: AnthropicProvider) -> None:
    _Served.body = sse(message_start()) + b"event: content_block_delta\ndata: {nope\n\n"
    with pytest.raises(UpstreamError, match="anthropic sent an event that is not JSON"):
        list(provider.stream(HI))


# ------------------------------------------------------------- hand-written streams


def test_redacted_thinking_is_provider_data_only(provider: AnthropicProvider) -> None:
    """HAND-WRITTEN (redacted_thinking.sse is the recorded case): a redacted block alone."""
    body = sse(message_start(),
               block_start(0, {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3p"}),
               block_stop(0),
               block_start(1, {"type": "thinking", "thinking": "", "signature": ""}),
               block_delta(1, {"type": "thinking_delta", "thinking": "Let me "}),
               block_delta(1, {"type": "thinking_delta", "thinking": ""}),
               block_delta(1, {"type": "thinking_delta", "thinking": "think."}),
               block_delta(1, {"type": "signature_delta", "signature": "sig-part-1"}),
               block_delta(1, {"type": "signature_delta", "signature": "+part-2"}),
               block_stop(1),
               block_start(2, {"type": "text", "text": ""}),
               block_delta(2, {"type": "text_delta", "text": "Done."}),
               block_stop(2), *message_end())
    assert run(provider, body) == [
        ProviderData("anthropic", "thinking_blocks",
                     {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3p"}),
        ReasoningDelta("Let me "), ReasoningDelta("think."),
        ProviderData("anthropic", "thinking_blocks",
                     {"type": "thinking", "thinking": "Let me think.",
                      "signature": "sig-part-1+part-2"}),
        TextDelta("Done."), Usage(5, 7), Finished("stop", "end_turn")]


def test_text_and_thinking_a_block_starts_with(provider: AnthropicProvider) -> None:
    """HAND-WRITTEN: a block whose start already carries text is not lost."""
    body = sse(message_start(),
               block_start(0, {"type": "thinking", "thinking": "Hm", "signature": "s"}),
               block_delta(0, {"type": "thinking_delta", "thinking": "m."}),
               block_stop(0),
               block_start(1, {"type": "text", "text": "A"}),
               block_delta(1, {"type": "text_delta", "text": "B"}),
               block_stop(1), *message_end())
    assert run(provider, body) == [
        ReasoningDelta("Hm"), ReasoningDelta("m."),
        ProviderData("anthropic", "thinking_blocks",
                     {"type": "thinking", "thinking": "Hmm.", "signature": "s"}),
        TextDelta("A"), TextDelta("B"), Usage(5, 7), Finished("stop", "end_turn")]


@pytest.mark.parametrize(("stop_reason", "finished"), [
    ("refusal", Finished("refusal", "refusal")),
    ("stop_sequence", Finished("stop", "stop_sequence")),
    ("model_context_window_exceeded", Finished("length", "model_context_window_exceeded")),
    ("pause_turn", Finished("other", "pause_turn")),
    ("something_new", Finished("other", "something_new")),
])
def test_stop_reasons(provider: AnthropicProvider, stop_reason: str,
                      finished: Finished) -> None:
    """HAND-WRITTEN (the public refusal fixtures are written by hand too, see SOURCES.md)."""
    body = sse(message_start(), block_start(0, {"type": "text", "text": ""}),
               block_delta(0, {"type": "text_delta", "text": "I can"}), block_stop(0),
               *message_end(stop_reason))
    assert run(provider, body) == [TextDelta("I can"), Usage(5, 7), finished]


def test_message_stop_without_a_stop_reason_is_finished(provider: AnthropicProvider) -> None:
    """HAND-WRITTEN: ended properly but never said why: stop, or tool_calls after calls."""
    plain = sse(message_start(), block_start(0, {"type": "text", "text": ""}),
                block_delta(0, {"type": "text_delta", "text": "x"}), block_stop(0),
                {"type": "message_stop"})
    assert run(provider, plain) == [TextDelta("x"), Usage(5, 1), Finished("stop")]
    calling = sse(message_start(), block_start(0, {"type": "tool_use", "id": "toolu_1",
                                                   "name": "now", "input": {}}),
                  block_stop(0), *message_end(None))
    assert run(provider, calling) == [ToolCallStart(0, "toolu_1", "now"),
                                      ToolCallDelta(0, "{}"), ToolCallEnd(0),
                                      Usage(5, 7), Finished("tool_calls")]


def test_tool_use_without_input_deltas(provider: AnthropicProvider) -> None:
    """HAND-WRITTEN: the input in content_block_start, or none at all: the arguments are
    still JSON text. Deltas, when they come, are the arguments (not the start's input)."""
    body = sse(message_start(),
               block_start(0, {"type": "tool_use", "id": "toolu_a", "name": "weather",
                               "input": {"city": "Paris", "days": [1, 2]}}),
               block_stop(0),
               block_start(1, {"type": "tool_use", "id": "toolu_b", "name": "now",
                               "input": {}}),
               block_delta(1, {"type": "input_json_delta", "partial_json": ""}),
               block_stop(1),
               block_start(2, {"type": "tool_use", "id": "toolu_c", "name": "ping"}),
               block_stop(2),
               block_start(3, {"type": "tool_use", "id": "toolu_d", "name": "echo",
                               "input": {"stale": True}}),
               block_delta(3, {"type": "input_json_delta", "partial_json": '{"x": 1}'}),
               block_stop(3), *message_end("tool_use"))
    assert run(provider, body) == [
        ToolCallStart(0, "toolu_a", "weather"),
        ToolCallDelta(0, '{"city": "Paris", "days": [1, 2]}'), ToolCallEnd(0),
        ToolCallStart(1, "toolu_b", "now"), ToolCallDelta(1, "{}"), ToolCallEnd(1),
        ToolCallStart(2, "toolu_c", "ping"), ToolCallDelta(2, "{}"), ToolCallEnd(2),
        ToolCallStart(3, "toolu_d", "echo"), ToolCallDelta(3, '{"x": 1}'), ToolCallEnd(3),
        Usage(5, 7), Finished("tool_calls", "tool_use")]


def test_unknown_blocks_deltas_and_events_are_named(provider: AnthropicProvider) -> None:
    """HAND-WRITTEN: a block type, a delta type and an event type the adapter does not
    know; each is named once, their contents are not relayed; pings are not news."""
    body = sse(message_start(),
               {"type": "ping"},
               block_start(0, {"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "x",
                               "server_name": "s", "input": {}}),
               block_delta(0, {"type": "input_json_delta", "partial_json": '{"q": 1}'}),
               block_stop(0),
               block_start(1, {"type": "text", "text": ""}),
               block_delta(1, {"type": "text_delta", "text": "a"}),
               block_delta(1, {"type": "sparkle_delta", "sparkle": "*"}),
               block_delta(1, {"type": "citations_delta", "citation": {"type": "char_location"}}),
               {"type": "message_annotation", "note": "?"},
               block_delta(1, {"type": "text_delta", "text": "b"}),
               block_stop(1), *message_end())
    assert run(provider, body) == [
        Unrelayed("mcp_tool_use"), TextDelta("a"), Unrelayed("sparkle_delta"),
        Unrelayed("citations"), Unrelayed("message_annotation"), TextDelta("b"),
        Usage(5, 7), Finished("stop", "end_turn")]


def test_usage_final_figures_win_and_missing_ones_keep(provider: AnthropicProvider) -> None:
    """HAND-WRITTEN: message_delta repeats some figures (cumulative) and leaves others out."""
    start = message_start(10)
    start["message"]["usage"].update(cache_read_input_tokens=3,
                                     cache_creation_input_tokens=4)
    body = sse(start, block_start(0, {"type": "text", "text": ""}),
               block_delta(0, {"type": "text_delta", "text": "x"}), block_stop(0),
               {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 2, "cache_read_input_tokens": 8}},
               {"type": "message_delta", "delta": {}, "usage": {"input_tokens": 12,
                                                                 "output_tokens": 9}},
               {"type": "message_stop"})
    assert run(provider, body)[-2:] == [Usage(12, 9, 8, 4), Finished("stop", "end_turn")]


def test_only_output_deltas_are_output() -> None:
    """What the pump counts as the first token: none of the news this adapter yields."""
    assert not isinstance(Unrelayed("x"), Output)
    assert not isinstance(ProviderData("anthropic", "thinking_blocks", {}), Output)
    assert isinstance(ReasoningDelta("x"), Output)


# ------------------------------------------------------------------- request bodies

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
THINKING = {"type": "thinking", "thinking": "The user wants the weather.",
            "signature": "EqQBCkYIBRgCIkB"}
REDACTED = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3p"}


def sent(replay: ReplayServer, provider: AnthropicProvider,
         request: ChatRequest) -> dict[str, Any]:
    """The JSON body the loopback server received for ``request``."""
    run(provider, (RECORDINGS / "text_basic.sse").read_bytes(), request)
    path, body = replay.requests[-1]
    assert path == "/v1/messages"
    return body  # type: ignore[no-any-return]


def test_a_plain_request(replay: ReplayServer, provider: AnthropicProvider) -> None:
    assert sent(replay, provider, HI) == {
        "model": "claude-x", "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_every_field_translated(replay: ReplayServer, provider: AnthropicProvider) -> None:
    request = ChatRequest(
        "claude-sonnet-4-5",
        (Message("system", "Be brief."),
         Message("user", (TextPart("What is in "), TextPart("these pictures?"),
                          ImagePart("https://example.com/cat.jpg"),
                          ImagePart(f"data:image/png;base64,{PNG}"))),
         Message("system", "Use metric units."),
         Message("assistant", "Let me look.",
                 tool_calls=(ToolCall("toolu_1", "get_weather", '{"city": "Paris"}'),
                             ToolCall("toolu_2", "get_time", "")),
                 provider_data={"anthropic": {"thinking_blocks": [THINKING, REDACTED]},
                                "openai": {"ignored": True}}),
         Message("tool", "18 C", tool_call_id="toolu_1"),
         Message("tool", (TextPart("12:00"), ImagePart("https://example.com/clock.png")),
                 tool_call_id="toolu_2"),
         Message("user", "And tomorrow?"),
         Message("assistant", "", tool_calls=(ToolCall("toolu_3", "get_weather",
                                                       '{"city": "Paris", "day": 1}'),)),
         Message("tool", "20 C", tool_call_id="toolu_3"),
         Message("assistant", (TextPart("Sunny, "), TextPart("20 C.")), refusal=None),
         Message("user", "Thanks")),
        max_tokens=500, temperature=0.5, top_p=0.9, stop=("END", "\n\n"),
        tools=(Tool("get_weather", "The weather in a city",
                    {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]}),
               Tool("get_time")),
        tool_choice=NamedTool("get_weather"))
    assert sent(replay, provider, request) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 500,
        "stream": True,
        "system": "Be brief.\n\nUse metric units.",
        "temperature": 0.5,
        "top_p": 0.9,
        "stop_sequences": ["END", "\n\n"],
        "tools": [{"name": "get_weather", "description": "The weather in a city",
                   "input_schema": {"type": "object",
                                    "properties": {"city": {"type": "string"}},
                                    "required": ["city"]}},
                  {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in "},
                {"type": "text", "text": "these pictures?"},
                {"type": "image", "source": {"type": "url",
                                             "url": "https://example.com/cat.jpg"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG}}]},
            {"role": "assistant", "content": [
                THINKING, REDACTED,  # first, unchanged
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}]},
            {"role": "user", "content": [  # both results, then the user's next words
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [
                    {"type": "text", "text": "12:00"},
                    {"type": "image", "source": {"type": "url",
                                                 "url": "https://example.com/clock.png"}}]},
                {"type": "text", "text": "And tomorrow?"}]},
            {"role": "assistant", "content": [  # no text: no empty text block
                {"type": "tool_use", "id": "toolu_3", "name": "get_weather",
                 "input": {"city": "Paris", "day": 1}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_3", "content": "20 C"}]},
            {"role": "assistant", "content": "Sunny, 20 C."},  # text alone: a string
            {"role": "user", "content": "Thanks"}],
    }


def test_user_parts_after_tool_results_join_them(
        replay: ReplayServer, provider: AnthropicProvider) -> None:
    request = ChatRequest("claude-x", (
        Message("user", "Time?"),
        Message("assistant", "", tool_calls=(ToolCall("toolu_1", "now", "{}"),)),
        Message("tool", "", tool_call_id="toolu_1"),
        Message("user", (TextPart("Here:"), ImagePart("data:image/webp;base64,UklGRg=="))),
        Message("user", "and more")))
    assert sent(replay, provider, request)["messages"] == [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": ""},
            {"type": "text", "text": "Here:"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/webp",
                                         "data": "UklGRg=="}}]},
        {"role": "user", "content": "and more"}]  # only the first user message joins


def test_assistant_thinking_without_text(replay: ReplayServer,
                                         provider: AnthropicProvider) -> None:
    request = ChatRequest("claude-x", (
        Message("user", "hi"),
        Message("assistant", "", provider_data={"anthropic": {"thinking_blocks": [REDACTED]}}),
        Message("assistant", ""),
        Message("user", "go")))
    assert sent(replay, provider, request)["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [REDACTED]},  # no empty text block
        {"role": "assistant", "content": ""},  # as it came: Anthropic decides
        {"role": "user", "content": "go"}]


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}),
    ("required", {"type": "any"}),
    ("none", {"type": "none"}),
    (NamedTool("get_time"), {"type": "tool", "name": "get_time"}),
])
def test_tool_choice(replay: ReplayServer, provider: AnthropicProvider,
                     choice: str | NamedTool, expected: dict[str, Any]) -> None:
    request = ChatRequest("claude-x", (Message("user", "hi"),), tools=(Tool("get_time"),),
                          tool_choice=choice)
    body = sent(replay, provider, request)
    assert body["tool_choice"] == expected
    assert body["tools"] == [{"name": "get_time",
                              "input_schema": {"type": "object", "properties": {}}}]


def test_no_tool_choice_sends_none(replay: ReplayServer, provider: AnthropicProvider) -> None:
    request = ChatRequest("claude-x", (Message("user", "hi"),), tools=(Tool("get_time"),))
    assert "tool_choice" not in sent(replay, provider, request)


def test_thinking_budget_and_its_max_tokens(replay: ReplayServer,
                                            provider: AnthropicProvider) -> None:
    request = ChatRequest("claude-x", (Message("user", "hi"),), reasoning_budget=2048)
    body = sent(replay, provider, request)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["max_tokens"] == 2048 + DEFAULT_MAX_TOKENS  # more than the budget
    request = ChatRequest("claude-x", (Message("user", "hi"),), max_tokens=4096,
                          reasoning_budget=1024, reasoning_effort="high")
    body = sent(replay, provider, request)
    assert (body["thinking"], body["max_tokens"]) == (
        {"type": "enabled", "budget_tokens": 1024}, 4096)
    assert "reasoning_effort" not in body and "effort" not in json.dumps(body)


# ------------------------------------------------------------------------- check()


def refused(provider: AnthropicProvider, request: ChatRequest) -> tuple[str, str]:
    with pytest.raises(Unsupported) as raised:
        provider.check(request)
    return raised.value.param, raised.value.message


def ask(*messages: Message, **fields: Any) -> ChatRequest:
    return ChatRequest("claude-x", messages or (Message("user", "hi"),), **fields)


def test_check_refuses_seed_and_response_format(provider: AnthropicProvider) -> None:
    assert refused(provider, ask(seed=7)) == ("seed", "anthropic has no seed")
    assert refused(provider, ask(response_format={"type": "json_object"})) == (
        "response_format", "anthropic has no response_format")


def test_check_refuses_effort_without_a_budget(provider: AnthropicProvider) -> None:
    param, message = refused(provider, ask(reasoning_effort="high"))
    assert param == "reasoning.effort"
    assert "reasoning.budget_tokens" in message and "anthropic extended thinking" in message


def test_check_refuses_budgets_anthropic_rejects(provider: AnthropicProvider) -> None:
    assert refused(provider, ask(reasoning_budget=1023)) == (
        "reasoning.budget_tokens",
        "anthropic extended thinking takes a budget of at least 1024 tokens")
    for max_tokens in (2000, 1999):
        assert refused(provider, ask(reasoning_budget=2000, max_tokens=max_tokens)) == (
            "max_tokens",
            "anthropic extended thinking needs max_tokens greater than "
            "reasoning.budget_tokens")
    provider.check(ask(reasoning_budget=1024))
    provider.check(ask(reasoning_budget=2000, max_tokens=2001))


@pytest.mark.parametrize("url", [
    "data:image/svg+xml;base64,PHN2Zz4=",
    "data:image/bmp;base64,Qk0=",
    "data:image/png,rawbytes",  # not base64
    "data:;base64,AAAA",
])
def test_check_refuses_data_images_anthropic_cannot_take(provider: AnthropicProvider,
                                                         url: str) -> None:
    user = Message("user", (TextPart("look"), ImagePart(url)))
    param, message = refused(provider, ask(user))
    assert param == "messages.0.content.1.image_url.url"
    assert "image/jpeg, image/png, image/gif or image/webp" in message
    result = Message("tool", (ImagePart(url),), tool_call_id="toolu_1")
    assert refused(provider, ask(Message("user", "x"), result))[0] == (
        "messages.1.content.0.image_url.url")


@pytest.mark.parametrize("media_type", ["image/jpeg", "image/png", "image/gif", "image/webp"])
def test_check_takes_the_four_image_types_and_any_url(provider: AnthropicProvider,
                                                      media_type: str) -> None:
    provider.check(ask(Message("user", (ImagePart(f"data:{media_type};base64,AAAA"),
                                        ImagePart("https://example.com/x.svg")))))


@pytest.mark.parametrize("arguments", ["[1, 2]", "not json", '"text"', "1", "null", "{"])
def test_check_refuses_arguments_that_are_not_a_json_object(
        provider: AnthropicProvider, arguments: str) -> None:
    assistant = Message("assistant", "", tool_calls=(ToolCall("a", "f", "{}"),
                                                     ToolCall("b", "f", arguments)))
    param, message = refused(provider, ask(Message("system", "s"), Message("user", "u"),
                                           assistant))
    assert param == "messages.2.tool_calls.1.function.arguments"
    assert message == "anthropic takes a tool call's arguments as a JSON object"


def test_check_takes_empty_arguments(provider: AnthropicProvider) -> None:
    provider.check(ask(Message("user", "u"),
                       Message("assistant", "", tool_calls=(ToolCall("a", "f", ""),))))


@pytest.mark.parametrize("provider_data", [
    {"anthropic": "blocks"},
    {"anthropic": {"thinking_blocks": {"type": "thinking"}}},
    {"anthropic": {"thinking_blocks": ["thinking"]}},
    {"anthropic": {"thinking_blocks": [THINKING, {"type": "text", "text": "x"}]}},
    {"anthropic": {"thinking_blocks": [{"thinking": "no type"}]}},
])
def test_check_refuses_thinking_blocks_that_are_not_thinking_blocks(
        provider: AnthropicProvider, provider_data: dict[str, Any]) -> None:
    assistant = Message("assistant", "x", provider_data=provider_data)
    param, message = refused(provider, ask(Message("user", "u"), assistant))
    assert param == "messages.1.provider_data"
    assert "thinking and redacted_thinking blocks" in message


@pytest.mark.parametrize("provider_data", [
    None, {}, {"openai": {"anything": 1}}, {"anthropic": {}},
    {"anthropic": {"thinking_blocks": []}},
    {"anthropic": {"thinking_blocks": [THINKING, REDACTED]}},
])
def test_check_takes_thinking_blocks_given_back(provider: AnthropicProvider,
                                               provider_data: dict[str, Any] | None) -> None:
    provider.check(ask(Message("user", "u"), Message("assistant", "x",
                                                     provider_data=provider_data)))


def test_check_takes_every_other_field(provider: AnthropicProvider) -> None:
    provider.check(ask(max_tokens=10, temperature=0.2, top_p=0.5, stop=("x",),
                       tools=(Tool("f", "d", {"type": "object"}),), tool_choice="required"))
