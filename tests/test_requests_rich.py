"""The richer request fields of ``POST /v1/streams`` (contract, "Richer requests").

Each new field valid and invalid, with the exact 400/413 answer through the
app; the translation into ``ChatRequest``; hypothesis properties (any valid
body parses and round-trips faithfully, any junk in a field is a 400 naming
that field, never another exception); the providers' ``check()`` before
anything streams, for the model and each fallback, also through the Flask
extension's ``stream()``.
"""

from __future__ import annotations

import base64
import json
import re
import string
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import create_app
from app.settings import Settings, SettingsError
from sse_gateway.broker import BrokerOptions
from sse_gateway.config import StreamsConfig
from sse_gateway.errors import InvalidRequest, NotFound, RequestTooLarge
from sse_gateway.flask import Streaming, error_response
from sse_gateway.providers.base import (
    ChatRequest,
    ImagePart,
    Message,
    NamedTool,
    TextPart,
    Tool,
    ToolCall,
    Unsupported,
)
from sse_gateway.results import Message as Assembled
from sse_gateway.streams import Streams
from sse_gateway.validation import (
    MAX_JSON_DEPTH,
    BodyTooLarge,
    InvalidBody,
    StreamRequest,
    parse_stream_request,
)
from tests.test_hooks import settled
from tests.test_streams import HELLO, GreenMemoryBroker, Scripted, names, read_all

# The bounds of these tests (the app's settings and parse()'s arguments alike).
MAX_TOOLS, MAX_TOOLS_BYTES, MAX_IMAGE_BYTES = 3, 600, 12
LIMITS: dict[str, Any] = {"max_tokens_limit": 100, "max_messages": 8, "max_resume_grace_s": 300,
                          "max_fallbacks": 1, "max_tools": MAX_TOOLS,
                          "max_tools_bytes": MAX_TOOLS_BYTES, "max_image_bytes": MAX_IMAGE_BYTES}


@pytest.fixture(scope="module")
def app() -> Flask:
    return create_app({"MODELS": "demo/echo", "MAX_TOKENS_LIMIT": 100, "MAX_MESSAGES": 8,
                       "MAX_FALLBACKS": 1, "MAX_TOOLS": MAX_TOOLS,
                       "MAX_TOOLS_BYTES": MAX_TOOLS_BYTES, "MAX_IMAGE_BYTES": MAX_IMAGE_BYTES,
                       "MAX_CONTENT_LENGTH": 1 << 20, "RATELIMIT_CREATE": ""})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def post(client: FlaskClient, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body)
    reply = client.post("/v1/streams", data=data, content_type="application/json")
    return reply.status_code, reply.get_json()


def parse(body: Any, **limits: Any) -> StreamRequest:
    return parse_stream_request(json.dumps(body).encode(), **{**LIMITS, **limits})


def image(size: int, media: str = "png") -> str:
    return f"data:image/{media};base64," + base64.b64encode(bytes(range(size))).decode()


U = {"role": "user", "content": "What time is it?"}
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'}}
A = {"role": "assistant", "content": None, "tool_calls": [CALL]}
T = {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}
TOOL = {"type": "function", "function": {"name": "get_time", "description": "The time now",
                                         "parameters": {"type": "object", "properties": {}}}}
IMG = {"type": "image_url", "image_url": {"url": image(MAX_IMAGE_BYTES)}}


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "demo/echo", "messages": list(messages or [U]), **fields}


def with_call(**call: Any) -> dict[str, Any]:
    """The assistant message A with its one call changed."""
    return {**A, "tool_calls": [{**CALL, **call}]}


