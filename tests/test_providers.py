"""The adapters, driven directly: real SDKs against the fake provider, no gunicorn."""

from __future__ import annotations

import re
import time
import tracemalloc
from collections.abc import Iterator
from itertools import islice
from typing import Any

import pytest

from sse_gateway.providers.anthropic import AnthropicProvider
from sse_gateway.providers.base import (
    ChatRequest,
    Finished,
    Message,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    UpstreamAuth,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
    Usage,
    error_for_status,
)
from sse_gateway.providers.demo import DemoProvider
from sse_gateway.providers.openai import OpenAIProvider
from sse_gateway.providers.sdk import POOL_STREAMS
from tests.fake_provider import FakeProvider

HTTP: dict[str, Any] = {"max_connections": 10, "connect_timeout": 2.0}


@pytest.fixture
def providers(fake: FakeProvider) -> Iterator[dict[str, Any]]:
    built = {
        "openai": OpenAIProvider(api_key="sk-x", base_url=f"{fake.url}/v1", **HTTP),
        "anthropic": AnthropicProvider(api_key="sk-ant-x", base_url=fake.url,
                                       default_max_tokens=100, **HTTP),
    }
    yield built
    for provider in built.values():
        provider.close()


def request(model: str) -> ChatRequest:
    return ChatRequest(model, (Message("user", "hi"),))


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_deltas_in_order(fake: FakeProvider, providers: dict[str, Any], name: str) -> None:
    model = fake.scenario(tokens=["a", "b\n", "😀"], input_tokens=3, output_tokens=4)
    deltas = list(providers[name].stream(request(model)))
    texts = [d.text for d in deltas if isinstance(d, TextDelta)]
    assert texts == ["a", "b\n", "😀"]
    if name == "anthropic":  # it reports its cache counts (0 here) and its own stop word
        assert deltas[-2:] == [Usage(3, 4, 0, 0), Finished("stop", "end_turn")]
    else:  # the fake reports OpenAI's cached and reasoning tokens (0 each)
        assert deltas[-2:] == [Usage(3, 4, 0, None, 0), Finished("stop", "stop")]


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_streams_take_the_pools_in_turn_and_reuse_their_connections(
        fake: FakeProvider, name: str) -> None:
    """Room for 2 x POOL_STREAMS streams: two pools; each finished stream leaves its
    connection in its pool for that pool's next stream."""
    http = {"max_connections": 2 * POOL_STREAMS, "connect_timeout": 2.0}
    provider = (OpenAIProvider(api_key="sk-x", base_url=f"{fake.url}/v1", **http)
                if name == "openai" else
                AnthropicProvider(api_key="sk-ant-x", base_url=fake.url,
                                  default_max_tokens=100, **http))
    try:
        model = fake.scenario(tokens=["a"])
        for _ in range(4):
            assert TextDelta("a") in list(provider.stream(request(model)))
        peers = [call.peer for call in fake.calls(model)]
        assert [call.outcome for call in fake.calls(model)] == ["complete"] * 4
        assert peers[0] == peers[2] and peers[1] == peers[3] and peers[0] != peers[1], peers
    finally:
        provider.close()


@pytest.mark.parametrize("name", ["openai", "anthropic"])
@pytest.mark.parametrize(("status", "cls", "retryable"), [
    (429, UpstreamRateLimited, True), (500, UpstreamUnavailable, True),
    (503, UpstreamUnavailable, True), (401, UpstreamAuth, False),
    (403, UpstreamAuth, False), (400, UpstreamBadRequest, False),
    (404, UpstreamBadRequest, False), (409, UpstreamError, True),
])
def test_http_status_maps_to_the_error_tree(
        fake: FakeProvider, providers: dict[str, Any], name: str, status: int,
                                            cls: type[ProviderError], retryable: bool) -> None:
    model = fake.scenario(status=status, retry_after=3 if status == 429 else None)
    with pytest.raises(ProviderError) as raised:
        list(providers[name].stream(request(model)))
    error = raised.value
    assert type(error) is cls
    assert (error.code, error.retryable, error.status_code, error.provider) == (
        cls.code, retryable, status, name)
    assert error.retry_after == (3.0 if status == 429 else None)
    assert error.message.startswith(f"{name} ") and f"(HTTP {status})" in error.message


