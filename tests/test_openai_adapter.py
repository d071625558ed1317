"""The OpenAI-compatible adapter, end to end through the official SDK and a loopback server.

Every recorded stream in tests/recordings/openai/ (real provider bytes, see
SOURCES.md) is served unchanged by ``tests.replay`` to ``OpenAIProvider``,
and the deltas it yields are compared with the reviewed accumulation in
``<name>.expected.json``: per kind the exact concatenation, per tool call its
id, name and exact arguments, the order (a call starts before its arguments
and ends after them), the usage figures, the finish and what is not relayed.

Shapes no public recording shows are written here by hand (each says so):
``[DONE]`` with no finish_reason, arguments before the name, every call at
index 0, calls without ids, the legacy ``function_call``, a body cut short.

The request tests read the JSON the loopback server received.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sse_gateway.providers.base import (
    ChatRequest,
    Delta,
    Finished,
    ImagePart,
    Message,
    NamedTool,
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
    UpstreamBadRequest,
    UpstreamError,
    UpstreamRateLimited,
    Usage,
)
from sse_gateway.providers.openai import OpenAIProvider
from tests.replay import ReplayServer, replaying

RECORDINGS = Path(__file__).resolve().parent / "recordings" / "openai"
NAMES = sorted(p.stem for p in RECORDINGS.glob("*.sse"))
GENERATED_ID = re.compile(r"call_[A-Za-z0-9_-]{24}")

# Streams written in the tests, by the model name that asks for them.
WRITTEN: dict[str, bytes] = {}


def _pick(body: Any) -> bytes | None:
    model = body.get("model") if isinstance(body, dict) else None
    if model in NAMES:
        return (RECORDINGS / f"{model}.sse").read_bytes()
    if model in WRITTEN:
        return WRITTEN[model]
    return sse(chunk({"content": "ok"}), chunk({}, "stop"))


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with replaying("/v1/chat/completions", _pick) as replay:
        yield replay


@pytest.fixture(scope="module")
def provider(server: ReplayServer) -> Iterator[OpenAIProvider]:
    built = OpenAIProvider(api_key="sk-test", base_url=f"{server.url}/v1", max_connections=4,
                           connect_timeout=2.0)
    yield built
    built.close()


def ask(model: str) -> ChatRequest:
    return ChatRequest(model, (Message("user", "hi"),))


def run(provider: OpenAIProvider, model: str) -> list[Delta]:
    """Every delta of one stream, checked for the rules every stream keeps."""
    deltas = list(provider.stream(ask(model)))
    check_order(deltas)
    return deltas


def check_order(deltas: list[Delta]) -> None:
    """One Finished, last; no empty output; calls start in index order, each once, before
    its arguments, and end once, after them."""
    assert [type(d) for d in deltas].count(Finished) == 1 and isinstance(deltas[-1], Finished)
    started: list[int] = []
    ended: set[int] = set()
    for delta in deltas:
        if isinstance(delta, TextDelta | ReasoningDelta | RefusalDelta):
            assert delta.text
        elif isinstance(delta, ToolCallStart):
            assert delta.index == len(started)
            started.append(delta.index)
        elif isinstance(delta, ToolCallDelta):
            assert delta.arguments and delta.index in started and delta.index not in ended
        elif isinstance(delta, ToolCallEnd):
            assert delta.index in started and delta.index not in ended
            ended.add(delta.index)
    assert ended == set(started)


def joined(deltas: list[Delta], kind: type) -> str:
    return "".join(d.text for d in deltas if type(d) is kind)


def calls(deltas: list[Delta]) -> dict[int, tuple[str, str, str]]:
    """Per gateway index: id, name and the whole arguments."""
    out: dict[int, list[str]] = {}
    for d in deltas:
        if isinstance(d, ToolCallStart):
            out[d.index] = [d.id, d.name, ""]
        elif isinstance(d, ToolCallDelta):
            out[d.index][2] += d.arguments
    return {index: (i, n, a) for index, (i, n, a) in out.items()}


def shape(deltas: list[Delta]) -> list[str]:
    """The order of the kinds, repeats of one kind folded."""
    labels: list[str] = []
    for d in deltas:
        if isinstance(d, ToolCallStart | ToolCallDelta | ToolCallEnd):
            label = f"{type(d).__name__} {d.index}"
        elif isinstance(d, Unrelayed):
            label = f"Unrelayed {d.what}"
        else:
            label = type(d).__name__
        if not labels or labels[-1] != label or label.startswith("Unrelayed"):
            labels.append(label)
    return labels


# -- the recordings ----------------------------------------------------------------------

# Per recording: the usage figures, and the order of the kinds (reviewed against the bytes).
END = ["Usage", "Finished"]
CALL0 = ["ToolCallStart 0", "ToolCallDelta 0", "ToolCallEnd 0", *END]
RECORDED: dict[str, tuple[Usage, list[str]]] = {
    "alibaba_tool_call_split": (Usage(295, 22, 0), CALL0),
    "azure_prompt_filter_empty_choices": (
        Usage(15, 5, 0, None, 0),
        ["Unrelayed prompt_filter_results", "TextDelta", "Unrelayed content_filter_results",
         "TextDelta", "Unrelayed content_filter_results",
         # the choice with no delta, after the finish chunk
         "Unrelayed content_filter_offsets", "Unrelayed content_filter_results", *END]),
    "deepseek_reasoning_content": (Usage(18, 219, 0, None, 205),
                                   ["ReasoningDelta", "TextDelta", *END]),
    "deepseek_reasoning_tool_call": (Usage(339, 83, 320, None, 39), ["ReasoningDelta", *CALL0]),
    "glm_tool_call_empty_name": (Usage(171, 14, 128), CALL0),
    "groq_reasoning": (Usage(17, 1107, None, None, 963), ["ReasoningDelta", "TextDelta", *END]),
    "groq_tool_call_whole": (Usage(210, 15), CALL0),
    "mistral_list_content_thinking": (Usage(28, 139, 0), ["ReasoningDelta", "TextDelta", *END]),
    "mistral_magistral_list_content": (Usage(10, 46), ["ReasoningDelta", "TextDelta", *END]),
    "openai_length": (Usage(79, 1, None, None, 0), ["TextDelta", *END]),
    "openai_logprobs_usage": (Usage(9, 2, None, None, 0),
                              ["TextDelta", "Unrelayed logprobs", "TextDelta",
                               "Unrelayed logprobs", *END]),
    "openai_parallel_tool_calls": (Usage(149, 60, None, None, 0),
                                   ["ToolCallStart 0", "ToolCallDelta 0", "ToolCallStart 1",
                                    "ToolCallDelta 1", "ToolCallEnd 0", "ToolCallEnd 1", *END]),
    "openai_plain_text_usage": (Usage(14, 30, None, None, 0), ["TextDelta", *END]),
    "openai_refusal": (Usage(79, 11, None, None, 0), ["RefusalDelta", *END]),
    "openai_tool_call_split": (Usage(76, 24, None, None, 0), CALL0),
    "xai_reasoning_tool_call": (Usage(291, 26, 290, None, 196), ["ReasoningDelta", *CALL0]),
    # Each reasoning chunk repeats its text in reasoning_details (not relayed twice, named);
    # the last detail holds only the signature.
    "openrouter_reasoning_details": (Usage(43, 36, 0, None, 13), [
        *["ReasoningDelta", "Unrelayed reasoning_details"] * 3, "Unrelayed reasoning_details",
        "TextDelta", *END]),
    "snowflake_done_without_finish_reason": (Usage(22, 5, 0, None, 0), ["TextDelta", *END]),
    "snowflake_reasoning_details_only": (Usage(45, 73, 0, None, 0),
                                         ["ReasoningDelta", "TextDelta", *END]),
}
# Reasoning the SDK does not accumulate (it knows no reasoning_details), read from the file.
DETAILS_ONLY = {"snowflake_reasoning_details_only": "15 * 27 = 405"}


def test_every_recording_is_checked() -> None:
    assert sorted(RECORDED) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_recording(provider: OpenAIProvider, name: str) -> None:
    expected = json.loads((RECORDINGS / f"{name}.expected.json").read_text(encoding="utf-8"))
    deltas = run(provider, name)
    usage, order = RECORDED[name]
    assert shape(deltas) == order
    assert joined(deltas, TextDelta) == (expected["content"] or "")
    assert joined(deltas, ReasoningDelta) == (
        expected["reasoning_content"] or expected["reasoning"] or expected["thinking"]
        or DETAILS_ONLY.get(name, ""))
    assert joined(deltas, RefusalDelta) == (expected["refusal"] or "")
    assert calls(deltas) == {int(i): (c["id"], c["name"], c["arguments"])
                             for i, c in expected["tool_calls"].items()}
    assert [d for d in deltas if isinstance(d, Usage)] == [usage]
    reason = expected["finish_reason"]
    if reason is None:  # [DONE] with no finish_reason anywhere: done all the same
        assert deltas[-1] == Finished("stop", None)
    else:
        assert reason in ("stop", "length", "tool_calls")
        assert deltas[-1] == Finished(reason, reason)


def test_reasoning_and_text_of_one_mistral_delta_keep_their_order(
        provider: OpenAIProvider) -> None:
    """The recording's one delta that holds a thinking part and then a text part."""
    raw = (RECORDINGS / "mistral_list_content_thinking.sse").read_bytes()
    both = [event for event in raw.split(b"\n\n")
            if b'"type":"thinking"' in event and b'{"type":"text","text":"3"}]' in event]
    assert len(both) == 1
    WRITTEN["mistral_both"] = both[0] + b"\n\ndata: [DONE]\n\n"
    assert run(provider, "mistral_both") == [ReasoningDelta("1."), TextDelta("3"),
                                             Finished("stop", None)]


