"""The Python client's rich events (reasoning, refusals, tool calls, done's new
fields), the message it assembles, the next turn's assistant message and the
new request fields, against a loopback server that answers with scripted
event-stream bytes (a POST cut mid-event, a replay that starts too early).
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sse_gateway_client import (
    Done,
    GatewayClient,
    Message,
    Metrics,
    ProtocolError,
    Reasoning,
    Refusal,
    Start,
    Token,
    ToolCall,
    ToolCallDelta,
    ToolCallDone,
    Usage,
    assistant_message,
)
from tests.replay import serving

SID = "s-0123456789abcdef0123"
EVENTS = f"/v1/streams/{SID}/events"

# ---------------------------------------------------------------------------- the server


class Scripted(ThreadingHTTPServer):
    """Answers ``(method, path)`` with the next of its scripted bodies (the last one
    repeats) as ``text/event-stream``, closing the connection after it: a body
    without a terminal event is a connection that broke. Each request is kept as
    ``(method, path, headers, json body)``."""

    daemon_threads = True

    def __init__(self, routes: dict[tuple[str, str], list[bytes]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes = routes
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self._used: dict[tuple[str, str], int] = {}

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def body_for(self, method: str, path: str) -> bytes | None:
        bodies = self.routes.get((method, path))
        if not bodies:
            return None
        used = self._used[(method, path)] = self._used.get((method, path), -1) + 1
        return bodies[min(used, len(bodies) - 1)]


class _Handler(BaseHTTPRequestHandler):
    server: Scripted
    protocol_version = "HTTP/1.1"

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.requests.append((method, self.path, dict(self.headers), body))
        data = self.server.body_for(method, self.path)
        if data is None:
            error = json.dumps({"error": {"code": "not_found", "message": self.path}}).encode()
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("X-Stream-ID", SID)
        self.send_header("Connection", "close")  # the body ends where the connection does
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def do_POST(self) -> None:
        self._answer("POST")

    def do_GET(self) -> None:
        self._answer("GET")

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


def scripted(routes: dict[tuple[str, str], list[bytes]]) -> AbstractContextManager[Scripted]:
    return serving(Scripted(routes))


def frame(event_id: int, kind: str, data: Any) -> bytes:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()


RETRY = b"retry: 1\n\n"  # 1 ms: a resume does not wait


def start() -> bytes:
    return frame(0, "start", {"stream_id": SID, "model": "m/x", "created": 1.5})


# ---------------------------------------------------------------------------- a rich stream

THINKING = {"anthropic": {"thinking_blocks": [
    {"type": "thinking", "thinking": "Two cities: two calls.", "signature": "sig=="},
    {"type": "redacted_thinking", "data": "opaque"}]}}
USAGE = {"input_tokens": 10423, "output_tokens": 120, "cache_read_input_tokens": 8000,
         "cache_creation_input_tokens": 12, "reasoning_tokens": 40}
DONE = {"finish_reason": "tool_calls", "provider_finish_reason": "tool_use",
        "model": "anthropic/claude-sonnet-4-5", "usage": USAGE,
        "metrics": {"ttft_ms": 20.5, "duration_ms": 90.0, "tokens_per_second": 50.0},
        "provider_data": THINKING}
PARIS = '{"city": "Paris é😀"}'
TOKYO = '{"city": "Tôkyō", "unit": "c"}'

RICH = b"".join([
    RETRY, start(),
    frame(1, "reasoning", {"content": "Two "}), frame(2, "reasoning", {"content": "cities:\n"}),
    frame(3, "reasoning", {"content": "two calls. 🤔"}),
    frame(4, "token", {"content": "Checking "}), frame(5, "token", {"content": "both."}),
    frame(6, "tool_call", {"index": 0, "id": "call_paris", "name": "get_weather"}),
    frame(7, "tool_call_delta", {"index": 0, "arguments": PARIS[:3]}),
    frame(8, "tool_call", {"index": 1, "id": "toolu_tokyo", "name": "get_weather"}),
    frame(9, "tool_call_delta", {"index": 1, "arguments": TOKYO[:10]}),
    frame(10, "tool_call_delta", {"index": 0, "arguments": PARIS[3:12]}),
    frame(11, "tool_call_delta", {"index": 1, "arguments": TOKYO[10:]}),
    frame(12, "tool_call_delta", {"index": 0, "arguments": PARIS[12:]}),
    frame(13, "tool_call_done", {"index": 0, "id": "call_paris", "name": "get_weather",
                                 "arguments": PARIS}),
    frame(14, "tool_call_done", {"index": 1, "id": "toolu_tokyo", "name": "get_weather",
                                 "arguments": TOKYO}),
    frame(15, "done", DONE),
])

CALLS = [{"id": "call_paris", "type": "function",
          "function": {"name": "get_weather", "arguments": PARIS}},
         {"id": "toolu_tokyo", "type": "function",
          "function": {"name": "get_weather", "arguments": TOKYO}}]


def read(server: Scripted, **kwargs: Any) -> tuple[list[Any], Any]:
    with GatewayClient(server.url, timeout=5) as client:
        chat = client.stream(stream_id=SID, **{"prompt": "p", **kwargs})
        return list(chat), chat


def test_every_event_is_typed_and_the_message_is_assembled() -> None:
    with scripted({("POST", "/v1/streams"): [RICH]}) as server:
        events, chat = read(server)
    assert events == [
        Start(0, SID, "m/x", 1.5),
        Reasoning(1, "Two "), Reasoning(2, "cities:\n"), Reasoning(3, "two calls. 🤔"),
        Token(4, "Checking "), Token(5, "both."),
        ToolCall(6, 0, "call_paris", "get_weather"), ToolCallDelta(7, 0, PARIS[:3]),
        ToolCall(8, 1, "toolu_tokyo", "get_weather"), ToolCallDelta(9, 1, TOKYO[:10]),
        ToolCallDelta(10, 0, PARIS[3:12]), ToolCallDelta(11, 1, TOKYO[10:]),
        ToolCallDelta(12, 0, PARIS[12:]),
        ToolCallDone(13, 0, "call_paris", "get_weather", PARIS),
        ToolCallDone(14, 1, "toolu_tokyo", "get_weather", TOKYO),
        Done(15, "tool_calls", "anthropic/claude-sonnet-4-5",
             Usage(10423, 120, 8000, 12, 40), Metrics(20.5, 90.0, 50.0),
             "tool_use", THINKING),
    ]
    for index, whole in ((0, PARIS), (1, TOKYO)):
        assert "".join(e.arguments for e in events
                       if isinstance(e, ToolCallDelta) and e.index == index) == whole
    assert (chat.text, chat.reasoning, chat.refusal) == ("Checking both.",
                                                         "Two cities:\ntwo calls. 🤔", "")
    assert chat.terminal == events[-1]
    assert chat.message == {"role": "assistant", "content": "Checking both.",
                            "tool_calls": CALLS, "reasoning": "Two cities:\ntwo calls. 🤔",
                            "refusal": None, "provider_data": THINKING}
    assert chat.assistant_message() == {"role": "assistant", "content": "Checking both.",
                                        "tool_calls": CALLS, "provider_data": THINKING}
    # Copies: changing what was handed out changes nothing in the stream.
    chat.message["tool_calls"][0]["function"]["arguments"] = "x"
    handed = chat.assistant_message()
    handed["provider_data"]["anthropic"]["thinking_blocks"].clear()
    assert chat.message["tool_calls"] == CALLS
    assert chat.message["provider_data"] == THINKING


def test_a_refusal_and_a_plain_done() -> None:
    body = b"".join([RETRY, start(), frame(1, "refusal", {"content": "I can\u2019t "}),
                     frame(2, "refusal", {"content": "help with that."}),
                     frame(3, "done", {"finish_reason": "refusal",
                                       "provider_finish_reason": "stop", "model": "openai/x",
                                       "usage": {"input_tokens": 5, "output_tokens": 6},
                                       "metrics": {}})])
    with scripted({("POST", "/v1/streams"): [body]}) as server:
        events, chat = read(server)
    assert events[1:] == [Refusal(1, "I can\u2019t "), Refusal(2, "help with that."),
                          Done(3, "refusal", "openai/x", Usage(5, 6), Metrics(None, None, None),
                               "stop", None)]
    assert chat.message == {"role": "assistant", "content": "", "tool_calls": None,
                            "reasoning": None, "refusal": "I can\u2019t help with that.",
                            "provider_data": None}
    assert chat.assistant_message() == {"role": "assistant", "content": None}


def test_an_older_gateways_done_still_parses() -> None:
    """No provider_finish_reason, usage without the new counts: the defaults."""
    body = RETRY + start() + frame(1, "done", {"finish_reason": "stop", "model": "m/x",
                                              "usage": {"input_tokens": 1, "output_tokens": 0},
                                              "metrics": {}})
    with scripted({("POST", "/v1/streams"): [body]}) as server:
        events, chat = read(server)
    assert events[-1] == Done(1, "stop", "m/x", Usage(1, 0), Metrics(None, None, None))
    assert (events[-1].provider_finish_reason, events[-1].provider_data) == (None, None)
    assert chat.message["provider_data"] is None


def test_a_resume_in_the_middle_of_a_tool_call_loses_and_repeats_nothing() -> None:
    arguments = '{"timezone": "Europe/Paris"}'
    pieces = [arguments[:5], arguments[5:12], arguments[12:20], arguments[20:]]
    call = frame(2, "tool_call", {"index": 0, "id": "call_1", "name": "get_time"})
    deltas = [frame(3 + i, "tool_call_delta", {"index": 0, "arguments": p})
              for i, p in enumerate(pieces)]
    first = b"".join([RETRY, start(), frame(1, "reasoning", {"content": "Time."}), call,
                      deltas[0], deltas[1], deltas[2][:25]])  # cut in the middle of id 5
    # The replay starts too early: ids 2 to 4 come again and must be skipped.
    replay = b"".join([RETRY, call, *deltas, frame(7, "tool_call_done", {
        "index": 0, "id": "call_1", "name": "get_time", "arguments": arguments}),
        frame(8, "done", {"finish_reason": "tool_calls", "provider_finish_reason": "tool_calls",
                          "model": "demo/tools", "metrics": {},
                          "usage": {"input_tokens": 4, "output_tokens": 5,
                                    "reasoning_tokens": 1}})])
    with scripted({("POST", "/v1/streams"): [first], ("GET", EVENTS): [replay]}) as server:
        events, chat = read(server, model="demo/tools")
        resumes = [r for r in server.requests if r[0] == "GET"]
    assert [r[2].get("Last-Event-ID") for r in resumes] == ["4"]
    assert chat.reconnects == 1
    assert [e.id for e in events] == list(range(9))  # each event once, in order
    assert [e.arguments for e in events if isinstance(e, ToolCallDelta)] == pieces
    assert chat.message["tool_calls"] == [{"id": "call_1", "type": "function",
                                           "function": {"name": "get_time",
                                                        "arguments": arguments}}]
    assert chat.assistant_message() == {"role": "assistant", "content": None,
                                        "tool_calls": chat.message["tool_calls"]}
    assert events[-1].usage == Usage(4, 5, reasoning_tokens=1)


def test_the_message_as_far_as_it_got_and_a_call_first_seen_late() -> None:
    """Followed from a later position: a call first seen by a fragment has no id or name
    until its tool_call_done; another never done keeps its fragments."""
    body = b"".join([RETRY, frame(4, "tool_call_delta", {"index": 0, "arguments": 'lo"}'}),
                     frame(5, "tool_call_done", {"index": 0, "id": "call_x", "name": "get_time",
                                                 "arguments": '{"tz": "lo"}'}),
                     frame(6, "tool_call_delta", {"index": 1, "arguments": "{}"}),
                     frame(7, "cancelled", {"reason": "deleted"})])
    with scripted({("GET", EVENTS): [body]}) as server, \
            GatewayClient(server.url, timeout=5) as client:
        chat = client.resume(SID, last_event_id=3)
        list(chat)
        assert server.requests[0][2]["Last-Event-ID"] == "3"
    assert chat.message["tool_calls"] == [
        {"id": "call_x", "type": "function",
         "function": {"name": "get_time", "arguments": '{"tz": "lo"}'}},
        {"id": None, "type": "function", "function": {"name": None, "arguments": "{}"}}]


@pytest.mark.parametrize(("kind", "data"), [
    ("tool_call", {"index": "0", "id": "c", "name": "f"}),
    ("tool_call", {"index": -1, "id": "c", "name": "f"}),
    ("tool_call_delta", {"index": True, "arguments": "{}"}),
    ("tool_call_delta", {"index": 0}),
    ("tool_call_done", {"index": 0, "id": "c", "name": "f"}),
    ("reasoning", {}),
    ("refusal", {"text": "x"}),
    ("done", {"finish_reason": "stop", "model": "m/x", "provider_data": [1]}),
])
def test_a_malformed_new_event_is_a_protocol_error(kind: str, data: Any) -> None:
    with scripted({("POST", "/v1/streams"): [RETRY + start() + frame(1, kind, data)]}) as server, \
            pytest.raises(ProtocolError, match=f"malformed '{kind}' event 1"):
        read(server)


def test_the_new_request_fields_go_into_the_body_and_a_tool_round_trip_goes_back() -> None:
    tools = [{"type": "function", "function": {
        "name": "get_time", "description": "The current time",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}}}}]
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_time", "arguments": '{"timezone": "UTC"}'}}
    asked = b"".join([RETRY, start(),
                      frame(1, "tool_call", {"index": 0, "id": "call_1", "name": "get_time"}),
                      frame(2, "tool_call_delta", {"index": 0,
                                                   "arguments": '{"timezone": "UTC"}'}),
                      frame(3, "tool_call_done", {"index": 0, "id": "call_1", "name": "get_time",
                                                  "arguments": '{"timezone": "UTC"}'}),
                      frame(4, "done", {"finish_reason": "tool_calls", "model": "demo/tools"})])
    answered = b"".join([RETRY, start(), frame(1, "token", {"content": "It is noon."}),
                         frame(2, "done", {"finish_reason": "stop", "model": "demo/tools"})])
    messages: list[Message] = [{"role": "user", "content": "What time is it?"}]
    with scripted({("POST", "/v1/streams"): [asked, answered]}) as server, \
            GatewayClient(server.url, timeout=5) as client:
        with client.stream(messages=messages, model="demo/tools", tools=tools,
                           tool_choice={"type": "function", "function": {"name": "get_time"}},
                           reasoning={"effort": "low"}, response_format={"type": "text"},
                           stop=("\n\n", "END"), top_p=0.5, seed=7,
                           metadata={"user": "u1"}) as chat:
            assert isinstance(chat.result(), Done)
        messages = [*messages, chat.assistant_message(),
                    {"role": "tool", "tool_call_id": "call_1", "content": "noon"}]
        with client.stream(messages=messages, model="demo/tools", tools=tools,
                           tool_choice="auto", stop="END") as second:
            second.result()
        bodies = [r[3] for r in server.requests]
    assert bodies == [
        {"model": "demo/tools", "messages": [{"role": "user", "content": "What time is it?"}],
         "tools": tools, "tool_choice": {"type": "function", "function": {"name": "get_time"}},
         "reasoning": {"effort": "low"}, "response_format": {"type": "text"},
         "stop": ["\n\n", "END"], "top_p": 0.5, "seed": 7, "metadata": {"user": "u1"}},
        {"model": "demo/tools", "messages": [
            {"role": "user", "content": "What time is it?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "noon"}],
         "tools": tools, "tool_choice": "auto", "stop": "END"},
    ]
    assert second.message["content"] == "It is noon."


@pytest.mark.parametrize(("assembled", "expected"), [
    ({"role": "assistant", "content": "Hi", "tool_calls": None, "reasoning": "r",
      "refusal": None, "provider_data": None}, {"role": "assistant", "content": "Hi"}),
    ({"content": "", "tool_calls": [], "provider_data": {}},
     {"role": "assistant", "content": None}),
    ({}, {"role": "assistant", "content": None}),
    ({"content": None, "tool_calls": [{"id": "c", "type": "function", "extra": 1,
                                       "function": {"name": "f", "arguments": "{}"}}],
      "provider_data": {"anthropic": {"thinking_blocks": []}}},
     {"role": "assistant", "content": None,
      "tool_calls": [{"id": "c", "type": "function",
                      "function": {"name": "f", "arguments": "{}"}}],
      "provider_data": {"anthropic": {"thinking_blocks": []}}}),
])
def test_assistant_message_from_an_assembled_one(assembled: dict[str, Any],
                                                 expected: dict[str, Any]) -> None:
    """E.g. the status route's ``?include=message``: None fields and empty data are left out."""
    assert assistant_message(assembled) == expected
