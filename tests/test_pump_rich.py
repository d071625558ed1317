"""Everything a model streams, through the pump in process (memory broker, scripted
providers, fake clock): reasoning, refusals, tool calls, provider data, usage, what is
not relayed, and the rules that protect the bill for every kind of output."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sse_gateway.events import Event
from sse_gateway.providers.base import (
    Finished,
    Output,
    ProviderData,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Unrelayed,
    Usage,
)
from sse_gateway.pump.state import Outcome, StreamState
from sse_gateway.results import assemble
from tests.test_pump import SID, Block, World, down, terminal

THINKING = {"type": "thinking", "thinking": "Let me see. 2+2", "signature": "c2ln"}
REDACTED = {"type": "redacted_thinking", "data": "ZW5j"}

# One answer with every kind of output, as an adapter yields it.
EVERYTHING: list[Any] = [
    ReasoningDelta("Let me see."), ReasoningDelta(" 2+2"),
    ProviderData("anthropic", "thinking_blocks", THINKING),
    ProviderData("anthropic", "thinking_blocks", REDACTED),
    TextDelta("I'll check"), TextDelta(" both."),
    Unrelayed("citations"),
    ToolCallStart(0, "call_a", "get_weather"), ToolCallDelta(0, '{"city": "Par'),
    ToolCallDelta(0, 'is"}'), ToolCallEnd(0),
    ToolCallStart(1, "call_b", "get_time"), ToolCallDelta(1, "{}"), ToolCallEnd(1),
    Unrelayed("citations"), Unrelayed("server_tool_use"),
    Usage(10, 1, cache_read_input_tokens=4, cache_creation_input_tokens=0),
    Usage(10423, 55, reasoning_tokens=12),  # cumulative final figures win
    Finished("tool_calls", "tool_use"),
]

EXPECTED_OUTPUT = [
    ("reasoning", {"content": "Let me see."}),
    ("reasoning", {"content": " 2+2"}),
    ("token", {"content": "I'll check"}),
    ("token", {"content": " both."}),
    ("tool_call", {"index": 0, "id": "call_a", "name": "get_weather"}),
    ("tool_call_delta", {"index": 0, "arguments": '{"city": "Par'}),
    ("tool_call_delta", {"index": 0, "arguments": 'is"}'}),
    ("tool_call_done", {"index": 0, "id": "call_a", "name": "get_weather",
                        "arguments": '{"city": "Paris"}'}),
    ("tool_call", {"index": 1, "id": "call_b", "name": "get_time"}),
    ("tool_call_delta", {"index": 1, "arguments": "{}"}),
    ("tool_call_done", {"index": 1, "id": "call_b", "name": "get_time", "arguments": "{}"}),
]

EXPECTED_MESSAGE = {
    "role": "assistant", "content": "I'll check both.",
    "tool_calls": [
        {"id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ],
    "reasoning": "Let me see. 2+2", "refusal": None,
    "provider_data": {"anthropic": {"thinking_blocks": [THINKING, REDACTED]}},
}


def stored(world: World) -> list[Event]:
    return list(world.broker.read(SID, -1, 0).events)


def test_every_kind_of_output_is_relayed_in_order_and_done_says_the_rest() -> None:
    world = World()
    ended: list[tuple[StreamState, Outcome]] = []
    anthropic = world.provider("anthropic", EVERYTHING)
    events = world.run(world.pump(("anthropic/c", anthropic),
                                  on_end=lambda s, o: ended.append((s, o))))
    assert events[1:-1] == EXPECTED_OUTPUT
    name, done = terminal(events)
    assert name == "done"
    assert done == {
        "finish_reason": "tool_calls", "provider_finish_reason": "tool_use",
        "model": "anthropic/c",
        "usage": {"input_tokens": 10423, "output_tokens": 55, "cache_read_input_tokens": 4,
                  "cache_creation_input_tokens": 0, "reasoning_tokens": 12},
        "metrics": done["metrics"],
        "provider_data": {"anthropic": {"thinking_blocks": [THINKING, REDACTED]}},
    }
    # The producer's own assembly (completion hooks) and the one from the stored
    # events (status route, another host) agree, to the byte.
    (state, _), = ended
    assert state.message().public() == EXPECTED_MESSAGE
    assert assemble(stored(world)).public() == EXPECTED_MESSAGE
    assert anthropic.requests == 1


def test_what_is_not_relayed_is_counted_and_named_in_the_end_log_line(
        caplog: pytest.LogCaptureFixture) -> None:
    world = World()
    caplog.set_level(logging.INFO, logger="sse_gateway.pump")
    world.run(world.pump(("anthropic/c", world.provider("anthropic", EVERYTHING))))
    line, = [r for r in caplog.records if r.getMessage().startswith("stream public ended")]
    assert line.unrelayed == "citations:2,server_tool_use:1"  # type: ignore[attr-defined]


def test_nothing_unrelayed_logs_none(caplog: pytest.LogCaptureFixture) -> None:
    world = World()
    caplog.set_level(logging.INFO, logger="sse_gateway.pump")
    world.run(world.pump(("openai/a", world.provider("openai", [TextDelta("a")]))))
    line, = [r for r in caplog.records if r.getMessage().startswith("stream public ended")]
    assert line.unrelayed is None  # type: ignore[attr-defined]


def test_a_streamed_refusal_ends_done_with_refusal() -> None:
    """OpenAI streams a refusal in ``delta.refusal`` and ends it with "stop"."""
    world = World()
    openai = world.provider("openai", [RefusalDelta("I'm sorry, "), RefusalDelta("I can't."),
                                       Finished("stop", "stop")])
    events = world.run(world.pump(("openai/a", openai)))
    assert events[1:-1] == [("refusal", {"content": "I'm sorry, "}),
                            ("refusal", {"content": "I can't."})]
    assert (terminal(events)[1]["finish_reason"],
            terminal(events)[1]["provider_finish_reason"]) == ("refusal", "stop")
    assert assemble(stored(world)).refusal == "I'm sorry, I can't."


def test_usage_keeps_only_what_was_reported() -> None:
    world = World()
    events = world.run(world.pump(("openai/a", world.provider("openai", [
        TextDelta("a"), Usage(reasoning_tokens=0), Finished("stop", "stop")]))))
    assert terminal(events)[1]["usage"] == {"input_tokens": None, "output_tokens": None,
                                            "reasoning_tokens": 0}


FIRST_OUTPUTS: list[Output] = [ReasoningDelta("hm"), RefusalDelta("no"),
                               ToolCallStart(0, "call_a", "f")]


@pytest.mark.parametrize("first", FIRST_OUTPUTS, ids=lambda o: type(o).__name__)
def test_any_output_is_the_first_token_and_nothing_is_retried_after_it(first: Output) -> None:
    """A failure after reasoning (or a refusal, or a tool call) began ends the stream:
    the provider is asked once, the fallback never."""
    world = World()
    openai = world.provider("openai", [first, down("openai")])
    fallback = world.provider("anthropic", [TextDelta("hi")])
    events = world.run(world.pump(("openai/a", openai), ("anthropic/b", fallback)))
    assert terminal(events)[0] == "error"
    assert terminal(events)[1]["code"] == "upstream_unavailable"
    assert (openai.requests, fallback.requests) == (1, 0)


def test_a_long_think_is_not_silence() -> None:
    """Reasoning deltas every 50 s for 10 minutes, under a 60 s time to first token and
    a 60 s silence limit: one request, and the answer arrives."""
    world = World()
    thinking: list[Any] = []
    for _ in range(12):
        thinking += [50.0, ReasoningDelta("...")]
    openai = world.provider("openai", [*thinking, 50.0, TextDelta("42"),
                                       Finished("stop", "stop")])
    events = world.run(world.pump(("openai/a", openai), ttft_timeout_s=60.0,
                                  token_timeout_s=60.0, stream_timeout_s=1800.0))
    assert [name for name, _ in events].count("reasoning") == 12
    assert terminal(events)[0] == "done"
    assert openai.requests == 1
    assert world.elapsed() == 650.0


def test_reasoning_that_stops_is_silence_after_the_token_timeout() -> None:
    world = World()
    openai = world.provider("openai", [ReasoningDelta("hm"), Block()])
    events = world.run(world.pump(("openai/a", openai), token_timeout_s=7.0))
    assert terminal(events)[1]["code"] == "upstream_timeout"
    assert world.elapsed() == 7.0
    assert openai.requests == 1


def test_a_cancelled_answer_assembles_as_far_as_it_got() -> None:
    """A tool call cut off by the end: it is in the message with the arguments so far,
    and no tool_call_done was sent for it."""
    world = World()
    openai = world.provider("openai", [ToolCallStart(0, "call_a", "f"),
                                       ToolCallDelta(0, '{"a": '), down("openai")])
    events = world.run(world.pump(("openai/a", openai)))
    assert "tool_call_done" not in [name for name, _ in events]
    message = assemble(stored(world))
    assert message.tool_calls == [{"id": "call_a", "type": "function",
                                   "function": {"name": "f", "arguments": '{"a": '}}]
    assert message.provider_data is None


def test_a_tool_call_started_twice_is_a_bug_of_the_adapter() -> None:
    state = StreamState("p", "openai/a", "openai", 1.0)
    state.output(ToolCallStart(0, "a", "f"), 1.0)
    with pytest.raises(ValueError, match="started twice"):
        state.output(ToolCallStart(0, "b", "g"), 1.0)