# -- written streams ---------------------------------------------------------------------


def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """A chat.completion.chunk as OpenAI shapes it (written by hand, not recorded)."""
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
    if delta is not None:
        choice["delta"] = delta
    return {"id": "chatcmpl-written", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "system_fingerprint": "fp", "choices": [choice], **extra}


def sse(*chunks: dict[str, Any] | str, done: bool = True) -> bytes:
    body = b"".join(b"data: " + (c if isinstance(c, str) else json.dumps(c)).encode() + b"\n\n"
                    for c in chunks)
    return body + (b"data: [DONE]\n\n" if done else b"")


def serve(provider: OpenAIProvider, model: str, body: bytes) -> list[Delta]:
    WRITTEN[model] = body
    return run(provider, model)


def call(index: int | None, call_id: str | None = None, name: str | None = None,
         arguments: str | None = None) -> dict[str, Any]:
    piece: dict[str, Any] = {"type": "function", "function": {}}
    if index is not None:
        piece["index"] = index
    if call_id is not None:
        piece["id"] = call_id
    if name is not None:
        piece["function"]["name"] = name
    if arguments is not None:
        piece["function"]["arguments"] = arguments
    return piece


def test_done_without_finish_reason_is_stop(provider: OpenAIProvider) -> None:
    # Written: OpenRouter-like text ending with [DONE] and no finish_reason.
    body = sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
               chunk({"content": "lo"}))
    assert serve(provider, "done_no_finish", body) == [
        TextDelta("Hel"), TextDelta("lo"), Finished("stop", None)]


