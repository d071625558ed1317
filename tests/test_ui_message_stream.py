"""The AI SDK UI message stream dialect in process: gateway events -> chunks (exact
bytes), a resume primed with history, and useChat's UIMessages -> the gateway's messages."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sse_gateway import events
from sse_gateway.errors import InvalidRequest
from sse_gateway.events import Event
from sse_gateway.flask.ai_sdk import chat_request
from sse_gateway.transports import dialects
from sse_gateway.transports import ui_message_stream as ui
from sse_gateway.transports.sse import Decoder
from tests.test_flask_ext import closing  # noqa: F401 - fixture

SID = "chat-stream-000001"


def chunks(raw: bytes) -> list[tuple[str | None, Any]]:
    """(id, chunk) per event, as a WHATWG parser sees them ([DONE] as the string)."""
    out = []
    for event in Decoder().feed(raw):
        out.append((event.id, event.data if event.data == "[DONE]" else json.loads(event.data)))
    return out


def done(eid: int, reason: str = "stop") -> Event:
    return events.done(eid, finish_reason=reason, model="demo/tools", usage={}, metrics={})


def render(batch: list[Event], dialect: str = ui.DIALECT) -> bytes:
    return dialects.renderer(dialect).render(batch)


def test_text_is_one_block_between_start_and_finish() -> None:
    raw = render([events.start(0, SID, "demo/echo", 1.0), events.token(1, "Hel"),
                  events.token(2, "lo \"é\"\n"), done(3)])
    assert raw == (
        b'id: 0\ndata: {"type":"start","messageId":"msg_chat-stream-000001"}\n\n'
        b'id: 0\ndata: {"type":"start-step"}\n\n'
        b'id: 1\ndata: {"type":"text-start","id":"text-1"}\n\n'
        b'id: 1\ndata: {"type":"text-delta","id":"text-1","delta":"Hel"}\n\n'
        b'id: 2\ndata: {"type":"text-delta","id":"text-1","delta":"lo \\"\xc3\xa9\\"\\n"}\n\n'
        b'id: 3\ndata: {"type":"text-end","id":"text-1"}\n\n'
        b'id: 3\ndata: {"type":"finish-step"}\n\n'
        b'id: 3\ndata: {"type":"finish"}\n\n'
        b'id: 3\ndata: [DONE]\n\n')


def test_reasoning_then_text_closes_the_reasoning_block() -> None:
    got = chunks(render([events.start(0, SID, "m/m", 1.0), events.reasoning(1, "Let me "),
                         events.reasoning(2, "think."), events.token(3, "Yes"),
                         events.reasoning(4, "again"), done(5)]))
    assert got == [
        ("0", {"type": "start", "messageId": "msg_" + SID}), ("0", {"type": "start-step"}),
        ("1", {"type": "reasoning-start", "id": "reasoning-1"}),
        ("1", {"type": "reasoning-delta", "id": "reasoning-1", "delta": "Let me "}),
        ("2", {"type": "reasoning-delta", "id": "reasoning-1", "delta": "think."}),
        ("3", {"type": "reasoning-end", "id": "reasoning-1"}),
        ("3", {"type": "text-start", "id": "text-3"}),
        ("3", {"type": "text-delta", "id": "text-3", "delta": "Yes"}),
        ("4", {"type": "text-end", "id": "text-3"}),
        ("4", {"type": "reasoning-start", "id": "reasoning-4"}),
        ("4", {"type": "reasoning-delta", "id": "reasoning-4", "delta": "again"}),
        ("5", {"type": "reasoning-end", "id": "reasoning-4"}),
        ("5", {"type": "finish-step"}), ("5", {"type": "finish"}), ("5", "[DONE]")]


def test_a_refusal_is_text() -> None:
    got = chunks(render([events.token(1, "I "), events.refusal(2, "can't.")]))
    assert got[-1] == ("2", {"type": "text-delta", "id": "text-1", "delta": "can't."})


def test_parallel_tool_calls_with_split_arguments() -> None:
    got = chunks(render([
        events.token(1, "Checking."),
        events.tool_call(2, 0, "call_a", "get_time"), events.tool_call(3, 1, "call_b", "get_weather"),
        events.tool_call_delta(4, 0, '{"tz": "Eu'), events.tool_call_delta(5, 1, '{"city"'),
        events.tool_call_delta(6, 0, 'rope/Paris"}'), events.tool_call_delta(7, 1, ': "Oslo"}'),
        events.tool_call_done(8, 0, "call_a", "get_time", '{"tz": "Europe/Paris"}'),
        events.tool_call_done(9, 1, "call_b", "get_weather", '{"city": "Oslo"}'),
        done(10, "tool_calls")]))
    assert got == [
        ("1", {"type": "text-start", "id": "text-1"}),
        ("1", {"type": "text-delta", "id": "text-1", "delta": "Checking."}),
        ("2", {"type": "text-end", "id": "text-1"}),
        ("2", {"type": "tool-input-start", "toolCallId": "call_a", "toolName": "get_time"}),
        ("3", {"type": "tool-input-start", "toolCallId": "call_b", "toolName": "get_weather"}),
        ("4", {"type": "tool-input-delta", "toolCallId": "call_a", "inputTextDelta": '{"tz": "Eu'}),
        ("5", {"type": "tool-input-delta", "toolCallId": "call_b", "inputTextDelta": '{"city"'}),
        ("6", {"type": "tool-input-delta", "toolCallId": "call_a",
               "inputTextDelta": 'rope/Paris"}'}),
        ("7", {"type": "tool-input-delta", "toolCallId": "call_b", "inputTextDelta": ': "Oslo"}'}),
        ("8", {"type": "tool-input-available", "toolCallId": "call_a", "toolName": "get_time",
               "input": {"tz": "Europe/Paris"}}),
        ("9", {"type": "tool-input-available", "toolCallId": "call_b", "toolName": "get_weather",
               "input": {"city": "Oslo"}}),
        ("10", {"type": "finish-step"}), ("10", {"type": "finish"}), ("10", "[DONE]")]


def test_arguments_that_are_not_json_are_a_tool_input_error() -> None:
    got = chunks(render([events.tool_call_done(1, 0, "c", "f", '{"a": ')]))
    assert got[0] == ("1", {"type": "tool-input-start", "toolCallId": "c", "toolName": "f"})
    assert got[1][1]["type"] == "tool-input-error"
    assert (got[1][1]["input"], got[1][1]["toolName"]) == ('{"a": ', "f")
    assert got[1][1]["errorText"].startswith("the arguments are not JSON")
    assert chunks(render([events.tool_call_done(1, 0, "c", "f", "")]))[1][1]["input"] == {}


def test_an_error_closes_the_block_and_ends_the_stream() -> None:
    got = chunks(render([events.token(1, "Hi"),
                         events.error(2, "upstream_error", "upstream broke", provider="openai")]))
    assert got[2:] == [("2", {"type": "text-end", "id": "text-1"}),
                       ("2", {"type": "error", "errorText": "upstream broke"}), ("2", "[DONE]")]


def test_an_unnumbered_error_carries_no_id() -> None:
    raw = render([events.store_unreachable("openai")])
    assert raw == (b'data: {"type":"error","errorText":"the stream store is unreachable; '
                   b'resume later"}\n\ndata: [DONE]\n\n')


def test_cancelled_is_abort() -> None:
    got = chunks(render([events.reasoning(1, "hm"), events.cancelled(2, "deleted")]))
    assert got[2:] == [("2", {"type": "reasoning-end", "id": "reasoning-1"}),
                       ("2", {"type": "abort"}), ("2", "[DONE]")]


def test_the_continue_dialect_names_no_message() -> None:
    got = chunks(render([events.start(0, SID, "m/m", 1.0)], ui.DIALECT_CONTINUE))
    assert got == [("0", {"type": "start"}), ("0", {"type": "start-step"})]


def test_heartbeats_are_comments_and_retry_opens() -> None:
    renderer = dialects.renderer(ui.DIALECT)
    assert (renderer.open(2000), renderer.ping()) == (b"retry: 2000\n", b": ping\n")
    assert dialects.needs_history(ui.DIALECT) and dialects.needs_history(ui.DIALECT_CONTINUE)


SCRIPT = [events.start(0, SID, "demo/tools", 1.0), events.reasoning(1, "a"),
          events.reasoning(2, "b"), events.tool_call(3, 0, "call_1", "get_time"),
          events.tool_call_delta(4, 0, "{}"), events.tool_call_done(5, 0, "call_1", "get_time", "{}"),
          events.token(6, "It"), events.token(7, " is"), events.token(8, " noon."), done(9)]


@pytest.mark.parametrize("position", range(len(SCRIPT)))
def test_a_resume_primed_with_history_gives_the_same_bytes_after_it(position: int) -> None:
    """What a reader resuming after ``position`` gets is, byte for byte, what the first
    reader got after it (block ids and open blocks included)."""
    blocks = [b + b"\n\n" for b in render(SCRIPT).split(b"\n\n") if b]
    after = b"".join(b for b in blocks if int(b.split(b"\n")[0][4:]) > position)
    renderer = dialects.renderer(ui.DIALECT)
    renderer.prime(SCRIPT[:position + 1])
    assert renderer.render(SCRIPT[position + 1:]) == after


def test_every_chunk_has_only_fields_every_ai_sdk_5_and_6_accepts() -> None:
    """From 5.0.0 the client's chunk schemas are strict objects: these are the fields
    both 5.0.0 and 6.x know for each chunk type we send."""
    allowed = {
        "start": {"type", "messageId"}, "start-step": {"type"}, "finish-step": {"type"},
        "finish": {"type"}, "abort": {"type"}, "error": {"type", "errorText"},
        "text-start": {"type", "id"}, "text-delta": {"type", "id", "delta"},
        "text-end": {"type", "id"}, "reasoning-start": {"type", "id"},
        "reasoning-delta": {"type", "id", "delta"}, "reasoning-end": {"type", "id"},
        "tool-input-start": {"type", "toolCallId", "toolName"},
        "tool-input-delta": {"type", "toolCallId", "inputTextDelta"},
        "tool-input-available": {"type", "toolCallId", "toolName", "input"},
        "tool-input-error": {"type", "toolCallId", "toolName", "input", "errorText"}}
    batch = [*SCRIPT[:-1], events.tool_call_done(10, 1, "c2", "f", "{"),
             events.error(11, "upstream_error", "x", provider="p")]
    for _, chunk in chunks(render(batch)) + chunks(render([events.cancelled(1, "deleted")])):
        if chunk != "[DONE]":
            assert set(chunk) <= allowed[chunk["type"]], chunk


# --- useChat's messages -> the gateway's ----------------------------------------------


def test_text_and_image_files_of_user_messages() -> None:
    got = ui.to_gateway_messages([
        {"id": "s", "role": "system", "parts": [{"type": "text", "text": "Be brief."}]},
        {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Hello"}]},
        {"id": "u2", "role": "user", "parts": [
            {"type": "text", "text": "What is this?"},
            {"type": "file", "mediaType": "image/png", "url": "data:image/png;base64,iVBO",
             "filename": "a.png"},
            {"type": "file", "mediaType": "image/jpeg", "url": "https://example.com/b.jpg"}]}])
    assert got == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/b.jpg"}}]}]


def test_a_tool_round_trip_becomes_tool_calls_and_tool_messages() -> None:
    got = ui.to_gateway_messages([
        {"id": "u", "role": "user", "parts": [{"type": "text", "text": "Time?"}]},
        {"id": "a", "role": "assistant", "parts": [
            {"type": "step-start"},
            {"type": "reasoning", "text": "use the tool", "state": "done"},
            {"type": "tool-get_time", "toolCallId": "call_1", "state": "output-available",
             "input": {"tz": "UTC"}, "output": {"time": "12:00"}},
            {"type": "dynamic-tool", "toolName": "lookup", "toolCallId": "call_2",
             "state": "output-available", "input": {}, "output": "plain"},
            {"type": "tool-broken", "toolCallId": "call_3", "state": "output-error",
             "input": {"x": 1}, "errorText": "it failed"},
            {"type": "tool-pending", "toolCallId": "call_4", "state": "input-available",
             "input": {}},
            {"type": "step-start"},
            {"type": "text", "text": "It is ", "state": "done"},
            {"type": "text", "text": "noon."}]}])
    calls = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}}
             for i, n, a in (("call_1", "get_time", '{"tz":"UTC"}'), ("call_2", "lookup", "{}"),
                             ("call_3", "broken", '{"x":1}'))]
    assert got == [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"time":"12:00"}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "plain"},
        {"role": "tool", "tool_call_id": "call_3", "content": "it failed"},
        {"role": "assistant", "content": "It is noon."}]


def test_text_after_tool_calls_without_a_step_start_is_the_next_message() -> None:
    got = ui.to_gateway_messages([{"id": "a", "role": "assistant", "parts": [
        {"type": "text", "text": "Let me check."},
        {"type": "tool-f", "toolCallId": "c", "state": "output-available", "input": {},
         "output": 1},
        {"type": "text", "text": "One."}]}])
    assert [m["role"] for m in got] == ["assistant", "tool", "assistant"]
    assert (got[0]["content"], got[2]["content"]) == ("Let me check.", "One.")


@pytest.mark.parametrize(("messages", "param"), [
    ("hi", "messages"),
    ([{"role": "user"}], "messages.0.parts"),
    ([{"role": "robot", "parts": []}], "messages.0.role"),
    ([{"role": "user", "parts": [{"text": "x"}]}], "messages.0.parts.0"),
    ([{"role": "user", "parts": [{"type": "text", "text": 3}]}], "messages.0.parts.0.text"),
    ([{"role": "user", "parts": [{"type": "file", "mediaType": "application/pdf", "url": "x"}]}],
     "messages.0.parts.0.mediaType"),
])
def test_messages_the_gateway_cannot_send_name_their_place(messages: Any, param: str) -> None:
    with pytest.raises(ui.MessagesError) as caught:
        ui.to_gateway_messages(messages)
    assert caught.value.param == param


def test_the_chat_body_becomes_a_stream_request() -> None:
    chat_id, body = chat_request({
        "id": "chat_1", "trigger": "submit-message", "messageId": None,
        "messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 5}, "demo/echo")
    assert chat_id == "chat_1"
    assert body == {"model": "demo/echo", "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}]}
    assert chat_request({"id": "c", "model": "demo/lorem", "messages": []}, "demo/echo"
                        )[1]["model"] == "demo/lorem"
    for bad in ({"messages": []}, {"id": "a/b", "messages": []}, {"id": "", "messages": []}):
        with pytest.raises(InvalidRequest) as caught:
            chat_request(bad, "demo/echo")
        assert caught.value.param == "id"
    with pytest.raises(InvalidRequest) as caught:
        chat_request({"id": "c", "messages": [{"role": "x", "parts": []}]}, "demo/echo")
    assert caught.value.param == "messages.0.role"


def test_the_answer_continues_a_last_assistant_message() -> None:
    assert ui.continues_assistant([{"role": "user"}, {"role": "assistant"}])
    assert not ui.continues_assistant([{"role": "assistant"}, {"role": "user"}])
    assert not ui.continues_assistant([])


# --- the Flask extension: a host's own /api/chat ----------------------------------------


def test_a_host_answers_use_chat_at_its_own_route(closing: Any) -> None:  # noqa: F811
    from flask import request as flask_request

    from sse_gateway.errors import NotFound, StreamsError
    from sse_gateway.flask import error_response
    from tests.test_flask_ext import OWNER_HEADER, bound

    app, ext, streams = bound(closing)

    @app.post("/api/chat")
    def chat() -> Any:
        try:
            return ext.ai_sdk_chat(flask_request.get_json())
        except StreamsError as exc:  # as a host renders the extension's refusals
            return error_response(exc)

    @app.get("/api/chat/<chat_id>/stream")
    def resume(chat_id: str) -> Any:
        return ext.ai_sdk_resume(chat_id)

    @app.delete("/api/chat/<chat_id>/stream")
    def stop(chat_id: str) -> Any:
        try:
            return ext.ai_sdk_stop(chat_id)
        except NotFound:
            return "", 404

    client = app.test_client()
    alice = {OWNER_HEADER: "alice"}
    body = {"id": "chat_1", "trigger": "submit-message", "messageId": None,
            "messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": "hi"}]}]}
    answer = client.post("/api/chat", json=body, headers=alice)
    assert answer.status_code == 200
    assert answer.headers["x-vercel-ai-ui-message-stream"] == "v1"
    got = chunks(answer.get_data())
    stream_id = answer.headers["X-Stream-ID"]
    assert [c for _, c in got] == [
        {"type": "start", "messageId": f"msg_{stream_id}"}, {"type": "start-step"},
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "Hello"},
        {"type": "text-delta", "id": "text-1", "delta": " world"},
        {"type": "text-end", "id": "text-1"}, {"type": "finish-step"}, {"type": "finish"},
        "[DONE]"]
    # "detach" is refused before anything starts: no stream, no provider request.
    refused = client.post("/api/chat", json={**body, "id": "chat_2", "detach": True},
                          headers=alice)
    assert (refused.status_code, refused.get_json()["error"]["param"]) == (400, "detach")
    assert streams.active == 0
    assert client.get("/api/chat/chat_2/stream", headers=alice).status_code == 204
    assert client.get("/api/chat/chat_1/stream", headers=alice).status_code == 204  # ended
    assert client.delete("/api/chat/chat_1/stream", headers=alice).status_code == 200
    assert client.delete("/api/chat/chat_1/stream",
                         headers={OWNER_HEADER: "bob"}).status_code == 404