def nested(depth: int) -> dict[str, Any]:
    """A JSON object nested ``depth`` levels deep."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"items": value}
    return value


def tools_of_size(size: int) -> list[dict[str, Any]]:
    """One tool whose list is exactly ``size`` bytes of compact UTF-8 JSON (the
    description's "é" is two bytes: bytes are counted, not characters)."""
    base = [{"type": "function", "function": {"name": "t", "description": ""}}]
    room = size - len(json.dumps(base, separators=(",", ":")).encode())
    description = "é" * (room // 2) + "d" * (room % 2)
    return [{"type": "function", "function": {"name": "t", "description": description}}]


M0 = "messages.0"
M1 = "messages.1"
C0 = "messages.0.content.0"
MUST_BE_URL = "must be an https:// URL or a data:image/<type>;base64,<data> URL"
ONLY_USER = "images are accepted only in user messages"
NULL_CONTENT = "may be null only in an assistant message with tool_calls"
NAME_RULE = "must be 1 to 64 characters of a-z A-Z 0-9 _ -"
DEEP = f"must not be nested more than {MAX_JSON_DEPTH} levels deep"
TOOL_CHOICE = ("Input should be 'auto', 'none', 'required' or "
               '{"type": "function", "function": {"name": ...}}')


def part(**image_url: Any) -> dict[str, Any]:
    return chat({"role": "user", "content": [{"type": "image_url", "image_url": image_url}]})


BAD = [
    # content: a string or a non-empty list of parts
    (chat({"role": "user", "content": 3}), f"{M0}.content",
     "Input should be a string or a list of parts"),
    (chat({"role": "user", "content": {"type": "text", "text": "x"}}), f"{M0}.content",
     "Input should be a string or a list of parts"),
    (chat({"role": "user", "content": []}), f"{M0}.content", "must be a non-empty list of parts"),
    (chat({"role": "user", "content": ["x"]}), C0, "Input should be a valid dictionary"),
    (chat({"role": "user", "content": [{"text": "x"}]}), f"{C0}.type", "is required"),
    (chat({"role": "user", "content": [{"type": "input_audio"}]}), f"{C0}.type",
     "Input should be 'text' or 'image_url'"),
    (chat({"role": "user", "content": [{"type": "text"}]}), f"{C0}.text", "is required"),
    (chat({"role": "user", "content": [{"type": "text", "text": None}]}), f"{C0}.text",
     "Input should be a valid string"),
    (chat({"role": "user", "content": [{"type": "text", "text": "x", "cache": 1}]}),
     f"{C0}.cache", "unknown field"),
    (chat({"role": "user", "content": [{"type": "image_url"}]}), f"{C0}.image_url",
     "is required"),
    (chat({"role": "user", "content": [{"type": "image_url", "image_url": "https://a.b/c"}]}),
     f"{C0}.image_url", "Input should be a valid dictionary"),
    (part(), f"{C0}.image_url.url", "is required"),
    (part(url=5), f"{C0}.image_url.url", "Input should be a valid string"),
    (part(url="https://a.b/c.png", size=1), f"{C0}.image_url.size", "unknown field"),
    (part(url="http://a.b/c.png"), f"{C0}.image_url.url", MUST_BE_URL),
    (part(url="ftp://a.b/c.png"), f"{C0}.image_url.url", MUST_BE_URL),
    (part(url="data:text/plain;base64,aGk="), f"{C0}.image_url.url", MUST_BE_URL),
    (part(url="data:image/png,aGk="), f"{C0}.image_url.url", MUST_BE_URL),
    (part(url="https://"), f"{C0}.image_url.url", "must be a valid https:// URL"),
    (part(url="https:///c.png"), f"{C0}.image_url.url", "must be a valid https:// URL"),
    (part(url="https://a.b/c d.png"), f"{C0}.image_url.url", "must be a valid https:// URL"),
    (part(url="https://a.b/c\x00.png"), f"{C0}.image_url.url", "must be a valid https:// URL"),
    (part(url="data:image/png;base64,aGk*"), f"{C0}.image_url.url",
     "the data URL's base64 data is malformed"),
    (part(url="data:image/png;base64,aGk"), f"{C0}.image_url.url",
     "the data URL's base64 data is malformed"),
    (part(url="data:image/png;base64,aG k="), f"{C0}.image_url.url",
     "the data URL's base64 data is malformed"),
    (part(url="data:image/png;base64,"), f"{C0}.image_url.url", "the data URL holds no data"),
    (part(url="https://a.b/c.png", detail="low"), f"{C0}.image_url.detail",
     "Input should be 'auto'"),
    (part(url="https://a.b/c.png", detail="high"), f"{C0}.image_url.detail",
     "Input should be 'auto'"),
    (part(url="https://a.b/c.png", detail=None), f"{C0}.image_url.detail",
     "Input should be 'auto'"),
    # images only in user messages
    (chat({"role": "system", "content": [IMG]}), C0, ONLY_USER),
    (chat(U, {"role": "assistant", "content": [{"type": "text", "text": "x"}, IMG]}),
     f"{M1}.content.1", ONLY_USER),
    (chat(U, A, {"role": "tool", "tool_call_id": "call_1", "content": [IMG]}),
     "messages.2.content.0", ONLY_USER),
    # roles and the fields each takes
    (chat({"role": "developer", "content": "x"}), f"{M0}.role",
     "Input should be 'system', 'user', 'assistant' or 'tool'"),
    (chat({"content": "x"}), f"{M0}.role", "is required"),
    (chat("hi"), M0, "Input should be a valid dictionary"),
    (chat({**U, "tool_calls": [CALL]}), f"{M0}.tool_calls", "only assistant messages carry it"),
    (chat({**U, "provider_data": {}}), f"{M0}.provider_data", "only assistant messages carry it"),
    (chat({**U, "reasoning": "x"}), f"{M0}.reasoning", "only assistant messages carry it"),
    (chat({**U, "refusal": None}), f"{M0}.refusal", "only assistant messages carry it"),
    (chat({**U, "tool_call_id": "call_1"}), f"{M0}.tool_call_id",
     "only tool messages carry it"),
    (chat(U, {**A, "tool_call_id": "call_1"}), f"{M1}.tool_call_id",
     "only tool messages carry it"),
    (chat({**U, "name": "ann"}), f"{M0}.name", "unknown field"),
    (chat({"role": "system"}), f"{M0}.content", "is required"),
    (chat({"role": "user", "content": None}), f"{M0}.content", NULL_CONTENT),
    (chat(U, {"role": "assistant", "content": None}), f"{M1}.content", NULL_CONTENT),
    (chat(U, {"role": "assistant", "content": None, "tool_calls": []}), f"{M1}.content",
     NULL_CONTENT),
    (chat(U, {"role": "assistant"}), f"{M1}.content", "is required"),
    (chat(U, A, {**T, "content": None}), "messages.2.content", NULL_CONTENT),
    # assistant tool_calls
    (chat(U, {**A, "tool_calls": "call_1"}), f"{M1}.tool_calls", "Input should be a valid list"),
    (chat(U, {**A, "tool_calls": [5]}), f"{M1}.tool_calls.0",
     "Input should be a valid dictionary"),
    (chat(U, {**A, "tool_calls": [{"type": "function", "function": CALL["function"]}]}),
     f"{M1}.tool_calls.0.id", "is required"),
    (chat(U, {**A, "tool_calls": [{"id": "c", "function": CALL["function"]}]}),
     f"{M1}.tool_calls.0.type", "is required"),
    (chat(U, {**A, "tool_calls": [{"id": "c", "type": "function"}]}),
     f"{M1}.tool_calls.0.function", "is required"),
    (chat(U, with_call(id="")), f"{M1}.tool_calls.0.id", "must not be empty"),
    (chat(U, with_call(id=1)), f"{M1}.tool_calls.0.id", "Input should be a valid string"),
    (chat(U, with_call(type="tool")), f"{M1}.tool_calls.0.type", "Input should be 'function'"),
    (chat(U, with_call(index=0)), f"{M1}.tool_calls.0.index", "unknown field"),
    (chat(U, with_call(function="get_time")), f"{M1}.tool_calls.0.function",
     "Input should be a valid dictionary"),
    (chat(U, with_call(function={"name": "get_time"})), f"{M1}.tool_calls.0.function.arguments",
     "is required"),
    (chat(U, with_call(function={"arguments": "{}"})), f"{M1}.tool_calls.0.function.name",
     "is required"),
    (chat(U, with_call(function={"name": "get_time", "arguments": {"tz": "UTC"}})),
     f"{M1}.tool_calls.0.function.arguments", "Input should be a valid string"),
    (chat(U, with_call(function={"name": "", "arguments": "{}"})),
     f"{M1}.tool_calls.0.function.name", "must not be empty"),
    (chat(U, with_call(function={"name": "f", "arguments": "{}", "extra": 1})),
     f"{M1}.tool_calls.0.function.extra", "unknown field"),
    (chat(U, {**A, "tool_calls": [CALL, CALL]}), f"{M1}.tool_calls.1.id",
     f"'call_1' repeats the id of {M1}.tool_calls.0"),
    (chat(U, {**A, "refusal": 5}), f"{M1}.refusal", "Input should be a valid string"),
    (chat(U, {**A, "reasoning": {"text": "x"}}), f"{M1}.reasoning",
     "Input should be a valid string"),
    (chat(U, {**A, "provider_data": "x"}), f"{M1}.provider_data",
     "Input should be a valid dictionary"),
    (chat(U, {**A, "provider_data": [{"thinking_blocks": []}]}), f"{M1}.provider_data",
     "Input should be a valid dictionary"),
    (chat(U, {**A, "provider_data": nested(MAX_JSON_DEPTH + 1)}), f"{M1}.provider_data", DEEP),
    # tool results answer a call of an earlier assistant message
    (chat(U, A, {"role": "tool", "content": "x"}), "messages.2.tool_call_id", "is required"),
    (chat(U, A, {**T, "tool_call_id": 1}), "messages.2.tool_call_id",
     "Input should be a valid string"),
    (chat(U, A, {**T, "tool_call_id": ""}), "messages.2.tool_call_id", "must not be empty"),
    (chat(U, A, {**T, "tool_call_id": "call_2"}), "messages.2.tool_call_id",
     "'call_2' answers no tool call of an earlier assistant message"),
    (chat(U, T, A), f"{M1}.tool_call_id",
     "'call_1' answers no tool call of an earlier assistant message"),
    (chat(U, A, {**T, "content": [{"type": "text"}]}), "messages.2.content.0.text",
     "is required"),
    # tools
    (chat(tools={}), "tools", "Input should be a valid list"),
    (chat(tools=[TOOL["function"]]), "tools.0.type", "is required"),
    (chat(tools=[5]), "tools.0", "Input should be a valid dictionary"),
    (chat(tools=[{**TOOL, "type": "web_search"}]), "tools.0.type", "Input should be 'function'"),
    (chat(tools=[{"type": "function"}]), "tools.0.function", "is required"),
    (chat(tools=[{**TOOL, "cache_control": {}}]), "tools.0.cache_control", "unknown field"),
    (chat(tools=[{"type": "function", "function": {"description": "x"}}]),
     "tools.0.function.name", "is required"),
    (chat(tools=[{"type": "function", "function": {"name": 5}}]), "tools.0.function.name",
     "Input should be a valid string"),
    (chat(tools=[{"type": "function", "function": {"name": "get time"}}]),
     "tools.0.function.name", NAME_RULE),
    (chat(tools=[{"type": "function", "function": {"name": ""}}]), "tools.0.function.name",
     NAME_RULE),
    (chat(tools=[{"type": "function", "function": {"name": "t" * 65}}]),
     "tools.0.function.name", NAME_RULE),
    (chat(tools=[{"type": "function", "function": {"name": "t", "strict": "yes"}}]),
     "tools.0.function.strict", "Input should be a valid boolean"),
    (chat(tools=[{"type": "function", "function": {"name": "t", "description": 5}}]),
     "tools.0.function.description", "Input should be a valid string"),
    (chat(tools=[{"type": "function", "function": {"name": "t", "parameters": "{}"}}]),
     "tools.0.function.parameters", "Input should be a valid dictionary"),
    (chat(tools=[{"type": "function", "function": {"name": "t", "parameters": []}}]),
     "tools.0.function.parameters", "Input should be a valid dictionary"),
    (chat(tools=[{"type": "function",
                  "function": {"name": "t", "parameters": nested(MAX_JSON_DEPTH + 1)}}]),
     "tools.0.function.parameters", DEEP),
    (chat(tools=[TOOL, {"type": "function", "function": {"name": "x"}}, TOOL]),
     "tools.2.function.name", "'get_time' repeats tools.0"),
    (chat(tools=[{"type": "function", "function": {"name": f"t{i}"}} for i in range(4)]),
     "tools", f"at most {MAX_TOOLS} are accepted"),
    # tool_choice
    (chat(tools=[TOOL], tool_choice="any"), "tool_choice", TOOL_CHOICE),
    (chat(tools=[TOOL], tool_choice=1), "tool_choice", TOOL_CHOICE),
    (chat(tools=[TOOL], tool_choice=True), "tool_choice", TOOL_CHOICE),
    (chat(tools=[TOOL], tool_choice=["auto"]), "tool_choice", TOOL_CHOICE),
    (chat(tools=[TOOL], tool_choice={"type": "function"}), "tool_choice.function",
     "is required"),
    (chat(tools=[TOOL], tool_choice={"function": {"name": "get_time"}}), "tool_choice.type",
     "is required"),
    (chat(tools=[TOOL], tool_choice={"type": "tool", "function": {"name": "get_time"}}),
     "tool_choice.type", "Input should be 'function'"),
    (chat(tools=[TOOL], tool_choice={"type": "function", "function": {}}),
     "tool_choice.function.name", "is required"),
    (chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": 5}}),
     "tool_choice.function.name", "Input should be a valid string"),
    (chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_time"},
                                     "strict": True}), "tool_choice.strict", "unknown field"),
    (chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_date"}}),
     "tool_choice.function.name", "'get_date' is not one of the tools"),
    (chat(tool_choice="auto"), "tool_choice", "is given without tools"),
    (chat(tool_choice="none"), "tool_choice", "is given without tools"),
    (chat(tools=[], tool_choice="required"), "tool_choice", "is given without tools"),
    (chat(tools=None, tool_choice={"type": "function", "function": {"name": "get_time"}}),
     "tool_choice", "is given without tools"),
    # reasoning
    (chat(reasoning="high"), "reasoning", "Input should be a valid dictionary"),
    (chat(reasoning={}), "reasoning", "give effort, budget_tokens or both"),
    (chat(reasoning={"effort": "minimal"}), "reasoning.effort",
     "Input should be 'low', 'medium' or 'high'"),
    (chat(reasoning={"effort": None}), "reasoning.effort",
     "Input should be 'low', 'medium' or 'high'"),
    (chat(reasoning={"budget_tokens": 0}), "reasoning.budget_tokens",
     "Input should be greater than or equal to 1"),
    (chat(reasoning={"budget_tokens": True}), "reasoning.budget_tokens",
     "Input should be a valid integer"),
    (chat(reasoning={"budget_tokens": 1024.0}), "reasoning.budget_tokens",
     "Input should be a valid integer"),
    (chat(reasoning={"budget_tokens": "1024"}), "reasoning.budget_tokens",
     "Input should be a valid integer"),
    (chat(reasoning={"effort": "low", "summary": "auto"}), "reasoning.summary", "unknown field"),
    # response_format
    (chat(response_format="json_object"), "response_format",
     "Input should be a valid dictionary"),
    (chat(response_format={}), "response_format.type", "is required"),
    (chat(response_format={"type": "xml"}), "response_format.type",
     "Input should be 'text', 'json_object' or 'json_schema'"),
    (chat(response_format={"type": "json_object", "schema": {}}), "response_format.schema",
     "unknown field"),
    (chat(response_format={"type": "json_schema"}), "response_format.json_schema",
     "is required"),
    (chat(response_format={"type": "json_schema", "json_schema": []}),
     "response_format.json_schema", "Input should be a valid dictionary"),
    (chat(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
     "response_format.json_schema.name", "is required"),
    (chat(response_format={"type": "json_schema", "json_schema": {"name": "a b"}}),
     "response_format.json_schema.name", NAME_RULE),
    (chat(response_format={"type": "json_schema", "json_schema": {"name": "a",
                                                                  "schema": "{}"}}),
     "response_format.json_schema.schema", "Input should be a valid dictionary"),
    (chat(response_format={"type": "json_schema",
                           "json_schema": {"name": "a", "schema": nested(MAX_JSON_DEPTH + 1)}}),
     "response_format.json_schema.schema", DEEP),
    (chat(response_format={"type": "json_schema", "json_schema": {"name": "a",
                                                                  "strict": "yes"}}),
     "response_format.json_schema.strict", "Input should be a valid boolean"),
    (chat(response_format={"type": "json_schema", "json_schema": {"name": "a",
                                                                  "description": 5}}),
     "response_format.json_schema.description", "Input should be a valid string"),
    (chat(response_format={"type": "json_schema", "json_schema": {"name": "a", "x": 1}}),
     "response_format.json_schema.x", "unknown field"),
    # stop, top_p, seed
    (chat(stop=""), "stop", "must not be empty"),
    (chat(stop=5), "stop", "Input should be a string or a list of strings"),
    (chat(stop={"a": 1}), "stop", "Input should be a string or a list of strings"),
    (chat(stop=[]), "stop", "must be a list of 1 to 4 strings"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop", "must be a list of 1 to 4 strings"),
    (chat(stop=["a", ""]), "stop.1", "must not be empty"),
    (chat(stop=["a", 1]), "stop.1", "Input should be a valid string"),
    (chat(top_p=1.5), "top_p", "Input should be less than or equal to 1"),
    (chat(top_p=-0.1), "top_p", "Input should be greater than or equal to 0"),
    (chat(top_p="0.5"), "top_p", "Input should be a valid number"),
    (chat(top_p=True), "top_p", "Input should be a valid number"),
    (chat(seed=True), "seed", "Input should be a valid integer"),
    (chat(seed=1.0), "seed", "Input should be a valid integer"),
    (chat(seed="7"), "seed", "Input should be a valid integer"),
    (chat(seed=2**63), "seed", "Input should be less than or equal to 9223372036854775807"),
    (chat(seed=-2**63 - 1), "seed",
     "Input should be greater than or equal to -9223372036854775808"),
]


@pytest.mark.parametrize(("body", "param", "message"), BAD)
def test_bad_rich_bodies_answer_400_naming_the_field(client: FlaskClient, body: dict[str, Any],
                                                     param: str, message: str) -> None:
    assert post(client, body) == (400, {"error": {"code": "invalid_request",
                                                  "message": f"{param}: {message}",
                                                  "param": param}})


@pytest.mark.parametrize(("body", "param", "message"), [
    (chat({"role": "user", "content": [{"type": "text", "text": "see"},
                                       {"type": "image_url",
                                        "image_url": {"url": image(MAX_IMAGE_BYTES + 1)}}]}),
     "messages.0.content.1",
     f"the image is {MAX_IMAGE_BYTES + 1} bytes; at most {MAX_IMAGE_BYTES} are accepted"),
    # Over the bound is refused before its base64 is looked at.
    (part(url="data:image/png;base64," + "*" * 20), C0,
     f"the image is 15 bytes; at most {MAX_IMAGE_BYTES} are accepted"),
    (chat(tools=tools_of_size(MAX_TOOLS_BYTES + 1)), "tools",
     f"{MAX_TOOLS_BYTES + 1} bytes of JSON; at most {MAX_TOOLS_BYTES} are accepted"),
])
def test_parts_over_their_size_bound_answer_413(client: FlaskClient, body: dict[str, Any],
                                                param: str, message: str) -> None:
    assert post(client, body) == (413, {"error": {"code": "payload_too_large",
                                                  "message": f"{param}: {message}",
                                                  "param": param}})
    with pytest.raises(BodyTooLarge) as raised:
        parse(body)
    assert (raised.value.param, raised.value.message) == (param, f"{param}: {message}")


def test_parts_at_their_size_bound_are_accepted() -> None:
    tools = tools_of_size(MAX_TOOLS_BYTES)
    assert len(json.dumps(tools, ensure_ascii=False, separators=(",", ":")).encode()) == 600
    assert parse(chat(tools=tools)).request.tools == (
        Tool("t", tools[0]["function"]["description"]),)
    url = image(MAX_IMAGE_BYTES, "webp")
    request = parse(part(url=url, detail="auto"))
    assert request.messages == (Message("user", (ImagePart(url),)),)
    # Padding counts for nothing: 11 bytes is "...=" and 10 "...==".
    for size in (10, 11):
        assert parse(part(url=image(size))).messages[0].content == (ImagePart(image(size)),)


def test_a_body_nested_too_deeply_is_refused_not_crashed(client: FlaskClient) -> None:
    deep = b'{"model": "demo/echo", "prompt": "x", "tools": ' + b"[" * 100000 \
        + b"]" * 100000 + b"}"
    assert post(client, deep) == (400, {"error": {"code": "invalid_request",
                                                  "message": "the body is nested too deeply"}})
    # Deep, but within the JSON parser's reach: the bound names the field.
    schema = nested(500)
    assert post(client, chat(response_format={"type": "json_schema", "json_schema": {
        "name": "deep", "schema": schema}})) == (400, {"error": {
            "code": "invalid_request", "param": "response_format.json_schema.schema",
            "message": f"response_format.json_schema.schema: {DEEP}"}})
    # At the bound it is accepted.
    assert parse(chat(tools=[{"type": "function", "function": {
        "name": "t", "parameters": nested(MAX_JSON_DEPTH)}}]),
        max_tools_bytes=10**6).request.tools[0].parameters == nested(MAX_JSON_DEPTH)


def test_a_hosts_python_value_must_be_json() -> None:
    """The Flask extension passes Python values: a cycle, a set, NaN or a key
    that is not a string is refused like any bad value, never a crash."""
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    for value, message in [
            (cycle, DEEP), ({"a": {1, 2}}, "must be JSON: objects, lists, strings, numbers, "
                            "booleans, null"),
            ({"a": float("nan")}, "must be JSON: no NaN or Infinity"),
            ({"a": [float("-inf")]}, "must be JSON: no NaN or Infinity"),
            ({1: "a"}, "must be JSON: every key a string")]:
        body = chat(tools=[{"type": "function", "function": {"name": "t", "parameters": value}}])
        with pytest.raises(InvalidBody) as raised:
            parse_stream_request(body, **LIMITS)
        assert (raised.value.param, raised.value.message) == (
            "tools.0.function.parameters", f"tools.0.function.parameters: {message}")


def test_every_field_reaches_the_chat_request() -> None:
    thinking = {"anthropic": {"thinking_blocks": [
        {"type": "thinking", "thinking": "Look it up.", "signature": "c2ln"}]}}
    schema = {"type": "object", "properties": {"time": {"type": "string"}},
              "required": ["time"]}
    body = chat(
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is this, and the time?"},
                                     IMG, {"type": "image_url", "image_url": {
                                         "url": "https://example.com/a.png", "detail": "auto"}}]},
        {"role": "assistant", "content": "", "reasoning": "Look it up.", "refusal": None,
         "provider_data": thinking,
         "tool_calls": [CALL, {"id": "call_2", "type": "function",
                               "function": {"name": "get_date", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "Mon"}]},
        T,
        {"role": "assistant", "content": [{"type": "text", "text": "No."}], "refusal": "No."},
        {"role": "user", "content": "Why?"},
        tools=[TOOL, {"type": "function", "function": {"name": "get_date"}}],
        tool_choice={"type": "function", "function": {"name": "get_date"}},
        reasoning={"effort": "medium", "budget_tokens": 2048},
        response_format={"type": "json_schema", "json_schema": {
            "name": "answer", "description": "The answer", "schema": schema, "strict": True}},
        stop=["\n\n", "END"], top_p=0.9, seed=-7, max_tokens=50, temperature=0.5)
    request = parse(body)
    assert request.chat("claude-x") == ChatRequest(
        "claude-x",
        (Message("system", (TextPart("Be brief."),)),
         Message("user", (TextPart("What is this, and the time?"), ImagePart(IMG["image_url"]["url"]),
                          ImagePart("https://example.com/a.png"))),
         Message("assistant", "", tool_calls=(ToolCall("call_1", "get_time", '{"tz": "UTC"}'),
                                              ToolCall("call_2", "get_date", "")),
                 provider_data=thinking),
         Message("tool", (TextPart("Mon"),), tool_call_id="call_2"),
         Message("tool", "12:00", tool_call_id="call_1"),
         Message("assistant", (TextPart("No."),), refusal="No."),
         Message("user", "Why?")),
        max_tokens=50, temperature=0.5,
        tools=(Tool("get_time", "The time now", {"type": "object", "properties": {}}),
               Tool("get_date")),
        tool_choice=NamedTool("get_date"), reasoning_effort="medium", reasoning_budget=2048,
        response_format={"type": "json_schema", "json_schema": {
            "name": "answer", "description": "The answer", "schema": schema, "strict": True}},
        stop=("\n\n", "END"), top_p=0.9, seed=-7)


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, {}),
    ({"stop": "END"}, {"stop": ("END",)}),
    ({"stop": None, "top_p": None, "seed": None, "tools": None, "tool_choice": None,
      "reasoning": None, "response_format": None}, {}),
    ({"tools": [], "top_p": 0, "seed": 0}, {"top_p": 0.0, "seed": 0}),
    ({"top_p": 1}, {"top_p": 1.0}),
    ({"tools": [TOOL], "tool_choice": "none"},
     {"tools": (Tool("get_time", "The time now", {"type": "object", "properties": {}}),),
      "tool_choice": "none"}),
    ({"tools": [{"type": "function", "function": {"name": "a-B_9", "description": None,
                                                  "parameters": None}}],
      "tool_choice": "required"}, {"tools": (Tool("a-B_9"),), "tool_choice": "required"}),
    ({"reasoning": {"effort": "high"}}, {"reasoning_effort": "high"}),
    ({"reasoning": {"budget_tokens": 1}}, {"reasoning_budget": 1}),
    ({"response_format": {"type": "text"}}, {"response_format": {"type": "text"}}),
    ({"response_format": {"type": "json_object"}}, {"response_format": {"type": "json_object"}}),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": None}}},
     {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": None}}}),
])
def test_each_field_alone(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    assert parse(chat(**fields)).chat("m") == ChatRequest("m", (Message("user", U["content"]),),
                                                          **expected)


def test_the_assembled_message_is_accepted_back_unchanged() -> None:
    """GET /v1/streams/<id>?include=message gives what a client sends back next turn."""
    calls = [{"id": "toolu_1", "type": "function",
              "function": {"name": "get_time", "arguments": "{}"}}]
    data = {"anthropic": {"thinking_blocks": [{"type": "redacted_thinking", "data": "abc"}]}}
    with_calls = Assembled("", calls, "thinking...", None, data).public()
    refused = Assembled("", None, None, "I can't.", None).public()
    plain = Assembled("Hello").public()
    request = parse(chat(U, with_calls, {"role": "tool", "tool_call_id": "toolu_1",
                                         "content": "12:00"},
                         refused, plain, {"role": "user", "content": "Thanks"}))
    assert request.messages[1:5] == (
        Message("assistant", "", tool_calls=(ToolCall("toolu_1", "get_time", "{}"),),
                provider_data=data),
        Message("tool", "12:00", tool_call_id="toolu_1"),
        Message("assistant", "", refusal="I can't."),
        Message("assistant", "Hello"))


def test_a_valid_rich_body_passes_the_app_to_model_resolution(client: FlaskClient) -> None:
    """Through HTTP: everything is valid, so the first refusal is the (unserved) model."""
    body = {**chat(U, A, T, tools=[TOOL], tool_choice="auto", reasoning={"effort": "low"},
                   response_format={"type": "json_object"}, stop="x", top_p=0.5, seed=3),
            "model": "demo/lorem"}
    assert post(client, body) == (400, {"error": {
        "code": "unknown_model", "param": "model",
        "message": "model 'demo/lorem' is not served here (see GET /v1/models)"}})


# --- hypothesis: valid bodies round-trip, junk is a 400 naming its field ----------------------

IDS = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)
NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
NAMES = st.from_regex(NAME, fullmatch=True)
TEXT = st.text(max_size=12)
FINITE = st.floats(allow_nan=False, allow_infinity=False)  # what JSON can carry
JSON_SCALARS = st.none() | st.booleans() | st.integers() | FINITE | TEXT
JSON = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)
JSON_OBJECTS = st.dictionaries(TEXT, JSON, max_size=4)
OMIT = object()  # a field left out of the body


