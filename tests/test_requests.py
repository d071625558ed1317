"""Request validation and error bodies, through the app (no stream is started)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.settings import Settings, SettingsError
from sse_gateway.validation import StreamRequest, parse_stream_request
from tests.test_hooks import settled


@pytest.fixture(scope="module")
def app() -> Flask:
    return create_app({"MODELS": "demo/echo,openai/gpt-4o-mini", "MAX_TOKENS_LIMIT": 100,
                       "MAX_CONTENT_LENGTH": 2048, "MAX_MESSAGES": 3,
                       "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def post(client: FlaskClient, body: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    kwargs.setdefault("content_type", "application/json")
    reply = client.post("/v1/streams", data=data, **kwargs)
    return reply.status_code, reply.get_json()


OK = {"model": "demo/echo", "prompt": "hi"}


@pytest.mark.parametrize(("body", "status", "code", "param", "message"), [
    (b"{", 400, "invalid_request", None, "the body is not valid JSON"),
    (b"", 400, "invalid_request", None, "the body is not valid JSON"),
    (b"\xff\xfe", 400, "invalid_request", None, "the body is not valid JSON"),
    (b'{"model": "demo/echo", "prompt": "x", "temperature": NaN}', 400, "invalid_request", None,
     "the body is not valid JSON"),
    (b"[1]", 400, "invalid_request", None, "the body must be a JSON object"),
    ({"prompt": "hi"}, 400, "invalid_request", "model", "model: is required"),
    ({"model": 5, "prompt": "hi"}, 400, "invalid_request", "model",
     "model: Input should be a valid string"),
    ({"model": "demo/echo"}, 400, "invalid_request", None,
     "one of 'messages' or 'prompt' is required"),
    ({**OK, "messages": [{"role": "user", "content": "x"}]}, 400, "invalid_request", None,
     "give 'messages' or 'prompt', not both"),
    ({"model": "demo/echo", "messages": []}, 400, "invalid_request", "messages",
     "messages: must be a non-empty list"),
    ({"model": "demo/echo", "messages": "hi"}, 400, "invalid_request", "messages",
     "messages: Input should be a valid list"),
    ({"model": "demo/echo", "messages": [{"role": "robot", "content": "x"}]}, 400,
     "invalid_request", "messages.0.role",
     "messages.0.role: Input should be 'system', 'user', 'assistant' or 'tool'"),
    ({"model": "demo/echo", "messages": [{"role": "user"}]}, 400, "invalid_request",
     "messages.0.content", "messages.0.content: is required"),
    ({"model": "demo/echo", "messages": [{"role": "user", "content": 3}]}, 400,
     "invalid_request", "messages.0.content",
     "messages.0.content: Input should be a string or a list of parts"),
    ({"model": "demo/echo", "messages": [{"role": "user", "content": "x"}] * 4}, 400,
     "invalid_request", "messages", "messages: at most 3 are accepted"),
    ({**OK, "max_tokens": 0}, 400, "invalid_request", "max_tokens",
     "max_tokens: Input should be greater than or equal to 1"),
    ({**OK, "max_tokens": 101}, 400, "invalid_request", "max_tokens",
     "max_tokens: must be at most 100"),
    ({**OK, "max_tokens": "5"}, 400, "invalid_request", "max_tokens",
     "max_tokens: Input should be a valid integer"),
    ({**OK, "max_tokens": True}, 400, "invalid_request", "max_tokens",
     "max_tokens: Input should be a valid integer"),
    ({**OK, "temperature": 2.5}, 400, "invalid_request", "temperature",
     "temperature: Input should be less than or equal to 2"),
    ({**OK, "temperature": -0.1}, 400, "invalid_request", "temperature",
     "temperature: Input should be greater than or equal to 0"),
    ({**OK, "resume_grace_s": -1}, 400, "invalid_request", "resume_grace_s",
     "resume_grace_s: Input should be greater than or equal to 0"),
    ({**OK, "resume_grace_s": 301}, 400, "invalid_request", "resume_grace_s",
     "resume_grace_s: must be at most 300"),
    ({**OK, "max_token": 5}, 400, "invalid_request", "max_token", "max_token: unknown field"),
    ({**OK, "fallbacks": "openai/x"}, 400, "invalid_request", "fallbacks",
     "fallbacks: Input should be a valid list"),
    ({"model": "nope/x", "prompt": "x"}, 400, "unknown_model", "model",
     "unknown provider 'nope' (known: demo, openai, anthropic)"),
    ({"model": "ab", "prompt": "x"}, 400, "invalid_request", "model",
     "model: String should have at least 3 characters"),
    ({"model": "demo", "prompt": "x"}, 400, "unknown_model", "model",
     "model 'demo' must be 'provider/model', e.g. 'demo/echo'"),
    ({"model": "demo/", "prompt": "x"}, 400, "unknown_model", "model",
     "model 'demo/' must be 'provider/model', e.g. 'demo/echo'"),
    ({"model": "demo/lorem", "prompt": "x"}, 400, "unknown_model", "model",
     "model 'demo/lorem' is not served here (see GET /v1/models)"),
    ({"model": "openai/gpt-4o-mini", "prompt": "x"}, 400, "unknown_model", "model",
     "provider 'openai' is not configured: set OPENAI_API_KEY"),
    ({"model": "x" * 300, "prompt": "x"}, 400, "invalid_request", "model",
     "model: String should have at most 256 characters"),
    # metadata: up to 16 string values, keys of 1 to 64 characters, values up to 512
    ({**OK, "metadata": "x"}, 400, "invalid_request", "metadata",
     "metadata: Input should be a valid dictionary"),
    ({**OK, "metadata": None}, 400, "invalid_request", "metadata",
     "metadata: Input should be a valid dictionary"),
    ({**OK, "metadata": [["k", "v"]]}, 400, "invalid_request", "metadata",
     "metadata: Input should be a valid dictionary"),
    ({**OK, "metadata": {"k": 1}}, 400, "invalid_request", "metadata.k",
     "metadata.k: Input should be a valid string"),
    ({**OK, "metadata": {"k": None}}, 400, "invalid_request", "metadata.k",
     "metadata.k: Input should be a valid string"),
    ({**OK, "metadata": {"k": True}}, 400, "invalid_request", "metadata.k",
     "metadata.k: Input should be a valid string"),
    ({**OK, "metadata": {"k": {"nested": "v"}}}, 400, "invalid_request", "metadata.k",
     "metadata.k: Input should be a valid string"),
    ({**OK, "metadata": {"k": "v" * 513}}, 400, "invalid_request", "metadata.k",
     "metadata.k: String should have at most 512 characters"),
    ({**OK, "metadata": {"k" * 65: "v"}}, 400, "invalid_request", "metadata",
     "metadata: each key: string should have at most 64 characters"),
    ({**OK, "metadata": {"": "v"}}, 400, "invalid_request", "metadata",
     "metadata: each key: string should have at least 1 character"),
    ({**OK, "metadata": {str(i): "v" for i in range(17)}}, 400, "invalid_request", "metadata",
     "metadata: at most 16 entries are accepted"),
    # detach: a JSON boolean
    ({**OK, "detach": "true"}, 400, "invalid_request", "detach",
     "detach: Input should be a valid boolean"),
    ({**OK, "detach": 1}, 400, "invalid_request", "detach",
     "detach: Input should be a valid boolean"),
    ({**OK, "detach": None}, 400, "invalid_request", "detach",
     "detach: Input should be a valid boolean"),
])
def test_bad_bodies(client: FlaskClient, body: Any, status: int, code: str, param: str | None,
                    message: str) -> None:
    got_status, got = post(client, body)
    expected: dict[str, Any] = {"code": code, "message": message}
    if param is not None:
        expected["param"] = param
    assert (got_status, got) == (status, {"error": expected})


def parse(body: dict[str, Any]) -> StreamRequest:
    return parse_stream_request(json.dumps(body).encode(), max_tokens_limit=100,
                                max_messages=3, max_resume_grace_s=300, max_fallbacks=0)


def test_metadata_and_detach_at_their_bounds_are_accepted() -> None:
    assert (parse(OK).metadata, parse(OK).detach) == ({}, False)
    # Lengths are characters, not bytes: a 512-character value of 2-byte letters fits.
    widest = {("k" * 64 if i == 0 else f"key{i}"): "é" * 512 for i in range(16)}
    parsed = parse({**OK, "metadata": widest, "detach": True})
    assert (parsed.metadata, parsed.detach) == (widest, True)
    assert parse({**OK, "metadata": {"k": ""}, "detach": False}).metadata == {"k": ""}


def test_a_detached_stream_answers_201_and_keeps_its_metadata() -> None:
    app = create_app({"MODELS": "demo/echo", "DEMO_TTFT_S": 0, "DEMO_TOKEN_DELAY_S": 0})
    streams = app.extensions["sse_gateway"].streams
    client = app.test_client()
    try:
        status, body = post(client, {**OK, "detach": True, "metadata": {"job": "7"}},
                            headers={"X-Stream-ID": "d" * 16})
        token = body.pop("token", "")
        assert token.startswith("sst_")
        assert (status, body) == (201, {
            "stream_id": "d" * 16, "events_url": f"/v1/streams/{'d' * 16}/events",
            "status_url": f"/v1/streams/{'d' * 16}"})
        info = client.get(f"/v1/streams/{'d' * 16}").get_json()
        assert (info["stream_id"], info["metadata"]) == ("d" * 16, {"job": "7"})
    finally:
        streams.drain(0)
        settled(streams)


def test_content_type_must_be_json(client: FlaskClient) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        status, body = post(client, json.dumps(OK), content_type=content_type)
        assert (status, body["error"]["code"]) == (415, "unsupported_media_type")
    status, _ = post(client, json.dumps(OK), content_type="application/json; charset=utf-8")
    assert status != 415


def test_oversize_body(client: FlaskClient) -> None:
    status, body = post(client, {**OK, "prompt": "x" * 4096})
    assert (status, body) == (413, {"error": {"code": "payload_too_large",
                                              "message": "the request body is too large"}})


@pytest.mark.parametrize("stream_id", ["short", "x" * 129, "has space in it 0123", "ünïcode-0123456789"])
def test_bad_client_stream_ids(client: FlaskClient, stream_id: str) -> None:
    status, body = post(client, OK, headers={"X-Stream-ID": stream_id})
    assert status == 400
    assert body["error"]["param"] == "X-Stream-ID"


def test_unknown_routes_and_methods_answer_json(client: FlaskClient) -> None:
    reply = client.get("/v1/nothing")
    assert (reply.status_code, reply.get_json()) == (
        404, {"error": {"code": "not_found", "message": "no such route"}})
    reply = client.put("/v1/streams")
    assert reply.status_code == 405
    assert reply.get_json()["error"]["code"] == "method_not_allowed"
    for method in ("get", "delete"):
        reply = getattr(client, method)("/v1/streams/unknown-stream-id-0000")
        assert reply.status_code == 404
        assert reply.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(("env", "message"), [
    ({"HEARTBEAT_S": "abc"}, "HEARTBEAT_S must be a number, got 'abc'"),
    ({"HEARTBEAT_S": "0"}, "HEARTBEAT_S must be > 0, got 0.0"),
    ({"MAX_ACTIVE_STREAMS": "1.5"}, "MAX_ACTIVE_STREAMS must be an integer, got '1.5'"),
    ({"REDIS_URL": "http://x"}, "REDIS_URL 'http://x' has an unknown scheme 'http'"),
    ({"MODELS": "gpt-4o"}, "MODELS entry 'gpt-4o' is not 'provider/model'"),
    ({"RESUME_GRACE_S": "500"}, "RESUME_GRACE_S must not exceed MAX_RESUME_GRACE_S"),
    ({"MAX_STREAM_BYTES": "0"}, "MAX_STREAM_BYTES must be > 0, got 0"),
    ({"MAX_STREAM_BYTES": "2000", "MAX_STORED_BYTES_PER_KEY": "1000"},
     "MAX_STORED_BYTES_PER_KEY must be at least MAX_STREAM_BYTES"),
    ({"GATEWAY_CONFIG": "Nope"}, "GATEWAY_CONFIG 'Nope' is not a class in config/"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL 'LOUD' is not a logging level"),
    ({"MAX_FALLBACKS": "-1"}, "MAX_FALLBACKS must be >= 0, got -1"),
    ({"BODY_TIMEOUT_S": "0"}, "BODY_TIMEOUT_S must be > 0, got 0.0"),
    ({"HEARTBEAT_S": "nan"}, "HEARTBEAT_S must be a number, got 'nan'"),
    ({"PRODUCER_TIMEOUT_S": "inf"}, "PRODUCER_TIMEOUT_S must be a number, got 'inf'"),
])
def test_settings_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.load(env)
    assert str(raised.value) == message


def test_settings_layers() -> None:
    settings = Settings.load({"GATEWAY_CONFIG": "Development", "HEARTBEAT_S": "2"},
                             {"max_tokens_limit": 10})
    assert (settings.log_level, settings.streams.heartbeat_s,
            settings.streams.max_tokens_limit) == (
        "DEBUG", 2.0, 10)
    assert settings.streams.models[0] == "demo/echo"
    assert settings.streams.broker_url == "memory://"
    with pytest.raises(SettingsError, match="unknown setting"):
        Settings.load({}, {"NOPE": 1})


def test_text_log_lines_escape_control_characters() -> None:
    import logging

    from app import _TextFormatter

    formatter = _TextFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "model %s",
                               ("a\r\nINFO forged \x1b[31mred\x85\x7f",), None)
    assert formatter.format(record) == (
        "INFO model a\\x0d\\x0aINFO forged \\x1b[31mred\\x85\\x7f")
