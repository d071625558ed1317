"""The OpenAI dialect in process: scripted gateway events rendered as chat.completion.chunk
events (exact bytes), assembled as a chat.completion, and OpenAI request bodies mapped
onto the gateway's own."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sse_gateway import events as ev
from sse_gateway.events import Event
from sse_gateway.transports import dialects, openai_request
from sse_gateway.transports.openai_chunks import OPENAI, OPENAI_USAGE, ChunkRenderer, Completion
from sse_gateway.transports.sse import Decoder
from sse_gateway.validation import InvalidBody

ENVELOPE = ('{"id":"chatcmpl-s1","object":"chat.completion.chunk","created":1700000000,'
            '"model":"openai/gpt-x","system_fingerprint":null,')
USAGE = {"input_tokens": 12, "output_tokens": 5, "cache_read_input_tokens": 4,
         "reasoning_tokens": 2}


def start() -> Event:
    return ev.start(0, "s1", "openai/gpt-x", 1700000000.75)


def done(event_id: int, reason: str = "stop", usage: dict[str, Any] | None = None) -> Event:
    return ev.done(event_id, finish_reason=reason, model="openai/gpt-x",
                   usage=USAGE if usage is None else usage, metrics={})


def chunk(delta: str, finish: str = "null") -> str:
    return (ENVELOPE + '"choices":[{"index":0,"delta":' + delta
            + ',"logprobs":null,"finish_reason":' + finish + "}]}")


def framed(*items: tuple[int | None, str]) -> bytes:
    out = ""
    for event_id, data in items:
        out += (f"id: {event_id}\n" if event_id is not None else "") + f"data: {data}\n\n"
    return out.encode()


ROLE = '{"role":"assistant","content":"","refusal":null}'


def render(events: list[Event], include_usage: bool = False) -> bytes:
    renderer = ChunkRenderer(include_usage)
    return renderer.render(events)


def test_text_then_finish_and_done_without_usage() -> None:
    out = render([start(), ev.token(1, "Hel"), ev.token(2, 'lo "\n'), done(3)])
    assert out == framed((0, chunk(ROLE)), (1, chunk('{"content":"Hel"}')),
                         (2, chunk('{"content":"lo \\"\\n"}')),
                         (3, chunk("{}", '"stop"'))) + b"data: [DONE]\n\n"


def test_usage_chunk_only_with_include_usage() -> None:
    out = render([start(), ev.token(1, "x"), done(2, "length")], include_usage=True)
    usage = ('{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,'
             '"prompt_tokens_details":{"cached_tokens":4},'
             '"completion_tokens_details":{"reasoning_tokens":2}}')
    assert out == framed((0, chunk(ROLE)), (1, chunk('{"content":"x"}')),
                         (2, chunk("{}", '"length"')),
                         (2, ENVELOPE + '"choices":[],"usage":' + usage + "}")
                         ) + b"data: [DONE]\n\n"


def test_unreported_usage_figures_stay_null_and_details_zero() -> None:
    out = render([start(), done(1, usage={"input_tokens": None, "output_tokens": 3})], True)
    last = Decoder().feed(out)[-2].json()
    assert last["usage"] == {"prompt_tokens": None, "completion_tokens": 3, "total_tokens": None,
                             "prompt_tokens_details": {"cached_tokens": 0},
                             "completion_tokens_details": {"reasoning_tokens": 0}}


def test_reasoning_and_refusal_deltas_and_refusal_finishes_as_stop() -> None:
    out = render([start(), ev.reasoning(1, "think"), ev.refusal(2, "I can't"),
                  done(3, "refusal")])
    assert out == framed((0, chunk(ROLE)), (1, chunk('{"reasoning_content":"think"}')),
                         (2, chunk('{"refusal":"I can\'t"}')),
                         (3, chunk("{}", '"stop"'))) + b"data: [DONE]\n\n"


@pytest.mark.parametrize(("ours", "theirs"), [("tool_calls", "tool_calls"),
                                              ("content_filter", "content_filter"),
                                              ("other", "stop")])
def test_finish_reasons(ours: str, theirs: str) -> None:
    assert chunk("{}", f'"{theirs}"').encode() in render([start(), done(1, ours)])


def test_parallel_tool_calls_are_numbered_as_they_start_and_done_renders_nothing() -> None:
    events = [start(), ev.tool_call(1, 3, "call_a", "get_weather"),
              ev.tool_call_delta(2, 3, '{"ci'), ev.tool_call(3, 7, "call_b", "get_time"),
              ev.tool_call_delta(4, 7, "{}"), ev.tool_call_delta(5, 3, 'ty": "Paris"}'),
              ev.tool_call_done(6, 3, "call_a", "get_weather", '{"city": "Paris"}'),
              ev.tool_call_done(7, 7, "call_b", "get_time", "{}"), done(8, "tool_calls")]
    out = render(events)
    first = ('{"tool_calls":[{"index":0,"id":"call_a","type":"function",'
             '"function":{"name":"get_weather","arguments":""}}]}')
    second = ('{"tool_calls":[{"index":1,"id":"call_b","type":"function",'
              '"function":{"name":"get_time","arguments":""}}]}')
    assert out == framed(
        (0, chunk(ROLE)), (1, chunk(first)),
        (2, chunk('{"tool_calls":[{"index":0,"function":{"arguments":"{\\"ci"}}]}')),
        (3, chunk(second)),
        (4, chunk('{"tool_calls":[{"index":1,"function":{"arguments":"{}"}}]}')),
        (5, chunk('{"tool_calls":[{"index":0,"function":{"arguments":"ty\\": \\"Paris\\"}"}}]}')),
        (8, chunk("{}", '"tool_calls"'))) + b"data: [DONE]\n\n"


def test_an_error_is_an_error_chunk_and_nothing_follows() -> None:
    out = render([start(), ev.token(1, "a"),
                  ev.error(2, "upstream_rate_limited", "slow down", provider="openai")])
    assert out == framed((0, chunk(ROLE)), (1, chunk('{"content":"a"}')),
                         (2, '{"error":{"message":"slow down","type":"rate_limit_error",'
                             '"code":"upstream_rate_limited","param":null}}'))


def test_an_unnumbered_error_has_no_id() -> None:
    out = render([ev.store_unreachable("openai")])
    assert out == (b'data: {"error":{"message":"the stream store is unreachable; resume later",'
                   b'"type":"server_error","code":"internal_error","param":null}}\n\n')


def test_cancelled_is_an_error_chunk_with_code_cancelled() -> None:
    out = render([start(), ev.cancelled(1, "deleted")])
    assert out.endswith(framed((1, '{"error":{"message":"the stream was cancelled (deleted)",'
                                   '"type":"cancelled","code":"cancelled","param":null}}')))
    assert b"[DONE]" not in out


def test_a_resume_primed_with_history_renders_what_an_unbroken_reader_got() -> None:
    events = [start(), ev.tool_call(1, 5, "c1", "f"), ev.tool_call_delta(2, 5, "{"),
              ev.tool_call(3, 9, "c2", "g"), ev.tool_call_delta(4, 9, "[]"),
              ev.tool_call_delta(5, 5, "}"), done(6, "tool_calls")]
    whole = render(events, True)
    for position in range(len(events)):
        resumed = dialects.renderer(OPENAI_USAGE)
        assert resumed.needs_history
        resumed.prime(events[:position + 1])
        after = resumed.render(events[position + 1:])
        assert whole.endswith(after)
        assert len(Decoder().feed(after)) == len(Decoder().feed(whole)) - (
            len(Decoder().feed(render(events[:position + 1], True))))


def test_the_two_dialects_are_registered() -> None:
    assert not dialects.renderer(OPENAI).include_usage  # type: ignore[attr-defined]
    assert dialects.renderer(OPENAI_USAGE).include_usage  # type: ignore[attr-defined]
    assert dialects.renderer(OPENAI).open(1500) == b"retry: 1500\n"
    assert dialects.renderer(OPENAI).ping() == b": ping\n"


# -- stream: false --------------------------------------------------------------------------

def test_a_completion_with_text_reasoning_and_tool_calls() -> None:
    completion = Completion()
    completion.add([start(), ev.reasoning(1, "hm"), ev.token(2, "Sure"),
                    ev.tool_call(3, 1, "c2", "g"), ev.tool_call(4, 0, "c1", "f"),
                    ev.tool_call_delta(5, 1, "{}"), ev.tool_call_delta(6, 0, "[]"),
                    ev.tool_call_done(7, 1, "c2", "g", "{}"),
                    ev.tool_call_done(8, 0, "c1", "f", "[]"), done(9, "tool_calls")])
    assert completion.ended and completion.status == 200
    assert completion.body() == {
        "id": "chatcmpl-s1", "object": "chat.completion", "created": 1700000000,
        "model": "openai/gpt-x", "system_fingerprint": None,
        "choices": [{"index": 0, "message": {
            "role": "assistant", "content": "Sure", "refusal": None,
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "f", "arguments": "[]"}},
                           {"id": "c2", "type": "function",
                            "function": {"name": "g", "arguments": "{}"}}],
            "reasoning_content": "hm"}, "logprobs": None, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
                  "prompt_tokens_details": {"cached_tokens": 4},
                  "completion_tokens_details": {"reasoning_tokens": 2}}}


def test_a_refusal_completion_has_null_content() -> None:
    completion = Completion()
    completion.add([start(), ev.refusal(1, "No."), done(2, "refusal")])
    message = completion.body()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": None, "refusal": "No."}
    assert completion.body()["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(("code", "status", "kind"), [
    ("upstream_rate_limited", 429, "rate_limit_error"),
    ("upstream_bad_request", 400, "invalid_request_error"),
    ("upstream_auth", 502, "server_error"),
    ("upstream_timeout", 504, "server_error"),
    ("upstream_unavailable", 502, "server_error"),
    ("upstream_error", 502, "server_error"),
    ("stream_lost", 502, "server_error"),
    ("internal_error", 500, "server_error"),
])
def test_a_failed_completion_answers_the_error_with_a_status(code: str, status: int,
                                                             kind: str) -> None:
    completion = Completion()
    completion.add([start(), ev.token(1, "a"), ev.error(2, code, "it broke", provider="p")])
    assert (completion.ended, completion.status) == (True, status)
    assert completion.body() == {"error": {"message": "it broke", "type": kind, "code": code,
                                           "param": None}}


def test_a_cancelled_completion_answers_499() -> None:
    completion = Completion()
    completion.add([start(), ev.cancelled(1, "deleted")])
    assert completion.status == 499
    assert completion.body()["error"]["code"] == "cancelled"


# -- requests ---------------------------------------------------------------------------------

def parse(body: dict[str, Any]) -> openai_request.ChatCompletionRequest:
    return openai_request.parse(json.dumps(body).encode())


MESSAGES = [{"role": "user", "content": "hi"}]


def test_a_full_openai_body_is_mapped() -> None:
    asked = parse({"model": "openai/x", "messages": [
        {"role": "developer", "content": "be brief"}, *MESSAGES,
        {"role": "assistant", "content": None, "reasoning_content": "r", "refusal": None,
         "tool_calls": [{"id": "c", "type": "function",
                         "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"}],
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto",
        "reasoning_effort": "low", "response_format": {"type": "json_object"}, "stop": ["x"],
        "top_p": 0.5, "seed": 3, "max_completion_tokens": 9, "temperature": 0.2,
        "stream": True, "stream_options": {"include_usage": True}, "metadata": {"a": "b"},
        "user": "u1", "n": 1, "parallel_tool_calls": True, "logprobs": False,
        "frequency_penalty": None})
    assert asked.stream and asked.include_usage
    assert asked.body["messages"][0] == {"role": "system", "content": "be brief"}
    assert asked.body["messages"][2]["reasoning"] == "r"
    assert "reasoning_content" not in asked.body["messages"][2]
    assert asked.body["reasoning"] == {"effort": "low"}
    assert asked.body["max_tokens"] == 9
    assert asked.renamed == {"reasoning.effort": "reasoning_effort",
                             "max_tokens": "max_completion_tokens"}
    for key in ("stream", "stream_options", "user", "n", "parallel_tool_calls", "logprobs",
                "max_completion_tokens", "reasoning_effort", "frequency_penalty"):
        assert key not in asked.body


def test_defaults() -> None:
    asked = parse({"model": "demo/echo", "messages": MESSAGES})
    assert (asked.stream, asked.include_usage) == (False, False)
    assert asked.body == {"model": "demo/echo", "messages": MESSAGES}


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"frequency_penalty": 0.5}, "frequency_penalty", "frequency_penalty: unknown field"),
    ({"n": 2}, "n", "n: only 1 is supported here"),
    ({"n": True}, "n", "n: only 1 is supported here"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls",
     "parallel_tool_calls: only true is supported here"),
    ({"logprobs": True}, "logprobs", "logprobs: only false is supported here"),
    ({"stream": "yes"}, "stream", "stream: Input should be a valid boolean"),
    ({"stream_options": {"include_usage": True}}, "stream_options",
     "stream_options: only allowed when stream is true"),
    ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage",
     "stream_options.include_usage: Input should be a valid boolean"),
    ({"stream": True, "stream_options": {"x": True}}, "stream_options.x",
     "stream_options.x: unknown field"),
    ({"stream": True, "stream_options": []}, "stream_options",
     "stream_options: Input should be a valid dictionary"),
    ({"max_tokens": 3, "max_completion_tokens": 3}, "max_completion_tokens",
     "max_completion_tokens: give max_tokens or max_completion_tokens, not both"),
    ({"reasoning_effort": "low", "reasoning": {"effort": "low"}}, "reasoning_effort",
     "reasoning_effort: give reasoning_effort or reasoning, not both"),
    ({"user": 5}, "user", "user: Input should be a valid string"),
])
def test_refusals_name_the_field(body: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(InvalidBody) as refused:
        parse({"model": "demo/echo", "messages": MESSAGES, **body})
    assert (refused.value.param, refused.value.message) == (param, message)


@pytest.mark.parametrize("raw", [b"[1]", b"{", b'{"a": NaN}'])
def test_bodies_that_are_not_json_objects(raw: bytes) -> None:
    with pytest.raises(InvalidBody):
        openai_request.parse(raw)


def test_param_of_names_the_field_as_sent() -> None:
    renamed = {"reasoning.effort": "reasoning_effort", "max_tokens": "max_completion_tokens"}
    assert openai_request.param_of("max_tokens", "max_tokens: must be at most 5", renamed) == (
        "max_completion_tokens", "max_completion_tokens: must be at most 5")
    assert openai_request.param_of("messages.0", "messages.0: x", renamed) == (
        "messages.0", "messages.0: x")
    assert openai_request.param_of(None, "m", renamed) == (None, "m")