def test_done_without_finish_reason_after_calls_is_tool_calls(provider: OpenAIProvider) -> None:
    # Written: a tool call, then [DONE] with no finish_reason: the call ends at [DONE].
    body = sse(chunk({"tool_calls": [call(0, "call_a", "f", "")]}),
               chunk({"tool_calls": [call(0, arguments='{"x":')]}),
               chunk({"tool_calls": [call(0, arguments="1}")]}),
               {"id": "c", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}})
    assert serve(provider, "done_no_finish_calls", body) == [
        ToolCallStart(0, "call_a", "f"), ToolCallDelta(0, '{"x":'), ToolCallDelta(0, "1}"),
        Usage(5, 7), ToolCallEnd(0), Finished("tool_calls", None)]


def test_arguments_before_the_name_wait_for_it(provider: OpenAIProvider) -> None:
    # Written: no recording shows it; the arguments are kept until id and name come.
    body = sse(chunk({"tool_calls": [call(0, arguments='{"a"')]}),
               chunk({"tool_calls": [call(0, arguments=":")]}),
               chunk({"tool_calls": [call(0, "call_late", "late", "1")]}),
               chunk({"tool_calls": [call(0, arguments="}")]}),
               chunk({}, "tool_calls"))
    assert serve(provider, "args_first", body) == [
        ToolCallStart(0, "call_late", "late"), ToolCallDelta(0, '{"a":1'), ToolCallDelta(0, "}"),
        ToolCallEnd(0), Finished("tool_calls", "tool_calls")]