def absent(draw: st.DrawFn, field: dict[str, Any], name: str) -> None:
    """Leave ``name`` out, or give it as null: the same thing."""
    if draw(st.booleans()):
        field[name] = None


@st.composite
def text_parts(draw: st.DrawFn) -> tuple[Any, Any]:
    text = draw(TEXT)
    return {"type": "text", "text": text}, TextPart(text)


@st.composite
def image_parts(draw: st.DrawFn) -> tuple[Any, Any]:
    url = draw(st.one_of(
        st.builds(lambda host, path: f"https://{host}/{path}",
                  st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True),
                  st.text(string.ascii_letters + string.digits + "/._-?=&", max_size=20)),
        st.builds(lambda media, data: f"data:image/{media};base64,"
                  + base64.b64encode(data).decode(),
                  st.sampled_from(["png", "jpeg", "gif", "webp", "svg+xml"]),
                  st.binary(min_size=1, max_size=MAX_IMAGE_BYTES))))
    image_url: dict[str, Any] = {"url": url}
    if draw(st.booleans()):
        image_url["detail"] = "auto"
    return {"type": "image_url", "image_url": image_url}, ImagePart(url)


@st.composite
def contents(draw: st.DrawFn, images: bool) -> tuple[Any, Any]:
    if draw(st.booleans()):
        text = draw(TEXT)
        return text, text
    parts = draw(st.lists(text_parts() | image_parts() if images else text_parts(),
                          min_size=1, max_size=3))
    return [raw for raw, _ in parts], tuple(part for _, part in parts)


