"""The Flask extension in process: settings, what it installs, ``stream()``'s refusals, hooks.

Flask's test client and request contexts, the memory broker and a scripted
provider (``tests/test_streams.py``); no server. Streaming a response to a
real client (ids, heartbeats, disconnects) is the live tier's.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, current_app, has_request_context, request

from sse_gateway.config import ConfigError, StreamsConfig
from sse_gateway.errors import (
    InvalidRequest,
    NotFound,
    Overloaded,
    StreamsError,
    UnknownModel,
)
from sse_gateway.flask import NotSignedIn, Streaming, error_response
from sse_gateway.providers.base import TextDelta
from sse_gateway.results import StreamResult
from sse_gateway.streams import Streams
from tests.test_hooks import Calls, body, settled, wait_for
from tests.test_streams import HANG, HELLO, HOLDER, OWNER, names, read_all, service

OWNER_HEADER = "X-Test-User"


def header_owner() -> str | None:
    """The owner callable of these tests: the user a test request names (None: nobody)."""
    return request.headers.get(OWNER_HEADER)


@pytest.fixture
def closing() -> Iterator[Callable[[Flask], Flask]]:
    """Close the streams service of every app a test binds (its SDK clients, pools)."""
    apps: list[Flask] = []
    yield lambda app: apps.append(app) or app
    for app in apps:
        state = app.extensions.get("sse_gateway")
        if state is not None:
            state.streams.drain(0)
            settled(state.streams)


def bound(closing: Callable[[Flask], Flask], script: Any = HELLO, *,
          owner: Callable[[], str | None] | None = header_owner, **kwargs: Any
          ) -> tuple[Flask, Streaming, Streams]:
    """An app with the extension over a scripted service (models: scripted/a)."""
    app = closing(Flask(__name__))
    streams, _ = service(script)
    ext = Streaming()
    ext.init_app(app, owner=owner, streams=streams, **kwargs)
    return app, ext, streams


def config_of(app: Flask) -> StreamsConfig:
    return app.extensions["sse_gateway"].streams.config


# --- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value", "field", "expected"), [
    ("SSE_GATEWAY_HEARTBEAT_S", "2.5", "heartbeat_s", 2.5),
    ("SSE_GATEWAY_HEARTBEAT_S", 3, "heartbeat_s", 3.0),
    ("SSE_GATEWAY_HEARTBEAT_S", 0.5, "heartbeat_s", 0.5),
    ("SSE_GATEWAY_MAX_MESSAGES", "7", "max_messages", 7),
    ("SSE_GATEWAY_MAX_MESSAGES", 7.0, "max_messages", 7),
    ("SSE_GATEWAY_MODELS", "demo/echo, openai/*", "models", ("demo/echo", "openai/*")),
    ("SSE_GATEWAY_MODELS", ["demo/echo", "openai/*"], "models", ("demo/echo", "openai/*")),
    ("SSE_GATEWAY_MODELS", ("demo/echo",), "models", ("demo/echo",)),
    ("SSE_GATEWAY_OPENAI_API_KEY", " sk-test ", "openai_api_key", "sk-test"),
    ("SSE_GATEWAY_REDIS_URL", None, "redis_url", ""),
])
def test_settings_come_from_app_config(closing: Callable[[Flask], Flask], key: str, value: Any,
                                       field: str, expected: Any) -> None:
    app = closing(Flask(__name__))
    app.config[key] = value
    Streaming(app)
    assert getattr(config_of(app), field) == expected
    assert config_of(app).stream_ttl_s == StreamsConfig().stream_ttl_s  # the rest: defaults


@pytest.mark.parametrize(("key", "value", "message"), [
    ("SSE_GATEWAY_HEARTBEAT_S", "abc", "SSE_GATEWAY_HEARTBEAT_S must be a number, got 'abc'"),
    ("SSE_GATEWAY_HEARTBEAT_S", True, "SSE_GATEWAY_HEARTBEAT_S must be a number, got True"),
    ("SSE_GATEWAY_HEARTBEAT_S", float("nan"),
     "SSE_GATEWAY_HEARTBEAT_S must be a number, got nan"),
    ("SSE_GATEWAY_HEARTBEAT_S", 0, "SSE_GATEWAY_HEARTBEAT_S must be > 0, got 0.0"),
    ("SSE_GATEWAY_MAX_MESSAGES", 1.5, "SSE_GATEWAY_MAX_MESSAGES must be an integer, got 1.5"),
    ("SSE_GATEWAY_MODELS", 5,
     "SSE_GATEWAY_MODELS must be a comma-separated string or a list of strings, got 5"),
    ("SSE_GATEWAY_MODELS", ["demo/echo", 1],
     "SSE_GATEWAY_MODELS must be a comma-separated string or a list of strings, "
     "got ['demo/echo', 1]"),
    ("SSE_GATEWAY_MODELS", "gpt-4o", "SSE_GATEWAY_MODELS entry 'gpt-4o' is not 'provider/model'"),
    ("SSE_GATEWAY_REDIS_URL", "http://x",
     "SSE_GATEWAY_REDIS_URL 'http://x' has an unknown scheme 'http'"),
    ("SSE_GATEWAY_CORS_ORIGINS", 5,
     "SSE_GATEWAY_CORS_ORIGINS must be a comma-separated string or a list of strings, got 5"),
    ("SSE_GATEWAY_RESUME_GRACE_S", 500,
     "SSE_GATEWAY_RESUME_GRACE_S must not exceed SSE_GATEWAY_MAX_RESUME_GRACE_S"),
])
def test_bad_settings_are_refused_naming_the_key(key: str, value: Any, message: str) -> None:
    app = Flask(__name__)
    app.config[key] = value
    with pytest.raises(ConfigError) as refused:
        Streaming(app)
    assert str(refused.value) == message
    assert "sse_gateway" not in app.extensions


def test_a_typo_is_refused_naming_it() -> None:
    app = Flask(__name__)
    app.config["SSE_GATEWAY_HEARTBEATS"] = 5
    with pytest.raises(ConfigError) as refused:
        Streaming().init_app(app)
    message = str(refused.value)
    assert message.startswith("SSE_GATEWAY_HEARTBEATS is not a setting (known: "
                              "SSE_GATEWAY_ANTHROPIC_API_KEY, SSE_GATEWAY_ANTHROPIC_BASE_URL, ")
    for known in ("SSE_GATEWAY_HEARTBEAT_S,", "SSE_GATEWAY_CORS_ORIGINS,",
                  "SSE_GATEWAY_REDIS_URL,"):
        assert known in message
    assert "sse_gateway" not in app.extensions
    # Keys without the prefix are the host's own: not looked at.
    other = Flask(__name__)
    other.config.update(SSE_HEARTBEAT_S="x", GATEWAY_THING=1)
    Streaming(other)
    other.extensions["sse_gateway"].streams.close()


def test_settings_from_the_environment_with_from_prefixed_env(
        monkeypatch: pytest.MonkeyPatch, closing: Callable[[Flask], Flask]) -> None:
    # Flask parses each value as JSON when it can: 2 and 7 arrive as numbers,
    # the list as a list, the rest as strings.
    for name, value in {"HEARTBEAT_S": "2", "MAX_MESSAGES": "7",
                        "MODELS": "demo/echo,openai/gpt-4.1",
                        "CORS_ORIGINS": '["https://app.example"]',
                        "REDIS_URL": "", "OPENAI_API_KEY": "sk-env"}.items():
        monkeypatch.setenv(f"FLASK_SSE_GATEWAY_{name}", value)
    app = closing(Flask(__name__))
    app.config.from_prefixed_env()
    assert app.config["SSE_GATEWAY_HEARTBEAT_S"] == 2
    Streaming(app, url_prefix="/streams")
    config = config_of(app)
    assert (config.heartbeat_s, config.max_messages, config.models, config.redis_url,
            config.openai_api_key) == (2.0, 7, ("demo/echo", "openai/gpt-4.1"), "", "sk-env")
    preflight = app.test_client().options("/streams/x/events", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "GET"})
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    monkeypatch.setenv("FLASK_SSE_GATEWAY_HEARTBEATS", "2")
    typo = Flask(__name__)
    typo.config.from_prefixed_env()
    with pytest.raises(ConfigError, match=r"^SSE_GATEWAY_HEARTBEATS is not a setting"):
        Streaming(typo)


def test_the_state_lives_in_app_extensions(closing: Callable[[Flask], Flask]) -> None:
    app, ext, streams = bound(closing)
    state = app.extensions["sse_gateway"]
    assert (state.streams, state.owner, state.blueprint) == (streams, header_owner,
                                                              "sse_gateway")
    with app.app_context():
        assert ext.streams is streams
    with pytest.raises(RuntimeError, match="application context"):
        _ = ext.streams


# --- what it installs --------------------------------------------------------------------------

def app_wide(app: Flask) -> dict[str, Any]:
    """What an extension could install for every request of ``app``."""
    return copy.copy({
        "before_request": list(app.before_request_funcs.get(None, ())),
        "after_request": list(app.after_request_funcs.get(None, ())),
        "teardown_request": list(app.teardown_request_funcs.get(None, ())),
        "teardown_appcontext": list(app.teardown_appcontext_funcs),
        "error_handlers": copy.deepcopy(app.error_handler_spec.get(None, {})),
        "url_value_preprocessors": list(app.url_value_preprocessors.get(None, ())),
        "url_defaults": list(app.url_default_functions.get(None, ())),
        "context_processors": list(app.template_context_processors.get(None, ())),
        "wsgi_app": app.wsgi_app,
        "json": app.json,
        "app_logger": list(app.logger.handlers),
        "root_logger": list(logging.getLogger().handlers),
        "package_logger": list(logging.getLogger("sse_gateway").handlers),
        "root_level": logging.getLogger().level,
        "config": {k: v for k, v in app.config.items() if not k.startswith("SSE_GATEWAY_")},
    })


def test_the_extension_installs_nothing_app_wide(closing: Callable[[Flask], Flask]) -> None:
    app = closing(Flask(__name__))

    @app.get("/boom")
    def boom() -> str:
        raise NotFound("a host's own view raising the engine's error")

    app.config["SSE_GATEWAY_CORS_ORIGINS"] = "https://app.example"
    before = app_wide(app)
    Streaming(app, owner=header_owner, url_prefix="/streams")
    assert app_wide(app) == before
    # Its error handlers and owner check are its blueprint's own.
    assert StreamsError in app.error_handler_spec["sse_gateway"][None]
    assert app.before_request_funcs["sse_gateway"]
    client = app.test_client()
    # The host's pages are untouched: Flask's own 404 and 500, as HTML, no CORS.
    missing = client.get("/nothing", headers={"Origin": "https://app.example"})
    assert (missing.status_code, missing.mimetype) == (404, "text/html")
    assert "Access-Control-Allow-Origin" not in missing.headers
    app.testing = False  # answer 500, as in production, instead of raising
    failed = client.get("/boom")
    assert (failed.status_code, failed.mimetype) == (500, "text/html")
    # The blueprint's own routes answer the product's JSON errors.
    unknown = client.get("/streams/" + "u" * 16, headers={OWNER_HEADER: "ann"})
    assert (unknown.status_code, unknown.get_json()) == (
        404, {"error": {"code": "not_found", "message": f"no stream {'u' * 16!r}"}})


def test_url_prefix_none_mounts_nothing(closing: Callable[[Flask], Flask]) -> None:
    app, _, _ = bound(closing, url_prefix=None)
    assert app.blueprints == {}
    assert [rule.rule for rule in app.url_map.iter_rules()] == ["/static/<path:filename>"]
    assert app.extensions["sse_gateway"].blueprint is None
    assert app.test_client().get("/streams/" + "u" * 16).status_code == 404


@pytest.mark.parametrize("prefix", ["/streams", "/api/v2/chat-streams"])
def test_the_blueprint_is_mounted_where_asked(closing: Callable[[Flask], Flask],
                                              prefix: str) -> None:
    app = closing(Flask(__name__))
    Streaming(app, url_prefix=prefix)  # the Streaming(app) form
    assert sorted((rule.rule, sorted(rule.methods - {"HEAD", "OPTIONS"}))  # type: ignore[operator]
                  for rule in app.url_map.iter_rules() if rule.endpoint != "static") == [
        (f"{prefix}/<stream_id>", ["DELETE"]), (f"{prefix}/<stream_id>", ["GET"]),
        (f"{prefix}/<stream_id>/events", ["GET"])]


# --- the blueprint's routes that need no streaming response ---------------------------------

def test_status_and_cancel_are_the_owners_only(closing: Callable[[Flask], Flask]) -> None:
    app, _, streams = bound(closing, [TextDelta("Hel"), HANG])
    sid = "s" * 16
    reader = streams.start(body(metadata={"conversation": "42"}), owner="ann",
                           holder="owner:ann", stream_id=sid)
    client = app.test_client()
    wait_for(lambda: streams.info(sid, "ann").last_event_id >= 1)
    ann, bob = {OWNER_HEADER: "ann"}, {OWNER_HEADER: "bob"}
    status = client.get(f"/streams/{sid}?include=message", headers=ann)
    assert status.status_code == 200
    assert {k: v for k, v in status.get_json().items() if k != "created"} == {
        "stream_id": sid, "status": "running", "model": "scripted/a", "last_event_id": 1,
        "usage": None, "metadata": {"conversation": "42"},
        "message": {"role": "assistant", "content": "Hel", "tool_calls": None,
                    "reasoning": None, "refusal": None, "provider_data": None}}
    assert "message" not in client.get(f"/streams/{sid}", headers=ann).get_json()
    not_yours = {"error": {"code": "not_found", "message": f"no stream {sid!r}"}}
    nobody = {"error": {"code": "unauthorized", "message": "sign in to use streams"}}
    for method in ("get", "delete"):
        for path in (f"/streams/{sid}", f"/streams/{sid}/events"):
            if method == "delete" and path.endswith("/events"):
                continue
            answer = getattr(client, method)(path, headers=bob)
            assert (answer.status_code, answer.get_json()) == (404, not_yours)
            answer = getattr(client, method)(path)
            assert (answer.status_code, answer.get_json()) == (401, nobody)
    bad = client.get(f"/streams/{sid}/events?last_event_id=x", headers=ann)
    assert (bad.status_code, bad.get_json()["error"]["param"]) == (400, "last_event_id")
    cancel = client.delete(f"/streams/{sid}", headers=ann)
    assert (cancel.status_code, cancel.get_json()["stream_id"]) == (202, sid)
    assert names(read_all(reader))[-1] == "cancelled"
    again = client.delete(f"/streams/{sid}", headers=ann)
    assert (again.status_code, again.get_json()["status"]) == (200, "cancelled")
    # Past the end of an ended stream nothing follows: 204, no streaming needed.
    done = client.get(f"/streams/{sid}/events", headers={**ann, "Last-Event-ID": "2"})
    assert (done.status_code, done.headers["X-Stream-ID"], done.data) == (204, sid, b"")


# --- stream() ----------------------------------------------------------------------------------

def test_stream_answers_sse_with_the_follow_url(closing: Callable[[Flask], Flask]) -> None:
    app, ext, streams = bound(closing, url_prefix="/chat/streams")
    with app.test_request_context("/chat", method="POST", headers={OWNER_HEADER: "ann"}):
        response = ext.stream(model="scripted/a", messages=[{"role": "user", "content": "hi"}],
                              metadata={"conversation": "42"}, stream_id="c" * 16,
                              max_tokens=50)
    try:
        assert (response.status_code, response.mimetype) == (200, "text/event-stream")
        assert response.headers["X-Stream-ID"] == "c" * 16
        assert response.headers["Location"] == "/chat/streams/" + "c" * 16 + "/events"
        assert response.headers["Cache-Control"] == "no-cache"
        info = streams.info("c" * 16, "ann")
        assert (info.owner, info.metadata) == ("ann", {"conversation": "42"})
    finally:
        response.close()  # gives the reader's lease back


def test_stream_without_a_blueprint_sends_no_empty_location(
        closing: Callable[[Flask], Flask]) -> None:
    app, ext, _ = bound(closing, url_prefix=None)
    with app.test_request_context("/chat", method="POST", headers={OWNER_HEADER: "ann"}):
        response = ext.stream(model="scripted/a", prompt="hi")
    response.close()
    assert "Location" not in response.headers


LONG = "v" * 513


@pytest.mark.parametrize(("kwargs", "error", "param", "message"), [
    ({"model": "x", "prompt": "hi"}, InvalidRequest, "model",
     "model: String should have at least 3 characters"),
    ({"model": "scripted/b", "prompt": "hi"}, UnknownModel, "model",
     "model 'scripted/b' is not served here (see GET /v1/models)"),
    ({"model": "nope/x", "prompt": "hi"}, UnknownModel, "model",
     "unknown provider 'nope' (known: scripted)"),
    ({"model": "scripted/a"}, InvalidRequest, None, "one of 'messages' or 'prompt' is required"),
    ({"model": "scripted/a", "messages": []}, InvalidRequest, "messages",
     "messages: must be a non-empty list"),
    ({"model": "scripted/a", "messages": [{"role": "robot", "content": "x"}]}, InvalidRequest,
     "messages.0.role",
     "messages.0.role: Input should be 'system', 'user', 'assistant' or 'tool'"),
    ({"model": "scripted/a", "prompt": "hi", "metadata": {str(i): "v" for i in range(17)}},
     InvalidRequest, "metadata", "metadata: at most 16 entries are accepted"),
    ({"model": "scripted/a", "prompt": "hi", "metadata": {"k": LONG}}, InvalidRequest,
     "metadata.k", "metadata.k: String should have at most 512 characters"),
    ({"model": "scripted/a", "prompt": "hi", "metadata": {"k" * 65: "v"}}, InvalidRequest,
     "metadata", "metadata: each key: string should have at most 64 characters"),
    ({"model": "scripted/a", "prompt": "hi", "metadata": {"k": 42}}, InvalidRequest,
     "metadata.k", "metadata.k: Input should be a valid string"),
    ({"model": "scripted/a", "prompt": "hi", "metadata": {1: "v"}}, InvalidRequest,
     "metadata", "metadata: each key: input should be a valid string"),
    ({"model": "scripted/a", "prompt": "hi", "metadata": ["k", "v"]}, InvalidRequest,
     "metadata", "metadata: Input should be a valid dictionary"),
    ({"model": "scripted/a", "prompt": "hi", "max_token": 5}, InvalidRequest, "max_token",
     "max_token: unknown field"),
    ({"model": "scripted/a", "prompt": "hi", "max_tokens": 101}, InvalidRequest, "max_tokens",
     "max_tokens: must be at most 100"),
    ({"model": "scripted/a", "prompt": "hi", "detach": True}, InvalidRequest, "detach",
     "detach: not accepted here: stream() answers with the stream itself"),
    ({"model": "scripted/a", "prompt": "hi", "stream_id": "owner.other-stream-id"},
     InvalidRequest, "stream_id", "stream_id: must be 16 to 128 characters of A-Z a-z 0-9 _ -"),
    ({"model": "scripted/a", "prompt": "hi", "stream_id": "short"},
     InvalidRequest, "stream_id", "stream_id: must be 16 to 128 characters of A-Z a-z 0-9 _ -"),
])
def test_stream_refuses_bad_arguments_before_starting_anything(
        closing: Callable[[Flask], Flask], kwargs: dict[str, Any], error: type[StreamsError],
        param: str | None, message: str) -> None:
    app = closing(Flask(__name__))
    streams = Streams(StreamsConfig(models=("scripted/a",), max_tokens_limit=100),
                      providers={"scripted": service()[1]})
    ext = Streaming(owner=header_owner)
    ext.init_app(app, streams=streams)
    with app.test_request_context("/chat", method="POST", headers={OWNER_HEADER: "ann"}):
        with pytest.raises(InvalidRequest) as refused:  # UnknownModel is one too
            ext.stream(**kwargs)
        assert type(refused.value) is error
        assert (refused.value.status, refused.value.param, refused.value.message) == (
            400, param, message)
        answer, status, headers = error_response(refused.value)
        expected: dict[str, Any] = {"code": error.code, "message": message}
        if param is not None:
            expected["param"] = param
        assert (answer.get_json(), status, headers) == ({"error": expected}, 400, {})
    assert streams.active == 0
    assert streams.catalog.providers["scripted"].opened == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("nobody", [None, ""])
def test_stream_raises_not_signed_in_when_the_owner_callable_says_nobody(
        closing: Callable[[Flask], Flask], nobody: str | None) -> None:
    app, ext, streams = bound(closing, owner=lambda: nobody)
    with app.test_request_context("/chat", method="POST"):
        with pytest.raises(NotSignedIn) as refused:
            ext.stream(model="scripted/a", prompt="hi")
        assert (refused.value.status, refused.value.code) == (401, "unauthorized")
        answer, status, _ = error_response(refused.value)
        assert (answer.get_json(), status) == (
            {"error": {"code": "unauthorized", "message": "sign in to use streams"}}, 401)
        # The host may name the owner itself.
        response = ext.stream(model="scripted/a", prompt="hi", owner="svc",
                              stream_id="o" * 16)
        response.close()
    assert streams.info("o" * 16, "svc").owner == "svc"
    assert streams.active == 1


def test_an_owner_callable_may_return_a_number(closing: Callable[[Flask], Flask]) -> None:
    app, ext, streams = bound(closing, owner=lambda: 42)  # type: ignore[arg-type,return-value]
    with app.test_request_context("/chat", method="POST"):
        ext.stream(model="scripted/a", prompt="hi", stream_id="n" * 16).close()
    assert streams.info("n" * 16, "42").owner == "42"


def test_error_response_renders_the_json_error() -> None:
    app = Flask(__name__)
    with app.app_context():
        answer, status, headers = error_response(Overloaded("busy; retry", retry_after=2.4))
        assert (answer.get_json(), status, headers) == (
            {"error": {"code": "overloaded", "message": "busy; retry"}}, 503,
            {"Retry-After": "2"})
        answer, status, headers = error_response(
            InvalidRequest("temperature: too hot", param="temperature"), {"X-Mine": "1"})
        assert (answer.get_json(), status, headers) == (
            {"error": {"code": "invalid_request", "message": "temperature: too hot",
                       "param": "temperature"}}, 400, {"X-Mine": "1"})


# --- hooks ---------------------------------------------------------------------------------------

def test_two_apps_bound_to_one_extension_each_get_the_hooks(
        closing: Callable[[Flask], Flask]) -> None:
    ext = Streaming(owner=header_owner)
    seen: list[tuple[str, str, str, bool]] = []

    @ext.on_end
    def early(result: StreamResult) -> None:
        seen.append(("early", current_app.name, result.stream_id, has_request_context()))

    apps = []
    for name in ("one", "two"):
        app = closing(Flask(name))
        ext.init_app(app, streams=service()[0])
        apps.append(app)

    @ext.on_end  # after both apps were bound
    def late(result: StreamResult) -> None:
        seen.append(("late", current_app.name, result.stream_id, has_request_context()))

    for app in apps:
        streams = app.extensions["sse_gateway"].streams
        read_all(streams.start(body(), owner=OWNER, holder=HOLDER, stream_id=app.name * 8))
        settled(streams)
    assert sorted(seen) == sorted(
        (hook, app, app * 8, False) for hook in ("early", "late") for app in ("one", "two"))


def test_a_hook_gets_an_app_context_and_no_request(closing: Callable[[Flask], Flask]) -> None:
    app, ext, streams = bound(closing)
    app.config["CONVERSATIONS"] = {}
    calls = Calls()

    @ext.on_end
    def save(result: StreamResult) -> None:
        current_app.config["CONVERSATIONS"][result.metadata["conversation"]] = result.text
        calls(result)

    with app.test_request_context("/chat", method="POST", headers={OWNER_HEADER: "ann"}):
        response = ext.stream(model="scripted/a", prompt="hi", metadata={"conversation": "7"})
    feed = iter(response.response)  # the body a server would send, read in process
    text = b"".join(feed).decode()
    response.close()
    assert "event: done" in text
    settled(streams)
    assert app.config["CONVERSATIONS"] == {"7": "Hello world"}
    assert [(r.owner, r.status) for r in calls] == [("ann", "done")]