def test_calls_all_at_provider_index_0_are_told_apart_by_id(provider: OpenAIProvider) -> None:
    # Written: servers that number every call 0 (ids differ), with "" ids on continuations.
    body = sse(chunk({"tool_calls": [call(0, "call_1", "first", '{"n":')]}),
               chunk({"tool_calls": [call(0, "", "", "1}")]}),
               chunk({"tool_calls": [call(0, "call_2", "second", "{}")]}),
               chunk({"tool_calls": [call(0, "call_3", "third")]}),
               chunk({"tool_calls": [call(0, arguments='{"n":3}')]}),
               chunk({}, "tool_calls"))
    assert serve(provider, "all_index_0", body) == [
        ToolCallStart(0, "call_1", "first"), ToolCallDelta(0, '{"n":'), ToolCallDelta(0, "1}"),
        ToolCallStart(1, "call_2", "second"), ToolCallDelta(1, "{}"),
        ToolCallStart(2, "call_3", "third"), ToolCallDelta(2, '{"n":3}'),
        ToolCallEnd(0), ToolCallEnd(1), ToolCallEnd(2), Finished("tool_calls", "tool_calls")]


def test_parallel_calls_in_one_chunk_and_without_index(provider: OpenAIProvider) -> None:
    # Written: two whole calls in one delta, the second without an index (by its new id).
    body = sse(chunk({"tool_calls": [call(0, "call_a", "a", "{}"),
                                     call(None, "call_b", "b", '{"k":1}')]}),
               chunk({}, "tool_calls"))
    assert serve(provider, "parallel_one_chunk", body) == [
        ToolCallStart(0, "call_a", "a"), ToolCallDelta(0, "{}"),
        ToolCallStart(1, "call_b", "b"), ToolCallDelta(1, '{"k":1}'),
        ToolCallEnd(0), ToolCallEnd(1), Finished("tool_calls", "tool_calls")]


def test_a_call_without_an_id_gets_one(provider: OpenAIProvider) -> None:
    # Written: some local servers send no id at all.
    body = sse(chunk({"tool_calls": [call(0, name="now", arguments="")]}),
               chunk({"tool_calls": [call(0, arguments="{}")]}),
               chunk({"tool_calls": [call(1, name="later", arguments="{}")]}),
               chunk({}, "tool_calls"))
    deltas = serve(provider, "no_id", body)
    first, second = (d for d in deltas if isinstance(d, ToolCallStart))
    assert GENERATED_ID.fullmatch(first.id) and GENERATED_ID.fullmatch(second.id)
    assert first.id != second.id
    assert deltas == [
        ToolCallStart(0, first.id, "now"), ToolCallDelta(0, "{}"),
        ToolCallStart(1, second.id, "later"), ToolCallDelta(1, "{}"),
        ToolCallEnd(0), ToolCallEnd(1), Finished("tool_calls", "tool_calls")]


def test_legacy_function_call(provider: OpenAIProvider) -> None:
    # Written: the deprecated functions API's delta.function_call, finish "function_call".
    body = sse(chunk({"role": "assistant", "content": None,
                      "function_call": {"name": "get_time", "arguments": ""}}),
               chunk({"function_call": {"arguments": '{"tz":'}}),
               chunk({"function_call": {"arguments": '"UTC"}'}}),
               chunk({}, "function_call"))
    deltas = serve(provider, "legacy", body)
    start = deltas[0]
    assert isinstance(start, ToolCallStart) and GENERATED_ID.fullmatch(start.id)
    assert deltas == [ToolCallStart(0, start.id, "get_time"), ToolCallDelta(0, '{"tz":'),
                      ToolCallDelta(0, '"UTC"}'), ToolCallEnd(0),
                      Finished("tool_calls", "function_call")]