@st.composite
def calls(draw: st.DrawFn) -> tuple[Any, Any]:
    call_id, name, arguments = draw(IDS), draw(TEXT.filter(bool)), draw(TEXT)
    return ({"id": call_id, "type": "function", "function": {"name": name,
                                                             "arguments": arguments}},
            ToolCall(call_id, name, arguments))


@st.composite
def conversations(draw: st.DrawFn) -> tuple[list[Any], tuple[Message, ...]]:
    raw: list[Any] = []
    expected: list[Message] = []
    called: list[str] = []
    for _ in range(draw(st.integers(1, LIMITS["max_messages"]))):
        role = draw(st.sampled_from(["system", "user", "assistant", "tool"] if called
                                    else ["system", "user", "assistant"]))
        message: dict[str, Any] = {"role": role}
        if role == "tool":
            call_id = draw(st.sampled_from(called))
            content, parts = draw(contents(images=False))
            message.update(tool_call_id=call_id, content=content)
            expected.append(Message("tool", parts, tool_call_id=call_id))
        elif role == "assistant":
            made = draw(st.lists(calls(), max_size=3, unique_by=lambda c: c[0]["id"]))
            if made or draw(st.booleans()):
                message["tool_calls"] = [c for c, _ in made]
            else:
                absent(draw, message, "tool_calls")
            content, parts = draw(contents(images=False))
            if made and draw(st.booleans()):
                content, parts = draw(st.sampled_from([None, OMIT, ""])), ""
            if content is not OMIT:
                message["content"] = content
            refusal = draw(st.none() | TEXT)
            if refusal is not None or draw(st.booleans()):
                message["refusal"] = refusal
            reasoning = draw(st.none() | TEXT)
            if reasoning is not None or draw(st.booleans()):
                message["reasoning"] = reasoning
            data = draw(st.none() | JSON_OBJECTS)
            if data is not None or draw(st.booleans()):
                message["provider_data"] = data
            expected.append(Message("assistant", parts, tool_calls=tuple(c for _, c in made),
                                    refusal=refusal, provider_data=data))
            called.extend(c.id for _, c in made)
        else:
            content, parts = draw(contents(images=role == "user"))
            message["content"] = content
            expected.append(Message(role, parts))
        raw.append(message)
    return raw, tuple(expected)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[dict[str, Any], ChatRequest]:
    """A valid body and the ChatRequest it must become (for provider model "m")."""
    messages, expected = draw(conversations())
    body: dict[str, Any] = {"model": "demo/echo", "messages": messages}
    fields: dict[str, Any] = {}
    tools = draw(st.lists(st.tuples(NAMES, st.none() | TEXT, st.none() | JSON_OBJECTS),
                          max_size=MAX_TOOLS, unique_by=lambda t: t[0]))
    if tools:
        body["tools"] = [{"type": "function", "function": {
            "name": name, **({} if description is None else {"description": description}),
            **({} if parameters is None else {"parameters": parameters})}}
            for name, description, parameters in tools]
        fields["tools"] = tuple(Tool(*tool) for tool in tools)
        choice = draw(st.sampled_from([None, "auto", "none", "required",
                                       *(NamedTool(name) for name, _, _ in tools)]))
        if choice is not None:
            body["tool_choice"] = choice if isinstance(choice, str) else {
                "type": "function", "function": {"name": choice.name}}
            fields["tool_choice"] = choice
    effort = draw(st.sampled_from([None, "low", "medium", "high"]))
    budget = draw(st.none() | st.integers(min_value=1, max_value=10**6))
    if effort is not None or budget is not None:
        body["reasoning"] = {**({} if effort is None else {"effort": effort}),
                             **({} if budget is None else {"budget_tokens": budget})}
        fields.update(reasoning_effort=effort, reasoning_budget=budget)
    response_format = draw(st.none() | st.sampled_from([{"type": "text"},
                                                        {"type": "json_object"}])
                           | st.builds(lambda name, schema, strict: {
                               "type": "json_schema", "json_schema": {
                                   "name": name, "schema": schema, "strict": strict}},
                               NAMES, JSON_OBJECTS, st.none() | st.booleans()))
    if response_format is not None:
        body["response_format"] = response_format
        fields["response_format"] = response_format
    stop = draw(st.none() | TEXT.filter(bool)
                | st.lists(TEXT.filter(bool), min_size=1, max_size=4))
    if stop is not None:
        body["stop"] = stop
        fields["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
    top_p = draw(st.none() | st.floats(0, 1) | st.integers(0, 1))
    if top_p is not None:
        body["top_p"] = top_p
        fields["top_p"] = float(top_p)
    seed = draw(st.none() | st.integers(-2**63, 2**63 - 1))
    if seed is not None:
        body["seed"] = seed
        fields["seed"] = seed
    for name in ("tools", "tool_choice", "reasoning", "response_format", "stop", "top_p",
                 "seed"):
        if name not in body:
            absent(draw, body, name)
    return body, ChatRequest("m", expected, **fields)


PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPERTY
@given(bodies())
def test_any_valid_body_round_trips_into_the_chat_request(
        case: tuple[dict[str, Any], ChatRequest]) -> None:
    body, expected = case
    limits = {**LIMITS, "max_tools_bytes": 10**6}  # the bound has its own tests
    assert parse(body, **limits).chat("m") == expected
    # The Flask extension's path (a Python value, not JSON text) gives the same.
    assert parse_stream_request(body, **limits).chat("m") == expected


def refusal_of(body: dict[str, Any]) -> InvalidBody | None:
    """The parser's refusal of ``body`` (None: accepted); anything but
    InvalidBody escapes and fails the test."""
    try:
        parse(body, max_tools_bytes=10**6, max_image_bytes=10**6)
    except InvalidBody as exc:
        return exc
    return None


def names_field(exc: InvalidBody | None, field: str) -> bool:
    return exc is None or exc.param == field or (exc.param or "").startswith(f"{field}.")


FIELDS = ("messages", "tools", "tool_choice", "reasoning", "response_format", "stop", "top_p",
          "seed")
VALID = chat(U, A, T, tools=[TOOL])


@PROPERTY
@given(st.sampled_from(FIELDS), JSON)
def test_junk_in_a_field_is_refused_naming_that_field(field: str, junk: Any) -> None:
    exc = refusal_of({**VALID, field: junk})
    if field == "messages" and junk is None:  # as if left out: the body has no prompt either
        assert exc is not None
        assert (exc.param, exc.message) == (None, "one of 'messages' or 'prompt' is required")
    else:
        assert names_field(exc, field)


MESSAGE_FIELDS = ("role", "content", "tool_calls", "tool_call_id", "refusal", "reasoning",
                  "provider_data", "name")


@PROPERTY
@given(st.sampled_from([0, 1, 2]), st.sampled_from(MESSAGE_FIELDS), JSON)
def test_junk_in_a_message_is_refused_naming_that_message(index: int, field: str,
                                                          junk: Any) -> None:
    messages = [U, A, T]
    messages[index] = {**messages[index], field: junk}
    exc = refusal_of(chat(*messages, tools=[TOOL]))
    # A junk role or call may make a later tool result unanswered: that message is named.
    assert exc is None or (exc.param or "").startswith("messages.")
    if exc is not None and not (exc.param or "").startswith(f"messages.{index}"):
        assert exc.param == "messages.2.tool_call_id"


@PROPERTY
@given(st.sampled_from(["text", "image_url", "image_url.url", "image_url.detail"]), JSON)
def test_junk_in_a_part_is_refused_naming_that_part(where: str, junk: Any) -> None:
    good = ({"type": "text", "text": "x"} if where == "text" else
            {"type": "image_url", "image_url": {"url": "https://a.b/c.png"}})
    key, _, inner = where.partition(".")
    junked = {**good, key: {**good[key], inner: junk}} if inner else {**good, key: junk}
    exc = refusal_of(chat({"role": "user", "content": [{"type": "text", "text": "a"}, junked]}))
    assert names_field(exc, "messages.0.content.1")


# Values each field can never take.
NOT_JSON_OBJECT = st.one_of(JSON_SCALARS, st.lists(JSON, max_size=3))
INVALID = {
    "messages": st.one_of(JSON_SCALARS.filter(lambda v: v is not None), st.just([]),
                          st.dictionaries(TEXT, JSON, max_size=2),
                          st.lists(JSON_SCALARS | st.lists(JSON), min_size=1, max_size=3),
                          st.lists(st.fixed_dictionaries({"role": TEXT.filter(
                              lambda r: r not in ("system", "user", "assistant", "tool")),
                              "content": TEXT}), min_size=1, max_size=3)),
    "tools": st.one_of(JSON_SCALARS.filter(lambda v: v is not None),
                       st.dictionaries(TEXT, JSON, max_size=2),
                       st.lists(JSON_SCALARS | st.lists(JSON), min_size=1, max_size=3),
                       st.lists(st.dictionaries(st.sampled_from(["type", "name"]), JSON),
                                min_size=1, max_size=3),
                       st.lists(st.fixed_dictionaries({"type": st.just("function"),
                                                       "function": st.fixed_dictionaries(
                                                           {"name": TEXT.filter(
                                                               lambda n: not NAME.fullmatch(n))})}),
                                min_size=1, max_size=3),
                       st.lists(st.just(TOOL), min_size=2, max_size=3)),
    "tool_choice": st.one_of(TEXT.filter(lambda c: c not in ("auto", "none", "required")),
                             st.booleans(), st.integers(), FINITE, st.lists(JSON),
                             st.dictionaries(TEXT, JSON, max_size=3),
                             st.builds(lambda name: {"type": "function",
                                                     "function": {"name": name}},
                                       TEXT.filter(lambda n: n != "get_time"))),
    "reasoning": st.one_of(JSON_SCALARS.filter(lambda v: v is not None), st.lists(JSON),
                           st.just({}),
                           st.fixed_dictionaries({"effort": JSON.filter(
                               lambda e: e not in ("low", "medium", "high"))}),
                           st.fixed_dictionaries({"budget_tokens": JSON.filter(
                               lambda b: not isinstance(b, int) or isinstance(b, bool)
                               or b < 1)}),
                           st.dictionaries(TEXT.filter(
                               lambda k: k not in ("effort", "budget_tokens")), JSON,
                               min_size=1, max_size=2)),
    "response_format": st.one_of(JSON_SCALARS.filter(lambda v: v is not None),
                                 st.lists(JSON), st.just({}),
                                 st.fixed_dictionaries({"type": JSON.filter(
                                     lambda t: t not in ("text", "json_object", "json_schema"))}),
                                 st.fixed_dictionaries({"type": st.just("json_schema"),
                                                        "json_schema": NOT_JSON_OBJECT}),
                                 st.fixed_dictionaries({"type": st.just("json_schema"),
                                                        "json_schema": st.fixed_dictionaries(
                                                            {"name": TEXT.filter(
                                                                lambda n: not NAME.fullmatch(n))})})),
    "stop": st.one_of(st.just(""), st.booleans(), st.integers(), FINITE,
                      st.dictionaries(TEXT, JSON, max_size=2), st.just([]),
                      st.lists(TEXT.filter(bool), min_size=5, max_size=8),
                      st.lists(JSON.filter(lambda s: not isinstance(s, str) or not s),
                               min_size=1, max_size=4)),
    "top_p": st.one_of(st.text(), st.booleans(), st.lists(JSON), st.dictionaries(TEXT, JSON),
                       st.floats(min_value=1, exclude_min=True, allow_nan=False,
                                 allow_infinity=False),
                       st.floats(max_value=0, exclude_max=True, allow_nan=False,
                                 allow_infinity=False),
                       st.integers(min_value=2) | st.integers(max_value=-1)),
    "seed": st.one_of(st.text(), st.booleans(), FINITE,
                      st.lists(JSON), st.dictionaries(TEXT, JSON),
                      st.integers(min_value=2**63), st.integers(max_value=-2**63 - 1)),
}


@PROPERTY
@given(st.data())
def test_a_value_a_field_never_takes_is_a_400_naming_it(data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(FIELDS))
    junk = data.draw(INVALID[field])
    exc = refusal_of({**VALID, field: junk})
    assert exc is not None
    assert names_field(exc, field), (exc.param, exc.message)
    assert exc.message.startswith(f"{exc.param}: ")


@PROPERTY
@given(st.data())
def test_invalid_content_is_a_400_naming_it(data: st.DataObject) -> None:
    role = data.draw(st.sampled_from(["system", "user", "tool"]))
    junk = data.draw(st.one_of(st.booleans(), st.integers(), FINITE, st.just([]),
                               st.dictionaries(TEXT, JSON, max_size=2),
                               st.lists(JSON_SCALARS, min_size=1, max_size=3),
                               st.lists(st.dictionaries(st.sampled_from(["type", "text"]),
                                                        JSON_SCALARS.filter(
                                                            lambda v: not isinstance(v, str))),
                                        min_size=1, max_size=2)))
    message = {"role": role, "content": junk}
    if role == "tool":
        message["tool_call_id"] = "call_1"
    exc = refusal_of(chat(U, A, message))
    assert exc is not None
    assert names_field(exc, "messages.2.content"), (exc.param, exc.message)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(FIELDS), JSON)
