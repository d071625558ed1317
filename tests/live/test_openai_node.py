"""The official ``openai`` npm package (Node) as a client of the real gunicorn:
``POST /v1/chat/completions``.

The client is the pinned npm ``openai`` in ``tests/clients/package.json`` (``make
clients``); ``tests/clients/openai-chat.mjs`` drives ``new OpenAI({baseURL, apiKey})``
and prints what it got, one JSON object a line. Checked against the fake provider:
exact streamed text through hostile tokens, a tool call whose arguments come split,
``reasoning_content``, usage (``stream_options.include_usage``), the stream helper's
``finalChatCompletion()``, an unstreamed completion, the SDK's error class for an
unknown model (streamed or not) and for an error mid-stream, and a cancel from another
request (``DELETE /v1/streams/<id>``, the id from the response's ``X-Stream-ID``)
that ends the SDK's iteration with an ``APIError`` and closes the provider connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fake_wire as fw
from tests.fake_provider import FakeProvider
from tests.live.gateway import GatewayServer
from tests.live.test_sse_clients import node_driver, npm_clients  # noqa: F401 - fixture

SCRIPT = "openai-chat.mjs"
# Tokens that would break a naive SSE writer or reader: event-stream syntax inside the
# text, a [DONE] look-alike, CR/LF, JSON that looks like an error, non-ASCII.
HOSTILE = ["Hello", "\n\ndata: [DONE]\n\n", "event: error\r\n", "id: 99\rretry: 1\n",
           '{"error": {"code": "x"}}', ": ping\n\n", "é 👋🏽 \"q\" \\", "\u2028\u2029\t", " end."]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}


def run(npm_clients: Path, gateway: GatewayServer, mode: str,  # noqa: F811
        **config: Any) -> dict[str, Any]:
    """Run the driver to its end; its lines sorted by kind."""
    config = {"baseURL": gateway.url + "/v1", "apiKey": "unused", "mode": mode, **config}
    with node_driver(npm_clients, SCRIPT, config) as driver:
        lines = driver.finish()
        assert lines and lines[-1] == {"end": True}, (lines, driver.stderr())
    got: dict[str, Any] = {"chunks": [], "lines": lines}
    for line in lines:
        if "chunk" in line:
            got["chunks"].append(line["chunk"])
        else:
            got.update(line)
    return got


def test_streamed_hostile_text_exact_with_usage(npm_clients: Path, gateway: GatewayServer,  # noqa: F811
                                                fake: FakeProvider) -> None:
    model = fake.scenario(tokens=HOSTILE, input_tokens=11, cache_read_input_tokens=3)
    got = run(npm_clients, gateway, "stream", model=f"openai/{model}")
    assert "error" not in got, got
    chunks, result = got["chunks"], got["result"]
    assert result["content"] == "".join(HOSTILE)
    assert [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]] == [
        "", *HOSTILE, None]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["id"].startswith("chatcmpl-") and {c["id"] for c in chunks} == {
        chunks[0]["id"]}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {f"openai/{model}"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert result["finish_reason"] == "stop"
    assert result["usage"] == chunks[-1]["usage"] == {
        "prompt_tokens": 11, "completion_tokens": len(HOSTILE),
        "total_tokens": 11 + len(HOSTILE), "prompt_tokens_details": {"cached_tokens": 3},
        "completion_tokens_details": {"reasoning_tokens": 0}}
    assert (result["reasoning_content"], result["refusal"], result["tool_calls"]) == ("", "", [])
    assert fake.wait_closed(model).outcome == "complete"


def test_streamed_tool_call_with_split_arguments(npm_clients: Path, gateway: GatewayServer,  # noqa: F811
                                                 fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["Checking.", fw.ToolCall(0, "call_w", "get_weather"),
                                  fw.ToolArgs(0, '{"ci'), fw.ToolArgs(0, 'ty": "Par'),
                                  fw.ToolArgs(0, 'is"}')], finish_reason="tool_calls")
    got = run(npm_clients, gateway, "stream", model=f"openai/{model}", tools=[WEATHER],
              messages=[{"role": "user", "content": "weather in Paris?"}])
    assert "error" not in got, got
    result = got["result"]
    assert result["content"] == "Checking."
    assert result["tool_calls"] == [{"index": 0, "id": "call_w", "name": "get_weather",
                                     "arguments": '{"city": "Paris"}', "fragments": 3}]
    assert result["finish_reason"] == "tool_calls"
    calls = [c["choices"][0]["delta"]["tool_calls"] for c in got["chunks"]
             if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
    assert [[(t["index"], t.get("id"), (t.get("function") or {}).get("name"),
              (t.get("function") or {}).get("arguments")) for t in call] for call in calls] == [
        [(0, "call_w", "get_weather", "")], [(0, None, None, '{"ci')],
        [(0, None, None, 'ty": "Par')], [(0, None, None, 'is"}')]]
    assert result["usage"]["completion_tokens"] == 5
    assert fake.wait_closed(model).body["tools"][0]["function"]["name"] == "get_weather"


def test_streamed_reasoning_content(npm_clients: Path, gateway: GatewayServer,  # noqa: F811
                                    fake: FakeProvider) -> None:
    model = fake.scenario(tokens=[fw.Reasoning("Let me"), fw.Reasoning(" think. é"),
                                  "Answer", ": 4."], reasoning_tokens=2)
    got = run(npm_clients, gateway, "stream", model=f"openai/{model}",
              params={"reasoning_effort": "low"})
    assert "error" not in got, got
    result = got["result"]
    assert (result["reasoning_content"], result["content"]) == ("Let me think. é", "Answer: 4.")
    assert [c["choices"][0]["delta"].get("reasoning_content") for c in got["chunks"]
            if c["choices"] and "reasoning_content" in c["choices"][0]["delta"]] == [
        "Let me", " think. é"]
    assert result["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2}
    assert result["finish_reason"] == "stop"
    assert fake.wait_closed(model).body["reasoning_effort"] == "low"


def test_stream_helper_final_chat_completion(npm_clients: Path, gateway: GatewayServer,  # noqa: F811
                                             fake: FakeProvider) -> None:
    model = fake.scenario(tokens=[fw.Reasoning("hm"), "Checking.",
                                  fw.ToolCall(0, "call_w", "get_weather", '{"ci'),
                                  fw.ToolArgs(0, 'ty": "Paris"}')], finish_reason="tool_calls")
    got = run(npm_clients, gateway, "helper", model=f"openai/{model}", tools=[WEATHER],
              params={"stream_options": {"include_usage": True}})
    assert "error" not in got, got
    result = got["result"]
    assert result["finish_reason"] == "tool_calls"
    assert result["message"] == {
        "role": "assistant", "reasoning_content": "hm", "content": "Checking.", "refusal": None,
        "tool_calls": [{"id": "call_w", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}], "parsed": None}
    assert result["usage"]["completion_tokens"] == 4


def test_not_streamed_completion(npm_clients: Path, gateway: GatewayServer,  # noqa: F811
                                 fake: FakeProvider) -> None:
    model = fake.scenario(tokens=[fw.Reasoning("hm"), *HOSTILE], input_tokens=5)
    got = run(npm_clients, gateway, "create", model=f"openai/{model}")
    assert "error" not in got, got
    result = got["result"]
    assert result["object"] == "chat.completion" and result["id"].startswith("chatcmpl-")
    assert result["model"] == f"openai/{model}"
    assert result["finish_reason"] == "stop"
    message = result["message"]
    assert (message["role"], message["content"]) == ("assistant", "".join(HOSTILE))
    assert message["reasoning_content"] == "hm"
    assert result["usage"]["prompt_tokens"] == 5
    assert result["usage"]["completion_tokens"] == len(HOSTILE) + 1
    assert result["usage"]["total_tokens"] == 5 + len(HOSTILE) + 1


def test_an_unknown_model_is_a_bad_request_error(npm_clients: Path,  # noqa: F811
                                                 gateway: GatewayServer) -> None:
    for stream in (False, True):
        got = run(npm_clients, gateway, "error", model="nowhere/model", stream=stream)
        assert "result" not in got and not got["chunks"], got
        message = "unknown provider 'nowhere' (known: demo, openai, anthropic)"
        assert got["error"] == {
            "class": "BadRequestError", "isAPIError": True, "status": 400,
            "code": "unknown_model", "type": "invalid_request_error", "param": "model",
            "message": f"400 {message}",
            "body": {"message": message, "type": "invalid_request_error",
                     "code": "unknown_model", "param": "model"}}


def test_an_error_mid_stream_is_an_api_error(npm_clients: Path, gateway: GatewayServer,  # noqa: F811
                                             fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["a", "b", "c"], error_event_after=2)
    got = run(npm_clients, gateway, "stream", model=f"openai/{model}")
    assert "result" not in got, got
    assert [c["choices"][0]["delta"].get("content") for c in got["chunks"]] == ["", "a", "b"]
    message = "openai reported an error during the stream"
    assert got["error"] == {
        "class": "APIError", "isAPIError": True, "status": None,
        "code": "upstream_unavailable", "type": "server_error", "param": None,
        "message": message, "body": {"message": message, "type": "server_error",
                                     "code": "upstream_unavailable", "param": None}}


def test_a_cancel_from_another_request_ends_the_iteration(npm_clients: Path,  # noqa: F811
                                                          gateway: GatewayServer,
                                                          fake: FakeProvider) -> None:
    model = fake.scenario(tokens=[f"w{i} " for i in range(400)], delay=0.05)
    config = {"baseURL": gateway.url + "/v1", "apiKey": "unused", "mode": "cancel",
              "model": f"openai/{model}"}
    with node_driver(npm_clients, SCRIPT, config) as driver:
        started = driver.wait_for(lambda line: "started" in line)
        stream_id = started["stream_id"]
        assert stream_id
        reply = gateway.request("DELETE", f"/v1/streams/{stream_id}")
        assert reply.status == 202
        lines = driver.finish()
        assert lines[-1] == {"end": True}, (lines, driver.stderr())
    contents = [line["chunk"]["choices"][0]["delta"].get("content") for line in lines
                if "chunk" in line]
    assert contents[:2] == ["", "w0 "]
    assert len(contents) < 400
    assert lines[-2] == {"error": {
        "class": "APIError", "isAPIError": True, "status": None, "code": "cancelled",
        "type": "cancelled", "param": None, "message": "the stream was cancelled (deleted)",
        "body": {"message": "the stream was cancelled (deleted)", "type": "cancelled",
                 "code": "cancelled", "param": None}}}
    assert fake.wait_closed(model).outcome == "peer_closed"
    assert gateway.request("GET", f"/v1/streams/{stream_id}").json()["status"] == "cancelled"