def test_a_body_cut_short_without_done_or_finish_is_an_error(provider: OpenAIProvider) -> None:
    # Written: the body ends after two text chunks, with no finish_reason and no [DONE].
    WRITTEN["truncated"] = sse(chunk({"content": "a"}), chunk({"content": "b"}), done=False)
    seen: list[Delta] = []
    with pytest.raises(UpstreamError, match="openai ended the stream before the model finished"):
        seen.extend(provider.stream(ask("truncated")))
    assert seen == [TextDelta("a"), TextDelta("b")]


def test_a_call_cut_short_is_an_error_without_an_end(provider: OpenAIProvider) -> None:
    # Written: a call's arguments, then the body ends (no finish_reason, no [DONE]).
    WRITTEN["truncated_call"] = sse(chunk({"tool_calls": [call(0, "call_t", "t", '{"a')]}),
                                    done=False)
    seen: list[Delta] = []
    with pytest.raises(UpstreamError):
        seen.extend(provider.stream(ask("truncated_call")))
    assert seen == [ToolCallStart(0, "call_t", "t"), ToolCallDelta(0, '{"a')]


def test_a_finish_reason_without_done_is_done(provider: OpenAIProvider) -> None:
    # Written: finish_reason, then the body ends without [DONE].
    body = sse(chunk({"content": "a"}), chunk({}, "length"), done=False)
    assert serve(provider, "finish_no_done", body) == [TextDelta("a"), Finished("length", "length")]


@pytest.mark.parametrize(("word", "reason"), [
    ("stop", "stop"), ("length", "length"), ("tool_calls", "tool_calls"),
    ("content_filter", "content_filter"), ("function_call", "tool_calls"),
    ("eos", "other"), ("end_turn", "other")])
def test_finish_reasons_are_normalized(provider: OpenAIProvider, word: str, reason: str) -> None:
    # Written: one text chunk, then the finish_reason under test.
    body = sse(chunk({"content": "x"}), chunk({}, word))
    assert serve(provider, f"finish_{word}", body) == [TextDelta("x"), Finished(reason, word)]


def test_openrouter_shapes(provider: OpenAIProvider) -> None:
    # Written (no public recording, see SOURCES.md): OpenRouter-style chunks with reasoning
    # and reasoning_details, a provider field, native_finish_reason, annotations.
    extra = {"provider": "OpenAI"}
    details = [{"type": "reasoning.text", "text": "Think", "index": 0}]
    body = sse(
        chunk({"role": "assistant", "content": "", "reasoning": "Think",
               "reasoning_details": details}, **extra),
        chunk({"content": "Answer"}, **extra),
        chunk({"content": "", "annotations": [{"type": "url_citation",
                                               "url_citation": {"url": "https://a.example"}}]},
              **extra),
        {**chunk({}, "stop", **extra), "usage": {
            "prompt_tokens": 4, "completion_tokens": 9,
            "prompt_tokens_details": {"cached_tokens": 2},
            "completion_tokens_details": {"reasoning_tokens": 5}}})
    body = body.replace(b'"finish_reason": "stop"',
                        b'"finish_reason": "stop", "native_finish_reason": "completed"')
    assert serve(provider, "openrouter", body) == [
        ReasoningDelta("Think"), Unrelayed("reasoning_details"), TextDelta("Answer"),
        Unrelayed("annotations"), Usage(4, 9, 2, None, 5), Finished("stop", "stop")]


def test_the_same_reasoning_in_both_fields_is_relayed_once(provider: OpenAIProvider) -> None:
    # Written: servers moving from reasoning_content to reasoning have filled both.
    body = sse(chunk({"reasoning_content": "hm", "reasoning": "hm"}),
               chunk({"reasoning_content": "a", "reasoning": "b"}), chunk({}, "stop"))
    assert serve(provider, "both_reasoning", body) == [
        ReasoningDelta("hm"), ReasoningDelta("a"), ReasoningDelta("b"), Finished("stop", "stop")]