def test_over_http_junk_is_never_a_500(client: FlaskClient, field: str, junk: Any) -> None:
    # An unserved model: a body that is valid by chance is refused as unknown_model,
    # so no stream starts.
    status, answer = post(client, {**VALID, "model": "demo/lorem", field: junk})
    error = answer["error"]
    assert (status, error["code"]) in ((400, "invalid_request"), (400, "unknown_model"))
    if field == "messages" and junk is None:
        assert error == {"code": "invalid_request",
                         "message": "one of 'messages' or 'prompt' is required"}
    else:
        assert error["code"] == "unknown_model" or names_field(
            InvalidBody(error["message"], error["param"]), field)


# --- check(): every candidate's provider, before anything streams ----------------------------

class Picky(Scripted):
    """A provider that records what it is asked to check and refuses tools."""

    def __init__(self, name: str) -> None:
        super().__init__(HELLO)
        self.name = name
        self.checked: list[ChatRequest] = []

    def check(self, request: ChatRequest) -> None:
        self.checked.append(request)
        if request.tools:
            raise Unsupported("tools", "are not supported")


@pytest.fixture
def picky() -> Iterator[tuple[Streams, Picky, Picky]]:
    first, second = Picky("first"), Picky("second")
    config = StreamsConfig(models=("first/a", "second/b"), heartbeat_s=0.05,
                           producer_timeout_s=0.2, shutdown_margin_s=0.0, max_fallbacks=1)
    streams = Streams(config, broker=GreenMemoryBroker(config_options(config)),
                      providers={"first": first, "second": second})
    yield streams, first, second
    streams.drain(0)
    settled(streams)


