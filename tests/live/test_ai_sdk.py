"""The Vercel AI SDK's own client against the real gateway: the UI message stream dialect.

The client is the pinned npm ``ai`` package (AI SDK 5, latest), ``ai6`` (AI SDK 6,
latest) and ``ai5-strict`` (5.0.91: strict chunk schemas, no ``finishReason``), in
``tests/clients/package.json``; ``tests/clients/ai-sdk-chat.mjs`` drives its
``DefaultChatTransport`` (what ``useChat`` uses: its own SSE parser and chunk schema,
which errors the stream on any chunk it does not accept) and ``readUIMessageStream``
(useChat's message assembly), and prints what it got. Checked: exact text, reasoning
and a tool call as chunks and as the assembled message; every chunk validated; the
tool result sent back as useChat does continues the same message; what useChat sees
of a refused request and of an error mid-stream; Stop (``DELETE``) cancels and the
provider connection closes; ``reconnectToStream`` gets a running chat's stream from
the start, and 204 (null) when the chat runs none.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

import fake_wire as fw
from tests.fake_provider import FakeProvider
from tests.live.gateway import GatewayServer
from tests.live.test_sse_clients import node_driver, npm_clients  # noqa: F401 - fixture

PACKAGES = ["ai", "ai6", "ai5-strict"]
SCRIPT = "ai-sdk-chat.mjs"
API = "/v1/ai-sdk/chat"


def chat_id() -> str:
    return f"chat_{secrets.token_hex(6)}"


def user(text: str) -> dict[str, Any]:
    return {"id": f"u_{secrets.token_hex(4)}", "role": "user",
            "parts": [{"type": "text", "text": text}]}


def run(npm_clients: Path, gateway: GatewayServer, package: str,  # noqa: F811
        **config: Any) -> dict[str, Any]:
    """Run the driver to its end; its lines sorted by kind."""
    config = {"package": package, "api": gateway.url + API, **config}
    with node_driver(npm_clients, SCRIPT, config) as driver:
        lines = driver.finish()
        assert lines[-1] == {"end": True}, (lines, driver.stderr())
    got: dict[str, Any] = {"chunks": [], "lines": lines}
    for line in lines:
        if "chunk" in line:
            got["chunks"].append(line["chunk"])
        else:
            got.update(line)
    assert "streamError" not in got, got  # every chunk passed the package's schema
    return got


def kinds(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["type"] for c in chunks]


@pytest.mark.parametrize("package", PACKAGES)
def test_text_reasoning_and_a_tool_call(npm_clients: Path, gateway: GatewayServer,  # noqa: F811
                                        fake: FakeProvider, package: str) -> None:
    model = fake.scenario(tokens=[
        fw.Reasoning("The user wants "), fw.Reasoning("the time."), "Let me ", "check é👋.",
        fw.ToolCall(0, "call_t1", "get_time"), fw.ToolArgs(0, '{"timezone": '),
        fw.ToolArgs(0, '"UTC"}')], finish_reason="tool_calls")
    chat = chat_id()
    got = run(npm_clients, gateway, package, chatId=chat,
              messages=[user("What time is it?")], body={"model": f"openai/{model}"})
    chunks = got["chunks"]
    stream_id = chunks[0]["messageId"].removeprefix("msg_")
    assert chunks == [
        {"type": "start", "messageId": f"msg_{stream_id}"}, {"type": "start-step"},
        {"type": "reasoning-start", "id": "reasoning-1"},
        {"type": "reasoning-delta", "id": "reasoning-1", "delta": "The user wants "},
        {"type": "reasoning-delta", "id": "reasoning-1", "delta": "the time."},
        {"type": "reasoning-end", "id": "reasoning-1"},
        {"type": "text-start", "id": "text-3"},
        {"type": "text-delta", "id": "text-3", "delta": "Let me "},
        {"type": "text-delta", "id": "text-3", "delta": "check é👋."},
        {"type": "text-end", "id": "text-3"},
        {"type": "tool-input-start", "toolCallId": "call_t1", "toolName": "get_time"},
        {"type": "tool-input-delta", "toolCallId": "call_t1", "inputTextDelta": '{"timezone": '},
        {"type": "tool-input-delta", "toolCallId": "call_t1", "inputTextDelta": '"UTC"}'},
        {"type": "tool-input-available", "toolCallId": "call_t1", "toolName": "get_time",
         "input": {"timezone": "UTC"}},
        {"type": "finish-step"}, {"type": "finish"}]
    message = got["message"]
    assert (message["id"], message["role"]) == (f"msg_{stream_id}", "assistant")
    assert [p["type"] for p in message["parts"]] == [
        "step-start", "reasoning", "text", "tool-get_time"]
    assert message["parts"][1]["text"] == "The user wants the time."
    assert message["parts"][2]["text"] == "Let me check é👋."
    tool = message["parts"][3]
    assert (tool["toolCallId"], tool["state"], tool["input"]) == (
        "call_t1", "input-available", {"timezone": "UTC"})
    assert fake.wait_closed(model).body["messages"] == [  # type: ignore[index]
        {"role": "user", "content": "What time is it?"}]
    assert fake.wait_closed(model).outcome == "complete"

    # useChat sends the tool's result back on the same message: the answer continues it.
    tool.update(state="output-available", output={"time": "12:00 UTC"})
    answer = fake.scenario(tokens=["It is ", "noon."])
    again = run(npm_clients, gateway, package, chatId=chat,
                messages=[user("What time is it?"), message], continueMessage=message,
                body={"model": f"openai/{answer}"})
    assert again["chunks"][:1] == [{"type": "start"}]  # no new message id: it continues
    final = again["message"]
    assert final["id"] == f"msg_{stream_id}"
    assert [p["type"] for p in final["parts"]] == [
        "step-start", "reasoning", "text", "tool-get_time", "step-start", "text"]
    assert final["parts"][-1]["text"] == "It is noon."
    assert fake.wait_closed(answer).body["messages"] == [  # type: ignore[index]
        {"role": "user", "content": "What time is it?"},
        {"role": "assistant", "content": "Let me check é👋.", "tool_calls": [
            {"id": "call_t1", "type": "function",
             "function": {"name": "get_time", "arguments": '{"timezone":"UTC"}'}}]},
        {"role": "tool", "tool_call_id": "call_t1", "content": '{"time":"12:00 UTC"}'}]


def test_the_default_model_answers_a_request_naming_none(
        npm_clients: Path, gateway: GatewayServer) -> None:  # noqa: F811
    got = run(npm_clients, gateway, "ai", chatId=chat_id(), messages=[user("one two three")])
    assert got["message"]["parts"][-1] == {"type": "text", "text": "one two three",
                                           "state": "done"}


@pytest.mark.parametrize("package", ["ai", "ai6"])
def test_errors_as_use_chat_sees_them(npm_clients: Path, gateway: GatewayServer,  # noqa: F811
                                      fake: FakeProvider, package: str) -> None:
    refused = run(npm_clients, gateway, package, chatId=chat_id(), messages=[user("hi")],
                  body={"model": "nowhere/none"})
    error_body = json.loads(refused["requestError"])["error"]  # the Error's message: the body
    assert (error_body["code"], error_body["param"]) == ("unknown_model", "model")
    assert error_body["message"] == "unknown provider 'nowhere' (known: demo, openai, anthropic)"

    bad = run(npm_clients, gateway, package, chatId=chat_id(),
              messages=[{"id": "x", "role": "user", "parts": [
                  {"type": "file", "mediaType": "application/pdf", "url": "data:,x"}]}])
    assert json.loads(bad["requestError"])["error"]["param"] == "messages.0.parts.0.mediaType"

    model = fake.scenario(tokens=["Part", "ial"], error_event_after=2)
    failed = run(npm_clients, gateway, package, chatId=chat_id(), messages=[user("hi")],
                 body={"model": f"openai/{model}"})
    error = failed["chunks"][-1]
    assert kinds(failed["chunks"]) == ["start", "start-step", "text-start", "text-delta",
                                       "text-delta", "text-end", "error"]
    assert failed["chunkError"] == error["errorText"] and error["errorText"]
    assert failed["message"]["parts"][-1]["text"] == "Partial"


def test_stop_cancels_the_stream_and_closes_the_provider_connection(
        npm_clients: Path, gateway: GatewayServer, fake: FakeProvider) -> None:  # noqa: F811
    model = fake.scenario(tokens=[f"w{i} " for i in range(400)], delay=0.02)
    chat = chat_id()
    assert gateway.request("DELETE", f"{API}/{chat}/stream").status == 404
    config = {"package": "ai", "api": gateway.url + API, "chatId": chat,
              "messages": [user("go")], "body": {"model": f"openai/{model}"}}
    with node_driver(npm_clients, SCRIPT, config) as driver:
        driver.wait_for(lambda line: line.get("chunk", {}).get("type") == "text-delta")
        stopped = gateway.request("DELETE", f"{API}/{chat}/stream")
        assert (stopped.status, stopped.json()["status"]) == (202, "running")
        lines = driver.finish()
    chunks = [line["chunk"] for line in lines if "chunk" in line]
    assert kinds(chunks)[-2:] == ["text-end", "abort"]
    assert not any("streamError" in line or "chunkError" in line for line in lines)
    assert fake.wait_closed(model).outcome == "peer_closed"
    again = gateway.request("DELETE", f"{API}/{chat}/stream")
    assert (again.status, again.json()["status"]) == (200, "cancelled")


@pytest.mark.parametrize("package", ["ai", "ai6"])
def test_reconnect_resumes_a_running_chat_and_finds_none_otherwise(
        npm_clients: Path, gateway: GatewayServer, fake: FakeProvider,  # noqa: F811
        package: str) -> None:
    chat = chat_id()
    nothing = run(npm_clients, gateway, package, action="resume", chatId=chat)
    assert nothing.get("noStream") is True

    words = [f"w{i} " for i in range(30)]
    model = fake.scenario(tokens=[fw.Reasoning("think"), *words], delay=0.03)
    first = gateway.stream("POST", API, {"id": chat, "model": f"openai/{model}",
                                         "messages": [user("go")], "trigger": "submit-message"})
    assert first.status == 200
    assert first.header("x-vercel-ai-ui-message-stream") == "v1"
    stream_id = first.header("X-Stream-ID")
    first.read_until(lambda e: e.data.startswith('{"type":"text-delta"'))
    first.drop()  # the page reloads

    resumed = run(npm_clients, gateway, package, action="resume", chatId=chat)
    assert resumed["chunks"][0] == {"type": "start", "messageId": f"msg_{stream_id}"}
    assert kinds(resumed["chunks"])[-2:] == ["finish-step", "finish"]
    parts = resumed["message"]["parts"]
    assert [p["type"] for p in parts] == ["step-start", "reasoning", "text"]
    assert (parts[1]["text"], parts[2]["text"]) == ("think", "".join(words))
    assert fake.wait_closed(model).outcome == "complete"
    assert run(npm_clients, gateway, package, action="resume", chatId=chat).get("noStream")


def test_resume_after_last_event_id_is_the_rest_byte_for_byte(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=[fw.Reasoning("a"), "b", "c", "d"], delay=0.2)
    chat = chat_id()
    whole = gateway.stream("POST", API, {"id": chat, "model": f"openai/{model}",
                                         "messages": [user("go")]})
    mid = whole.read_until(lambda e: e.data.startswith('{"type":"text-delta"'))
    assert mid.event.id is not None
    position = int(mid.event.id)
    rest = gateway.stream("GET", f"{API}/{chat}/stream", headers={"Last-Event-ID": str(position)})
    assert rest.status == 200
    rest.read_all()
    whole.read_all()
    tail = bytes(whole.raw)[bytes(whole.raw).index(f"id: {position + 1}\n".encode()):]
    assert bytes(rest.raw).removeprefix(b"retry: 2000\n") == tail
    assert tail.endswith(b"data: [DONE]\n\n")