def test_usage_from_x_groq_and_deepseek_cache_hits(provider: OpenAIProvider) -> None:
    # Written: older Groq chunks carry usage only in x_groq; DeepSeek names cache hits
    # prompt_cache_hit_tokens (and misses, which are not a figure the gateway keeps).
    groq = sse(chunk({"content": "a"}),
               chunk({}, "stop", x_groq={"id": "req_1", "usage": {
                   "prompt_tokens": 3, "completion_tokens": 1, "queue_time": 0.1}}))
    assert serve(provider, "groq_usage", groq) == [
        TextDelta("a"), Usage(3, 1), Finished("stop", "stop")]
    deepseek = sse(chunk({"content": "a"}, "stop", usage={
        "prompt_tokens": 30, "completion_tokens": 1, "prompt_cache_hit_tokens": 20,
        "prompt_cache_miss_tokens": 10}))
    assert serve(provider, "deepseek_usage", deepseek) == [
        TextDelta("a"), Usage(30, 1, 20), Finished("stop", "stop")]


def test_top_level_usage_is_preferred_to_x_groq(provider: OpenAIProvider) -> None:
    # Written: both on one chunk, with different figures.
    body = sse(chunk({}, "stop", usage={"prompt_tokens": 8, "completion_tokens": 2},
                     x_groq={"usage": {"prompt_tokens": 1, "completion_tokens": 1}}))
    assert serve(provider, "both_usage", body) == [Usage(8, 2), Finished("stop", "stop")]


def test_what_is_not_relayed_is_named_once_per_chunk(provider: OpenAIProvider) -> None:
    # Written: a citations key on each text chunk (Perplexity-like), an audio delta, an
    # unknown part type in list content, a second choice, and null or empty extras.
    body = sse(
        chunk({"content": "a"}, citations=["https://a.example"]),
        chunk({"content": "b", "audio": {"id": "audio_1", "data": "AAAA"}},
              citations=["https://a.example"]),
        chunk({"content": [{"type": "reference", "reference_ids": [1]},
                           {"type": "text", "text": "c"}]}, citations=None, extra={}),
        {**chunk({"content": "d"}),
         "choices": [chunk({"content": "d"})["choices"][0],
                     {"index": 1, "delta": {"content": "other"}, "finish_reason": None}]},
        chunk({}, "stop", stop_reason=None))
    assert serve(provider, "unrelayed", body) == [
        TextDelta("a"), Unrelayed("citations"), TextDelta("b"), Unrelayed("citations"),
        Unrelayed("audio"), TextDelta("c"), Unrelayed("reference"), TextDelta("d"),
        Unrelayed("choices"), Finished("stop", "stop")]


def test_content_in_chunks_of_other_shapes(provider: OpenAIProvider) -> None:
    # Written: Ollama-like deltas with role on every chunk, xAI-like choices with only
    # index and delta, delta null, choices null, usage null, a choice with no delta.
    body = sse(chunk({"role": "assistant", "content": "a"}),
               {"id": "x", "choices": [{"index": 0, "delta": {"content": "b"}}]},
               chunk(None), chunk({"content": None, "refusal": None}),
               {"id": "x", "choices": None, "usage": None},
               {**chunk({"content": "c"}), "usage": None},
               chunk({"content": ""}, "stop"))
    assert serve(provider, "shapes", body) == [
        TextDelta("a"), TextDelta("b"), TextDelta("c"), Finished("stop", "stop")]


def test_pieces_of_a_call_after_its_end_are_not_relayed(provider: OpenAIProvider) -> None:
    # Written: arguments for an ended call after the finish chunk, and a call whose name
    # never comes.
    body = sse(chunk({"tool_calls": [call(0, "call_a", "a", "{}")]}),
               chunk({"tool_calls": [call(1, arguments='{"lost":')]}),
               chunk({}, "tool_calls"),
               chunk({"tool_calls": [call(0, arguments=" ")]}))
    assert serve(provider, "after_end", body) == [
        ToolCallStart(0, "call_a", "a"), ToolCallDelta(0, "{}"), ToolCallEnd(0),
        Unrelayed("tool_call_without_name"), Unrelayed("tool_calls"),
        Finished("tool_calls", "tool_calls")]