def test_anthropic_529_is_unavailable(fake: FakeProvider, providers: dict[str, Any]) -> None:
    model = fake.scenario(status=529)
    with pytest.raises(UpstreamUnavailable, match=r"anthropic is overloaded \(HTTP 529\)"):
        list(providers["anthropic"].stream(request(model)))


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_dropped_connection_mid_stream(
        fake: FakeProvider, providers: dict[str, Any], name: str) -> None:
    model = fake.scenario(tokens=["a", "b", "c"], drop_after=1)
    seen = []
    with pytest.raises(UpstreamUnavailable, match=f"the connection to {name} failed"):
        for delta in providers[name].stream(request(model)):
            seen.append(delta)
    assert seen == [TextDelta("a")]


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_closing_the_iterator_closes_the_provider_connection(
        fake: FakeProvider, providers: dict[str, Any], name: str) -> None:
    model = fake.scenario(tokens=[f"t{i}" for i in range(100)], delay=0.05)
    stream = providers[name].stream(request(model))
    assert next(stream) == TextDelta("t0")
    stream.close()
    assert fake.wait_closed(model, timeout=5).outcome == "peer_closed"


def test_unreachable_provider() -> None:
    provider = OpenAIProvider(api_key="sk-x", base_url="http://127.0.0.1:9/v1", **HTTP)
    with pytest.raises(UpstreamUnavailable, match="the connection to openai failed"):
        list(provider.stream(request("gpt-x")))
    provider.close()


def test_availability_follows_the_keys() -> None:
    built = [OpenAIProvider(api_key="", base_url="", **HTTP),
             OpenAIProvider(api_key="", base_url="http://127.0.0.1:9/v1", **HTTP),
             AnthropicProvider(api_key="", base_url="", default_max_tokens=1, **HTTP)]
    assert [p.available for p in built] == [False, True, False]
    for provider in built:
        provider.close()


@pytest.mark.parametrize(("status", "cls"), [
    (408, UpstreamTimeout), (413, UpstreamBadRequest), (422, UpstreamBadRequest),
    (502, UpstreamUnavailable), (529, UpstreamUnavailable), (418, UpstreamError),
])
def test_error_for_status_table(status: int, cls: type[ProviderError]) -> None:
    assert error_for_status(status) is cls


def test_demo_provider() -> None:
    demo = DemoProvider(ttft_s=0, token_delay_s=0)
    deltas = list(demo.stream(ChatRequest("echo", (Message("system", "s"),
                                                   Message("user", "one two  three")))))
    assert [d.text for d in deltas if isinstance(d, TextDelta)] == ["one ", "two  ", "three"]
    assert deltas[-2:] == [Usage(4, 3), Finished("stop", "stop")]
    deltas = list(demo.stream(ChatRequest("echo", (Message("user", "a b c"),), max_tokens=2)))
    assert [d.text for d in deltas if isinstance(d, TextDelta)] == ["a ", "b "]
    assert deltas[-1] == Finished("length", "length")
    with pytest.raises(UpstreamBadRequest):
        list(demo.stream(ChatRequest("nope", (Message("user", "x"),))))
    deltas = list(demo.stream(ChatRequest("echo", (Message("user", "a b"),), max_tokens=2)))
    assert [d.text for d in deltas if isinstance(d, TextDelta)] == ["a ", "b"]
    assert deltas[-2:] == [Usage(2, 2), Finished("stop", "stop")]  # exactly the limit: not cut
    deltas = list(demo.stream(ChatRequest("lorem", (Message("user", "x"),), max_tokens=3)))
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == "lorem ipsum dolor"
    assert deltas[-2:] == [Usage(1, 3), Finished("stop", "stop")]