def config_options(config: StreamsConfig) -> BrokerOptions:
    return BrokerOptions(ttl=config.stream_ttl_s, max_events=config.max_events_per_stream)


@pytest.mark.parametrize(("model", "fallbacks", "where"), [
    ("first/a", [], "model 'first/a'"),
    ("first/a", ["second/b"], "model 'first/a'"),
])
def test_a_field_the_model_cannot_honour_is_a_400_before_anything_starts(
        picky: tuple[Streams, Picky, Picky], model: str, fallbacks: list[str],
        where: str) -> None:
    streams, first, second = picky
    body = streams.parse(chat(U, model=model, fallbacks=fallbacks, tools=[TOOL]))
    with pytest.raises(InvalidRequest) as refused:
        streams.start(body, owner="o", holder="o", stream_id="s" * 16)
    assert (type(refused.value), refused.value.status, refused.value.param,
            refused.value.message) == (InvalidRequest, 400, "tools",
                                       f"tools: are not supported ({where})")
    assert (first.opened, second.opened, second.checked, streams.active) == (0, 0, [], 0)
    with pytest.raises(NotFound):
        streams.info("s" * 16, "o")


class Choosy(Picky):
    """Honours tools, not a seed."""

    def check(self, request: ChatRequest) -> None:
        self.checked.append(request)
        if request.seed is not None:
            raise Unsupported("seed", "is not supported by this provider")