def test_arguments_sent_as_an_object(provider: OpenAIProvider) -> None:
    # Written: servers that send the arguments parsed, as a JSON object.
    body = sse(chunk({"tool_calls": [{"index": 0, "id": "call_o", "type": "function",
                                      "function": {"name": "o", "arguments": {"é": 1}}}]}),
               chunk({}, "tool_calls"))
    assert serve(provider, "args_object", body) == [
        ToolCallStart(0, "call_o", "o"), ToolCallDelta(0, '{"é": 1}'), ToolCallEnd(0),
        Finished("tool_calls", "tool_calls")]


@pytest.mark.parametrize(("error_type", "cls"), [
    ("rate_limit_exceeded", UpstreamRateLimited), ("invalid_request_error", UpstreamBadRequest),
    ("something_new", UpstreamError)])
def test_an_error_in_the_stream(provider: OpenAIProvider, error_type: str,
                                cls: type[UpstreamError]) -> None:
    # Written: an error object after some text, as OpenAI sends a mid-stream failure.
    WRITTEN[f"error_{error_type}"] = sse(
        chunk({"content": "a"}), {"error": {"message": "x", "type": error_type}})
    seen: list[Delta] = []
    with pytest.raises(cls, match="openai reported an error during the stream"):
        seen.extend(provider.stream(ask(f"error_{error_type}")))
    assert seen == [TextDelta("a")]


@pytest.mark.parametrize(("data", "message"), [
    ("not json", "openai sent an event that is not JSON"),
    ("[1, 2]", "openai sent an event that is not a JSON object"),
    ('{"choices": {"index": 0}}', "openai sent a chunk with a malformed choices"),
    ('{"choices": ["a"]}', "openai sent a chunk with a malformed choice"),
    ('{"choices": [{"index": 0, "delta": "a"}]}', "openai sent a chunk with a malformed delta"),
    ('{"choices": [{"index": 0, "delta": {"tool_calls": {}}}]}',
     "openai sent a chunk with a malformed tool_calls"),
    ('{"choices": [{"index": 0, "delta": {"tool_calls": [1]}}]}',
     "openai sent a chunk with a malformed tool call"),
])
def test_a_malformed_chunk_is_an_upstream_error(provider: OpenAIProvider, data: str,
                                                message: str) -> None:
    # Written: nonsense where a chunk should be.
    WRITTEN[f"malformed_{data}"] = sse(chunk({"content": "a"}), data)
    seen: list[Delta] = []
    with pytest.raises(UpstreamError, match=re.escape(message)):
        seen.extend(provider.stream(ask(f"malformed_{data}")))
    assert seen == [TextDelta("a")]


# -- the request -------------------------------------------------------------------------


def sent(server: ReplayServer, provider: OpenAIProvider, request: ChatRequest) -> Any:
    """The JSON body the server received for ``request``."""
    before = len(server.requests)
    assert list(provider.stream(request))[-1] == Finished("stop", "stop")
    (path, body), = server.requests[before:]
    assert path == "/v1/chat/completions"
    return body