def test_demo_tools_calls_get_time_then_answers_with_its_result() -> None:
    demo = DemoProvider(ttft_s=0, token_delay_s=0)
    question = (Message("system", "Be brief."), Message("user", "What time is it?"))
    deltas = list(demo.stream(ChatRequest("tools", question)))
    start = deltas[9]
    assert isinstance(start, ToolCallStart)
    assert re.fullmatch(r"call_[0-9a-f]{24}", start.id)
    assert deltas == [
        *map(ReasoningDelta, ["The ", "user ", "wants ", "the ", "time; ", "I ", "will ",
                              "call ", "get_time."]),
        ToolCallStart(0, start.id, "get_time"),
        ToolCallDelta(0, '{"time'), ToolCallDelta(0, 'zone":'), ToolCallDelta(0, ' "UTC"}'),
        ToolCallEnd(0),
        Usage(6, 12, reasoning_tokens=9),
        Finished("tool_calls", "tool_calls"),
    ]
    # Another call: another id.
    again = list(demo.stream(ChatRequest("tools", question)))
    assert again[9] != start and again[9].name == "get_time"  # type: ignore[union-attr]
    # A zone named in the prompt is the argument.
    deltas = list(demo.stream(ChatRequest("tools", (
        Message("user", "Time in America/Argentina/Buenos_Aires, please"),))))
    assert "".join(d.text for d in deltas if isinstance(d, ReasoningDelta)) == (
        "The user wants the time in America/Argentina/Buenos_Aires; I will call get_time.")
    assert "".join(d.arguments for d in deltas if isinstance(d, ToolCallDelta)) == (
        '{"timezone": "America/Argentina/Buenos_Aires"}')
    assert sum(isinstance(d, ToolCallDelta) for d in deltas) == 3
    # The tool's result comes back: the answer quotes it.
    call = ToolCall(start.id, "get_time", '{"timezone": "UTC"}')
    follow_up = (*question, Message("assistant", "", tool_calls=(call,)),
                 Message("tool", "2030-01-02T03:04:05.678Z", tool_call_id=start.id))
    deltas = list(demo.stream(ChatRequest("tools", follow_up)))
    assert deltas == [TextDelta("It "), TextDelta("is "), TextDelta("2030-01-02T03:04:05.678Z "),
                      TextDelta("right "), TextDelta("now."), Usage(7, 5),
                      Finished("stop", "stop")]
    deltas = list(demo.stream(ChatRequest("tools", follow_up, max_tokens=2)))
    assert deltas == [TextDelta("It "), TextDelta("is "), Usage(7, 2),
                      Finished("length", "length")]
    # A conversation that does not end with a tool's result (or is empty) asks again.
    for messages in ((*follow_up, Message("user", "And now?")), ()):
        deltas = list(demo.stream(ChatRequest("tools", messages)))
        assert deltas[-1] == Finished("tool_calls", "tool_calls")
        assert "".join(d.arguments for d in deltas if isinstance(d, ToolCallDelta)) == (
            '{"timezone": "UTC"}')


def test_demo_tools_keeps_the_cadence() -> None:
    """The time to first output, then the token delay between outputs (measured on
    the generator: each ``next`` is one sleep)."""
    demo = DemoProvider(ttft_s=0.05, token_delay_s=0.02)
    deltas = demo.stream(ChatRequest("tools", (Message("user", "x"),)))
    began = time.monotonic()
    next(deltas)
    first = time.monotonic() - began
    rest = list(deltas)
    total = time.monotonic() - began
    outputs = 1 + sum(not isinstance(d, Usage | Finished) for d in rest)
    assert outputs == 14
    assert 0.05 <= first < 0.05 + 0.2
    assert 0.05 + 13 * 0.02 <= total < 0.05 + 13 * 0.02 + 0.5


def test_demo_provider_costs_little_memory_at_any_prompt_size() -> None:
    """A 1 MiB prompt of one-letter words is 524,288 tokens: the provider holds
    them one at a time (a list of them all would be ~30 MiB for the whole stream).
    128 KiB here (a list: ~4 MiB), as each token sleeps (0 s: a yield)."""
    prompt = "a " * (64 * 1024)
    words = len(prompt) // 2
    demo = DemoProvider(ttft_s=0, token_delay_s=0)
    deltas = demo.stream(ChatRequest("echo", (Message("user", prompt),)))
    peaks = []
    tracemalloc.start()
    try:
        assert next(deltas) == TextDelta("a ")  # the first token: nothing built ahead
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert sum(isinstance(d, TextDelta) for d in islice(deltas, words - 1)) == words - 1
        tracemalloc.start()
        assert next(deltas) == Usage(words, words)  # counted without a list either
        peaks.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
    assert list(deltas) == [Finished("stop", "stop")]
    assert max(peaks) < 64 * 1024, f"the demo provider peaked at {peaks} bytes"