def test_a_field_a_fallback_cannot_honour_is_a_400_naming_it() -> None:
    first, second = Choosy("first"), Picky("second")
    config = StreamsConfig(models=("first/a", "second/b"), max_fallbacks=1)
    streams = Streams(config, broker=GreenMemoryBroker(config_options(config)),
                      providers={"first": first, "second": second})
    try:
        body = streams.parse(chat(U, model="first/a", fallbacks=["second/b"], tools=[TOOL]))
        with pytest.raises(InvalidRequest) as refused:
            streams.start(body, owner="o", holder="o")
        assert (refused.value.param, refused.value.message) == (
            "tools", "tools: are not supported (model 'second/b')")
        assert [r.model for r in first.checked] == ["a"]
        assert [r.model for r in second.checked] == ["b"]
        assert (first.opened, second.opened, streams.active) == (0, 0, 0)
    finally:
        settled(streams)


def test_every_candidate_is_checked_with_its_own_request(
        picky: tuple[Streams, Picky, Picky]) -> None:
    streams, first, second = picky
    body = streams.parse(chat(U, model="first/a", fallbacks=["second/b"], seed=5, stop="x"))
    events = read_all(streams.start(body, owner="o", holder="o"))
    assert names(events) == ["start", "token", "token", "done"]
    expected = ChatRequest("a", (Message("user", U["content"]),), seed=5, stop=("x",))
    assert first.checked == [expected]
    assert second.checked == [ChatRequest("b", expected.messages, seed=5, stop=("x",))]
    assert (first.opened, second.opened) == (1, 0)