def test_the_request_carries_every_field(server: ReplayServer, provider: OpenAIProvider) -> None:
    schema = {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True,
                                                              "schema": schema}}
    thinking = {"anthropic": {"thinking_blocks": [{"type": "thinking", "thinking": "t",
                                                   "signature": "s"}]}}
    request = ChatRequest(
        "gpt-x",
        (Message("system", "Be brief."),
         Message("user", (TextPart("What is this?"), ImagePart("https://example.com/cat.png"),
                          ImagePart("data:image/png;base64,iVBORw0KGgo="))),
         Message("assistant", "", tool_calls=(ToolCall("call_1", "get_time", '{"tz":"UTC"}'),
                                              ToolCall("call_2", "get_time", '{"tz":"CET"}')),
                 provider_data=thinking),
         Message("tool", "12:00", tool_call_id="call_1"),
         Message("tool", (TextPart("13:00"),), tool_call_id="call_2"),
         Message("assistant", "Checking.", tool_calls=(ToolCall("call_3", "get_time", "{}"),)),
         Message("tool", "14:00", tool_call_id="call_3"),
         Message("assistant", "", refusal="I can't help with that."),
         Message("assistant", (TextPart("Fine."),)),
         Message("user", "thanks")),
        max_tokens=100, temperature=0.5,
        tools=(Tool("get_time", "The current time", schema), Tool("noop")),
        tool_choice=NamedTool("get_time"), reasoning_effort="high", reasoning_budget=2048,
        response_format=response_format, stop=("END", "STOP"), top_p=0.9, seed=42)
    provider.check(request)  # both effort and budget: the effort is sent
    assert sent(server, provider, request) == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_time", "arguments": '{"tz":"UTC"}'}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_time", "arguments": '{"tz":"CET"}'}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
            {"role": "tool", "tool_call_id": "call_2",
             "content": [{"type": "text", "text": "13:00"}]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_3", "type": "function",
                 "function": {"name": "get_time", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_3", "content": "14:00"},
            {"role": "assistant", "content": "", "refusal": "I can't help with that."},
            {"role": "assistant", "content": [{"type": "text", "text": "Fine."}]},
            {"role": "user", "content": "thanks"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 100,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 42,
        "stop": ["END", "STOP"],
        "tools": [
            {"type": "function", "function": {"name": "get_time",
                                              "description": "The current time",
                                              "parameters": schema}},
            {"type": "function", "function": {"name": "noop"}},
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        "reasoning_effort": "high",
        "response_format": response_format,
    }


def test_a_plain_request_sends_only_what_it_has(server: ReplayServer,
                                                provider: OpenAIProvider) -> None:
    assert sent(server, provider, ChatRequest("gpt-x", (Message("user", "hi"),))) == {
        "model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_words(server: ReplayServer, provider: OpenAIProvider, choice: str) -> None:
    request = ChatRequest("gpt-x", (Message("user", "hi"),), tools=(Tool("f"),),
                          tool_choice=choice, temperature=0.0, seed=0,
                          response_format={"type": "json_object"})
    assert sent(server, provider, request) == {
        "model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True}, "temperature": 0.0, "seed": 0,
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": choice,
        "response_format": {"type": "json_object"}}


def test_check_refuses_a_budget_without_an_effort(provider: OpenAIProvider) -> None:
    with pytest.raises(Unsupported) as raised:
        provider.check(ChatRequest("gpt-x", (Message("user", "hi"),), reasoning_budget=1024))
    assert raised.value.param == "reasoning.budget_tokens"
    assert raised.value.message == ("OpenAI-compatible models take reasoning.effort "
                                    "(low, medium or high), not a token budget")


@pytest.mark.parametrize("request_", [
    ChatRequest("gpt-x", (Message("user", "hi"),)),
    ChatRequest("gpt-x", (Message("user", "hi"),), reasoning_effort="low"),
    ChatRequest("gpt-x", (Message("user", "hi"),), reasoning_effort="low", reasoning_budget=10),
    ChatRequest("gpt-x", (Message("user", (TextPart("a"), ImagePart("https://x.example/i.png"))),
                          Message("assistant", "", tool_calls=(ToolCall("c", "f", "{}"),)),
                          Message("tool", "r", tool_call_id="c")),
                tools=(Tool("f"),), tool_choice="required", response_format={"type": "text"},
                stop=("x",), top_p=1.0, seed=1),
])
def test_check_accepts_everything_else(provider: OpenAIProvider, request_: ChatRequest) -> None:
    provider.check(request_)


def test_reasoning_details_alone_are_reasoning(provider: OpenAIProvider) -> None:
    # Written: OpenRouter's structured reasoning with no reasoning field beside it (as the
    # Snowflake recording sends it), with a summary and an encrypted item.
    details = [{"type": "reasoning.text", "text": "Step 1.", "format": "x", "index": 0},
               {"type": "reasoning.summary", "summary": " In short.", "index": 0},
               {"type": "reasoning.encrypted", "data": "ZW5j", "index": 0}]
    body = sse(chunk({"content": "", "reasoning_details": details}), chunk({"content": "A"}),
               chunk({}, "stop"))
    assert serve(provider, "details_alone", body) == [
        ReasoningDelta("Step 1."), ReasoningDelta(" In short."), Unrelayed("reasoning_details"),
        TextDelta("A"), Finished("stop", "stop")]