def test_the_service_maps_a_part_over_its_bound_to_413() -> None:
    config = StreamsConfig(models=("first/a",), max_image_bytes=4, max_tools_bytes=80,
                           max_tools=1)
    streams = Streams(config, broker=GreenMemoryBroker(config_options(config)),
                      providers={"first": Picky("first")})
    try:
        with pytest.raises(RequestTooLarge) as raised:
            streams.parse(part(url=image(5)) | {"model": "first/a"})
        assert (raised.value.status, raised.value.code, raised.value.param) == (
            413, "payload_too_large", C0)
        with pytest.raises(RequestTooLarge) as raised:
            streams.parse(chat(tools=[TOOL], model="first/a"))
        assert (raised.value.param, raised.value.message) == (
            "tools", "tools: 128 bytes of JSON; at most 80 are accepted")
        with pytest.raises(InvalidRequest) as refused:
            streams.parse(chat(tools=[TOOL, TOOL], model="first/a"))
        assert (type(refused.value), refused.value.message) == (
            InvalidRequest, "tools: at most 1 are accepted")
    finally:
        settled(streams)


# --- the Flask extension's stream() takes the same fields ------------------------------------

@pytest.fixture
def extension() -> Iterator[tuple[Flask, Streaming, Picky]]:
    app = Flask(__name__)
    provider = Choosy("first")
    config = StreamsConfig(models=("first/a",), max_tools=1, max_tools_bytes=200,
                           heartbeat_s=0.05, producer_timeout_s=0.2, shutdown_margin_s=0.0)
    streams = Streams(config, broker=GreenMemoryBroker(config_options(config)),
                      providers={"first": provider})
    ext = Streaming()
    ext.init_app(app, streams=streams)
    yield app, ext, provider
    streams.drain(0)
    settled(streams)


def test_the_extension_stream_takes_every_new_field(
        extension: tuple[Flask, Streaming, Picky]) -> None:
    app, ext, provider = extension
    with app.test_request_context("/chat", method="POST"):
        response = ext.stream(model="first/a", messages=[U, A, T], tools=[TOOL],
                              tool_choice="required", reasoning={"budget_tokens": 1024},
                              response_format={"type": "json_object"}, stop=["x"], top_p=0.25)
    response.close()
    assert provider.checked == [ChatRequest(
        "a", (Message("user", U["content"]),
              Message("assistant", "", tool_calls=(ToolCall("call_1", "get_time",
                                                            '{"tz": "UTC"}'),)),
              Message("tool", "12:00", tool_call_id="call_1")),
        tools=(Tool("get_time", "The time now", {"type": "object", "properties": {}}),),
        tool_choice="required", reasoning_budget=1024, response_format={"type": "json_object"},
        stop=("x",), top_p=0.25)]


@pytest.mark.parametrize(("kwargs", "status", "param", "message"), [
    ({"tools": [TOOL], "tool_choice": "any"}, 400, "tool_choice", f"tool_choice: {TOOL_CHOICE}"),
    ({"seed": 1}, 400, "seed", "seed: is not supported by this provider (model 'first/a')"),
    ({"tools": [TOOL, {"type": "function", "function": {"name": "t"}}]}, 400, "tools",
     "tools: at most 1 are accepted"),
    ({"tools": tools_of_size(201)}, 413, "tools",
     "tools: 201 bytes of JSON; at most 200 are accepted"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "http://a.b/c.png"}}]}]}, 400, "messages.0.content.0.image_url.url",
     f"messages.0.content.0.image_url.url: {MUST_BE_URL}"),
])
def test_the_extension_stream_refuses_like_the_api(
        extension: tuple[Flask, Streaming, Picky], kwargs: dict[str, Any], status: int,
        param: str, message: str) -> None:
    app, ext, provider = extension
    with app.test_request_context("/chat", method="POST"):
        with pytest.raises(InvalidRequest) as refused:
            ext.stream(model="first/a", **{"messages": [U], **kwargs})
        answer, got_status, _ = error_response(refused.value)
        code = "payload_too_large" if status == 413 else "invalid_request"
        assert (got_status, answer.get_json()) == (status, {"error": {
            "code": code, "message": message, "param": param}})
    assert provider.opened == 0


# --- the bounds are settings ---------------------------------------------------------------

@pytest.mark.parametrize(("env", "message"), [
    ({"MAX_TOOLS": "-1"}, "MAX_TOOLS must be >= 0, got -1"),
    ({"MAX_TOOLS_BYTES": "0"}, "MAX_TOOLS_BYTES must be > 0, got 0"),
    ({"MAX_IMAGE_BYTES": "1.5"}, "MAX_IMAGE_BYTES must be an integer, got '1.5'"),
])
def test_bad_bounds_fail_at_start_up(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.load(env)
    assert str(raised.value) == message


def test_the_bounds_default_and_zero_tools_refuses_tools() -> None:
    settings = Settings.load({}).streams
    assert (settings.max_tools, settings.max_tools_bytes, settings.max_image_bytes) == (
        128, 65536, 5 * 1024 * 1024)
    assert Settings.load({"MAX_TOOLS": "0"}).streams.max_tools == 0
    with pytest.raises(InvalidBody) as raised:
        parse(chat(tools=[TOOL]), max_tools=0)
    assert (raised.value.param, raised.value.message) == ("tools", "tools: are not accepted here")
    assert parse(chat(tools=[]), max_tools=0).request.tools == ()


# --- check() of a real adapter, through the app ------------------------------------------------

def test_the_app_answers_what_the_anthropic_adapter_cannot_honour_with_400() -> None:
    """The adapter is configured but never reached: its check() refuses first."""
    app = create_app({"MODELS": "demo/echo,anthropic/claude-sonnet-4-5", "MAX_FALLBACKS": 1,
                      "ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
                      "RATELIMIT_CREATE": ""})
    client = app.test_client()
    streams = app.extensions["sse_gateway"].streams
    try:
        assert post(client, chat(model="anthropic/claude-sonnet-4-5", seed=1)) == (400, {
            "error": {"code": "invalid_request", "param": "seed", "message":
                      "seed: anthropic has no seed (model 'anthropic/claude-sonnet-4-5')"}})
        bmp = "data:image/bmp;base64," + base64.b64encode(b"BM").decode()
        param = "messages.0.content.0.image_url.url"
        assert post(client, {**part(url=bmp), "fallbacks": ["anthropic/claude-sonnet-4-5"]}) == (
            400, {"error": {"code": "invalid_request", "param": param, "message": (
                f"{param}: anthropic takes images as https URLs or base64 data URLs of "
                "image/jpeg, image/png, image/gif or image/webp (model "
                "'anthropic/claude-sonnet-4-5')")}})
        assert streams.active == 0
    finally:
        settled(streams)


def test_a_strict_tool_reaches_openai_and_anthropic_refuses_it() -> None:
    """OpenAI's structured-outputs flag (the SDK's pydantic_function_tool sets it)."""
    from sse_gateway.providers.anthropic import AnthropicProvider
    from sse_gateway.providers.openai import request_body

    tool = {"type": "function", "function": {"name": "t", "strict": True,
                                             "parameters": {"type": "object"}}}
    request = parse(chat(tools=[tool])).chat("m")
    assert request.tools[0].strict is True
    assert request_body(request)["tools"] == [tool]
    anthropic = AnthropicProvider(api_key="k", base_url="", max_connections=1,
                                  connect_timeout=1, default_max_tokens=10)
    try:
        with pytest.raises(Unsupported) as refused:
            anthropic.check(request)
        assert refused.value.param == "tools.0.function.strict"
        assert parse(chat(tools=[{**tool, "function": {"name": "t", "strict": False}}])
                     ).chat("m").tools[0].strict is False
    finally:
        anthropic.close()
