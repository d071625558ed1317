"""The Flask extension in a team's own app (tests/live/host_app.py), live.

The host has a session-cookie login, its own 404/500 pages and routes, a view
that streams with ``streaming.stream(...)``, the blueprint mounted at
``/api/v2/llm``, and a completion hook that appends what it received to a
file. It runs under the real gunicorn gevent worker (the repository's
gunicorn.conf.py) against the fake provider; the two-instance tests share the
test Redis.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import signal
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.conftest import record
from tests.fake_provider import FakeProvider
from tests.live import host_app
from tests.live.gateway import ROOT, GatewayServer, Reply, SSEStream, tokens_text, worker_pid
from tests.redis_server import CLUSTER_REDIS_URL

PREFIX = "/api/v2/llm"
PRODUCER_TIMEOUT_S = 1.0
TOKENS = ["Hé", "llo", " wörld", " 👋🏽", "\n", "日本語", ' {"json": 1}', "\r\n", " <b>x</b>", "."]
LONG = [f"w{i} " for i in range(400)]
# What the fake's OpenAI usage adds to input and output tokens (it reports both, as 0).
OPENAI_ZEROS = {"cache_read_input_tokens": 0, "reasoning_tokens": 0}
FIGURES = ROOT / "build" / "figures"


# ------------------------------------------------------------------------------ the host


@dataclass
class Host:
    """One host app under gunicorn, and the file its recording hook writes."""

    server: GatewayServer
    hook_log: Path

    def login(self, user: str) -> dict[str, str]:
        """The Cookie header of ``user``'s session (the host's own login)."""
        reply = self.server.request("POST", "/login", {"user": user})
        assert reply.status == 200, reply
        return {"Cookie": reply.headers["set-cookie"].split(";")[0]}

    def chat(self, who: dict[str, str], model: str, **body: Any) -> SSEStream:
        return self.server.stream("POST", "/chat", {"model": f"openai/{model}", "prompt": "hi",
                                                     **body}, headers=who)

    def get(self, path: str, who: dict[str, str] | None = None, method: str = "GET") -> Reply:
        return self.server.request(method, path, headers=who)

    def records(self, stream_id: str | None = None) -> list[dict[str, Any]]:
        """The hook's records (of one stream): its complete lines so far."""
        if not self.hook_log.exists():
            return []
        text = self.hook_log.read_text()
        lines = [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]
        return [r for r in lines if stream_id is None or r["stream_id"] == stream_id]

    def wait_record(self, stream_id: str, timeout: float = 10) -> dict[str, Any]:
        """The hook's one record of a stream (polled: it is written by another process)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.records(stream_id)
            if found:
                assert len(found) == 1, found
                return found[0]
            time.sleep(0.01)
        raise AssertionError(f"no hook record for {stream_id} after {timeout} s:\n"
                             f"{self.server.log()[-3000:]}")


def host_env(fake: FakeProvider, hook_log: Path, **settings: str) -> dict[str, str]:
    """The host's environment: the extension's settings as FLASK_SSE_GATEWAY_*."""
    engine = {"OPENAI_API_KEY": "sk-test-openai", "OPENAI_BASE_URL": f"{fake.url}/v1",
              "MODELS": "openai/*", "HEARTBEAT_S": "0.5", "RESUME_GRACE_S": "10",
              "SHUTDOWN_MARGIN_S": "3", "RETRY_BASE_DELAY_S": "0.01",
              "RETRY_MAX_DELAY_S": "0.05", **settings}
    env = {f"FLASK_SSE_GATEWAY_{k}": v for k, v in engine.items()}
    env.update({"HOST_PREFIX": PREFIX, "HOST_HOOK_LOG": str(hook_log)})
    return env


@contextlib.contextmanager
def running_host(fake: FakeProvider, hook_log: Path, label: str,
                 settings: dict[str, str] | None = None, *,
                 extra: dict[str, str] | None = None) -> Iterator[Host]:
    """The host under gunicorn: ``settings`` are the extension's (without the prefix),
    ``extra`` more of the host's environment."""
    env = host_env(fake, hook_log, **(settings or {}))
    env.update(extra or {})
    server = GatewayServer(env, label=label, app="tests.live.host_app:app")
    try:
        server.start()
        yield Host(server, hook_log)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def host(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    with running_host(fake, tmp_path_factory.mktemp("host") / "hooks.jsonl", "host") as h:
        yield h


@pytest.fixture
def alice(host: Host) -> dict[str, str]:
    return host.login("alice")


def not_found(stream_id: str) -> dict[str, Any]:
    return {"error": {"code": "not_found", "message": f"no stream {stream_id!r}"}}


UNAUTHORIZED = {"error": {"code": "unauthorized", "message": "sign in to use streams"}}


def blocks(raw: bytes | bytearray) -> list[bytes]:
    """The event blocks of an SSE body, pings and the ``retry:`` line left out."""
    text = bytes(raw).replace(b": ping\n", b"")
    return [re.sub(rb"^retry: \d+\n", b"", b) for b in text.split(b"\n\n") if b]


def id_of(stream: SSEStream) -> str:
    """The stream's id (its X-Stream-ID)."""
    found = stream.header("X-Stream-ID")
    assert found is not None
    return found


def wall(at: float) -> float:
    """A ``time.monotonic()`` reading of this process as wall-clock seconds."""
    return time.time() - time.monotonic() + at


# ------------------------------------------------------------------ streaming from the host


def test_the_hosts_view_streams_and_the_blueprint_replays_it_byte_for_byte(
        host: Host, alice: dict[str, str], fake: FakeProvider) -> None:
    model = fake.scenario(tokens=TOKENS, delay=0.03)
    first = host.chat(alice, model, conversation="c1")
    assert first.status == 200
    stream_id = id_of(first)
    assert len(stream_id) >= 22
    assert first.header("Location") == f"{PREFIX}/{stream_id}/events"
    assert first.header("Content-Type") == "text/event-stream; charset=utf-8"
    first.read_until(lambda e: e.event == "token" and int(e.id) >= 3)
    # A second reader follows the live stream from event 3, through the blueprint.
    live = host.server.stream("GET", f"{PREFIX}/{stream_id}/events?last_event_id=3",
                              headers=alice)
    assert live.status == 200
    events = first.read_all()
    assert tokens_text(events) == "".join(TOKENS)
    assert [int(e.id) for e in events] == list(range(len(TOKENS) + 2))  # type: ignore[arg-type]
    assert events[-1].event == "done"
    assert events[-1].json()["usage"] == {"input_tokens": 7, "output_tokens": len(TOKENS),
                                          **OPENAI_ZEROS}
    original = blocks(first.raw)
    live.read_all()
    assert blocks(live.raw) == original[4:]
    assert bytes(live.raw).startswith(b"retry: 2000\n")
    # Replayed after its end: from the start (Location as given), and from Last-Event-ID.
    replay = host.server.stream("GET", first.header("Location") or "", headers=alice)
    replay.read_all()
    assert blocks(replay.raw) == original
    resumed = host.server.stream("GET", f"{PREFIX}/{stream_id}/events",
                                 headers={**alice, "Last-Event-ID": "7"})
    resumed.read_all()
    assert blocks(resumed.raw) == original[8:]
    past_end = host.get(f"{PREFIX}/{stream_id}/events?last_event_id={len(original) - 1}", alice)
    assert (past_end.status, past_end.body) == (204, b"")
    assert len(fake.calls(model)) == 1


def test_the_hosts_own_refusals_and_the_products_errors(host: Host, alice: dict[str, str]) -> None:
    # The host turns InvalidRequest into its own 400.
    refused = host.server.request("POST", "/chat", {"model": "openai/x", "prompt": "hi",
                                                    "max_tokens": 0}, headers=alice)
    assert (refused.status, refused.json()) == (400, {"host_error": {
        "field": "max_tokens", "problem": "max_tokens: Input should be greater than or equal "
                                          "to 1"}})
    # Nobody logged in: the extension's NotSignedIn, which this host answers as is.
    anonymous = host.server.request("POST", "/chat", {"model": "openai/x", "prompt": "hi"})
    assert (anonymous.status, anonymous.json()) == (401, UNAUTHORIZED)
    assert host.get(f"{PREFIX}/nothing-here-at-all-0000", alice).json() == \
        not_found("nothing-here-at-all-0000")


def test_another_users_stream_is_unknown_and_nobody_signed_in_is_401_on_every_route(
        host: Host, alice: dict[str, str], fake: FakeProvider) -> None:
    tokens = [f"a{i} " for i in range(100)]
    model = fake.scenario(tokens=tokens, delay=0.03)
    mine = host.chat(alice, model)
    stream_id = id_of(mine)
    mine.read_until(lambda e: e.event == "token")
    bob = host.login("bob")
    routes = [("GET", f"{PREFIX}/{stream_id}/events"), ("GET", f"{PREFIX}/{stream_id}"),
              ("GET", f"{PREFIX}/{stream_id}?include=message"), ("DELETE", f"{PREFIX}/{stream_id}")]
    for method, path in routes:
        theirs = host.get(path, bob, method)
        assert (theirs.status, theirs.json()) == (404, not_found(stream_id)), (method, path)
        assert theirs.headers["content-type"] == "application/json"
        unknown = host.get(path.replace(stream_id, "x" * len(stream_id)), alice, method)
        assert (unknown.status, unknown.json()) == (404, not_found("x" * len(stream_id)))
        for who in (None, {"Cookie": "session=forged"}):
            nobody = host.get(path, who, method)
            assert (nobody.status, nobody.json()) == (401, UNAUTHORIZED), (method, path, who)
    # Bob's DELETE changed nothing: alice's stream, still running, runs to its end.
    assert host.get(f"{PREFIX}/{stream_id}", alice).json()["status"] == "running"
    events = mine.read_all()
    assert tokens_text(events) == "".join(tokens)
    assert events[-1].event == "done"
    assert host.wait_record(stream_id)["status"] == "done"


def test_the_hosts_websocket_route_streams_under_its_login(
        host: Host, alice: dict[str, str], fake: FakeProvider) -> None:
    """``streaming.serve_websocket(ws)`` in the host's own flask-sock route: the
    session's user owns what the socket starts; another user's socket cannot see
    it; nobody signed in gets an error frame and a 1008 close."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url = f"ws://{host.server.host}:{host.server.port}/ws"
    model = fake.scenario(tokens=TOKENS, delay=0.01)
    with connect(url, additional_headers=alice, proxy=None, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "start", "model": f"openai/{model}", "prompt": "hi"}))
        frames = []
        while not frames or frames[-1]["event"] != "done":
            frames.append(json.loads(ws.recv(10)))
    stream_id = frames[0]["stream_id"]
    assert "".join(f["data"]["content"] for f in frames if f["event"] == "token") == \
        "".join(TOKENS)
    replay = host.server.stream("GET", f"{PREFIX}/{stream_id}/events", headers=alice)
    assert [(int(e.id or -1), e.event, e.json()) for e in replay.read_all()] == \
        [(f["id"], f["event"], f["data"]) for f in frames]
    with connect(url, additional_headers=host.login("bob"), proxy=None) as ws:
        ws.send(json.dumps({"type": "resume", "stream_id": stream_id}))
        assert json.loads(ws.recv(10)) == {"type": "error", "stream_id": stream_id,
                                           **not_found(stream_id)}
    with connect(url, proxy=None) as ws:
        assert json.loads(ws.recv(10)) == {"type": "error", **UNAUTHORIZED}
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert host.wait_record(stream_id)["status"] == "done"


def test_the_hosts_own_pages_are_untouched(host: Host, alice: dict[str, str]) -> None:
    for path, who in (("/no/such/page", None), (f"{PREFIX}/a/b/c", alice),
                      (f"{PREFIX}/", alice)):
        reply = host.get(path, who)
        assert (reply.status, reply.body.decode()) == (404, host_app.NOT_FOUND_PAGE), path
        assert reply.headers["content-type"].startswith("text/html")
    boom = host.get("/boom", alice)
    assert (boom.status, boom.body.decode()) == (500, host_app.ERROR_PAGE)
    assert boom.headers["content-type"].startswith("text/html")
    assert "the host's own bug" in host.server.log()  # Flask logged it, as it does
    assert host.get("/").body.decode() == host_app.HOME_PAGE


def _app_wide(app: Flask) -> dict[str, Any]:
    """What a Flask app applies to every request, and its loggers' handlers."""
    return {
        "before_request": list(app.before_request_funcs.get(None, [])),
        "after_request": list(app.after_request_funcs.get(None, [])),
        "teardown_request": list(app.teardown_request_funcs.get(None, [])),
        "teardown_appcontext": list(app.teardown_appcontext_funcs),
        "url_value_preprocessors": list(app.url_value_preprocessors.get(None, [])),
        "url_default_functions": list(app.url_default_functions.get(None, [])),
        "context_processors": list(app.template_context_processors.get(None, [])),
        "error_handlers": {code: dict(handlers)
                           for code, handlers in app.error_handler_spec.get(None, {}).items()},
        "json": type(app.json), "wsgi_app": app.wsgi_app, "session": type(app.session_interface),
        "handle_exception": app.handle_exception,
        "handle_user_exception": app.handle_user_exception,
        "root_handlers": list(logging.getLogger().handlers),
        "app_handlers": list(app.logger.handlers), "app_level": app.logger.level,
    }


def test_the_extension_installs_nothing_app_wide() -> None:
    from sse_gateway.flask import Streaming

    for cors in ((), ("https://app.example",)):
        app = Flask("bare")
        app.config["SSE_GATEWAY_CORS_ORIGINS"] = ",".join(cors)
        before = _app_wide(app)
        rules_before = {r.rule for r in app.url_map.iter_rules()}
        Streaming().init_app(app, owner=lambda: None, url_prefix="/custom/prefix")
        assert _app_wide(app) == before
        added = {r.rule for r in app.url_map.iter_rules()} - rules_before
        assert added == {"/custom/prefix/<stream_id>/events", "/custom/prefix/<stream_id>"}
        assert list(app.blueprints) == ["sse_gateway"]
        assert app.before_request_funcs["sse_gateway"]  # its owner check, on its blueprint
        assert bool(app.after_request_funcs.get("sse_gateway")) == bool(cors)  # CORS there too
    # The host app: only its own two error pages are app-wide.
    app = host_app.create_app()
    assert set(app.error_handler_spec[None]) == {404, 500}
    assert not app.before_request_funcs.get(None)
    assert not app.after_request_funcs.get(None)


def test_stream_refuses_detach_before_starting_anything() -> None:
    """``detach`` would start a stream with no reader that ``stream()`` cannot answer
    with: it is refused as a bad argument, and no stream starts."""
    from sse_gateway.errors import InvalidRequest
    from sse_gateway.flask import Streaming

    app = Flask("bare")
    streaming = Streaming(app)
    with app.test_request_context("/chat", method="POST"):
        with pytest.raises(InvalidRequest) as refused:
            streaming.stream(model="demo/echo", prompt="hi", detach=True)
        assert refused.value.param == "detach"
        assert streaming.streams.active == 0


# ------------------------------------------------------------------------ completion hooks


def test_on_end_after_done_has_the_text_usage_and_metadata(
        host: Host, alice: dict[str, str], fake: FakeProvider) -> None:
    model = fake.scenario(tokens=TOKENS, delay=0.01, input_tokens=11)
    stream = host.chat(alice, model, conversation="conv-42")
    stream_id = id_of(stream)
    events = stream.read_all()
    rec = host.wait_record(stream_id)
    assert {k: rec[k] for k in ("owner", "status", "reason", "model", "text", "usage",
                                "metadata", "app_context", "request_context")} == {
        "owner": "alice", "status": "done", "reason": "stop", "model": f"openai/{model}",
        "text": "".join(TOKENS), "usage": {"input_tokens": 11, "output_tokens": len(TOKENS),
                                           **OPENAI_ZEROS},
        "metadata": {"conversation": "conv-42", "user": "alice"},
        "app_context": True, "request_context": False}
    assert rec["usage"] == events[-1].json()["usage"]
    assert rec["pid"] == worker_pid(host.server)
    assert rec["created"] - 0.0005 <= rec["ended"] <= rec["started"]  # created: to the ms


def test_on_end_after_delete_has_the_partial_text_the_client_saw(
        host: Host, alice: dict[str, str], fake: FakeProvider) -> None:
    model = fake.scenario(tokens=LONG, delay=0.02)
    stream = host.chat(alice, model, conversation="c-del")
    stream_id = id_of(stream)
    stream.read_until(lambda e: e.event == "token" and int(e.id) >= 5)
    cancel = host.get(f"{PREFIX}/{stream_id}", alice, "DELETE")
    assert cancel.status == 202
    assert cancel.json()["stream_id"] == stream_id
    events = stream.read_all()
    assert events[-1].event == "cancelled"
    assert events[-1].json() == {"reason": "deleted"}
    assert fake.wait_closed(model).outcome == "peer_closed"
    rec = host.wait_record(stream_id)
    assert (rec["status"], rec["reason"]) == ("cancelled", "deleted")
    seen = tokens_text(events)
    assert rec["text"] == seen
    assert 5 <= len(seen.split()) < len(LONG)
    assert rec["metadata"] == {"conversation": "c-del", "user": "alice"}
    again = host.get(f"{PREFIX}/{stream_id}", alice, "DELETE")  # idempotent, no second hook
    assert (again.status, again.json()["status"]) == (200, "cancelled")


def test_on_end_after_a_client_drop_past_the_grace(
        host: Host, alice: dict[str, str], fake: FakeProvider) -> None:
    model = fake.scenario(tokens=LONG, delay=0.02)
    stream = host.chat(alice, model, conversation="c-drop", resume_grace_s=0.5)
    stream_id = id_of(stream)
    stream.read_until(lambda e: e.event == "token" and int(e.id) >= 3)
    seen = tokens_text([r.event for r in stream.received])
    stream.drop()
    dropped = time.monotonic()
    rec = host.wait_record(stream_id)
    assert time.monotonic() - dropped > 0.5
    assert (rec["status"], rec["reason"]) == ("cancelled", "client_disconnected")
    assert rec["text"].startswith(seen) and "".join(LONG).startswith(rec["text"])
    assert fake.wait_closed(model).outcome == "peer_closed"
    status = host.get(f"{PREFIX}/{stream_id}?include=message", alice).json()
    assert status["status"] == "cancelled"
    assert status["message"]["content"] == rec["text"]  # the hook got all that was stored


def test_status_include_message_while_running_and_after_the_end(
        host: Host, alice: dict[str, str], fake: FakeProvider) -> None:
    tokens = TOKENS * 6
    model = fake.scenario(tokens=tokens, delay=0.03)
    stream = host.chat(alice, model, conversation="c-msg")
    stream_id = id_of(stream)
    stream.read_until(lambda e: e.event == "token" and int(e.id) >= 6)
    seen = tokens_text([r.event for r in stream.received])
    running = host.get(f"{PREFIX}/{stream_id}?include=message", alice).json()
    assert running["status"] == "running"
    content = running["message"]["content"]
    assert content.startswith(seen) and "".join(tokens).startswith(content)
    assert content != "".join(tokens)
    assert "message" not in host.get(f"{PREFIX}/{stream_id}", alice).json()
    events = stream.read_all()
    ended = host.get(f"{PREFIX}/{stream_id}?include=message", alice).json()
    assert ended == {
        "stream_id": stream_id, "status": "done", "model": f"openai/{model}",
        "created": ended["created"], "last_event_id": int(events[-1].id or 0),
        "usage": {"input_tokens": 7, "output_tokens": len(tokens), **OPENAI_ZEROS},
        "metadata": {"conversation": "c-msg", "user": "alice"},
        "message": {"role": "assistant", "content": "".join(tokens), "tool_calls": None,
                    "reasoning": None, "refusal": None, "provider_data": None}}
    assert host.wait_record(stream_id)["text"] == ended["message"]["content"]


def test_hook_timing(host: Host, alice: dict[str, str], fake: FakeProvider) -> None:
    """Terminal event -> hook start, over 20 streams: as the engine dates the end
    (result.ended) and as the client saw its done event."""
    model = fake.scenario(tokens=["a", "b", "c", "d"], delay=0.01)
    after_end, after_client_done = [], []
    for _ in range(20):
        stream = host.chat(alice, model)
        stream_id = id_of(stream)
        stream.read_all()
        done_at = wall(stream.received[-1].at)
        assert stream.received[-1].event.event == "done"
        rec = host.wait_record(stream_id)
        after_end.append((rec["started"] - rec["ended"]) * 1000)
        after_client_done.append((rec["started"] - done_at) * 1000)
    figures = {name: {"n": len(values), "median_ms": round(statistics.median(values), 2),
                      "worst_ms": round(max(values), 2), "best_ms": round(min(values), 2)}
               for name, values in (("end_stored_to_hook_start", after_end),
                                    ("client_done_to_hook_start", after_client_done))}
    print(f"\nhook timing: {json.dumps(figures)}")
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / "hook_timing.json").write_text(json.dumps(figures, indent=2) + "\n")
    for value in after_end:
        record("ext_end_stored_to_hook_start_ms", value)
    for value in after_client_done:
        record("ext_client_done_to_hook_start_ms", value)
    assert max(after_end) < 2000 and max(after_client_done) < 2000
    # The result's end is never dated after its hook started (it is rounded to the ms).
    assert min(after_end) > -0.5


# ---------------------------------------------------------------- hooks that raise or hang


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_raising_and_a_hanging_hook_change_nothing(
        fake: FakeProvider, tmp_path: Path) -> None:
    bad = {"HOST_RAISING_HOOK": "1", "HOST_HANGING_HOOK": "1"}
    with running_host(fake, tmp_path / "hooks.jsonl", "bad-hooks",
                      {"END_HOOK_TIMEOUT_S": "1"}, extra=bad) as h:
        who = h.login("alice")
        pid = worker_pid(h.server)
        models = [fake.scenario(tokens=TOKENS, delay=0.01) for _ in range(3)]
        ids = []
        for model in models:  # the hooks of the first ones still hang while the next stream
            stream = h.chat(who, model)
            events = stream.read_all()
            assert tokens_text(events) == "".join(TOKENS)
            assert [e.event for e in events].count("done") == 1
            ids.append(id_of(stream))
            assert h.wait_record(ids[-1])["status"] == "done"  # the other hook still ran
            asked = time.monotonic()
            assert h.get("/healthz").status == 200
            assert time.monotonic() - asked < 1
        deadline = time.monotonic() + 10
        while True:  # the hanging hooks reach their timeout (1 s) one after the other
            text = h.get("/metrics").body.decode()
            if metric(text, 'sse_end_hooks_total{outcome="timeout"}') >= 3:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.05)
        assert metric(text, 'sse_end_hooks_total{outcome="timeout"}') == 3
        assert metric(text, 'sse_end_hooks_total{outcome="error"}') == 3
        assert metric(text, 'sse_end_hooks_total{outcome="ok"}') == 3
        for stream_id in ids:  # the streams themselves are untouched
            status = h.get(f"{PREFIX}/{stream_id}?include=message", who).json()
            assert (status["status"], status["message"]["content"]) == ("done", "".join(TOKENS))
        log = h.server.log()
        for stream_id in ids:
            assert f"completion hook raising_hook failed for stream {stream_id}" in log
            assert (f"completion hook hanging_hook: stream {stream_id}: still running after 1 s;"
                    " stopped") in log
        assert "RuntimeError: the host's hook failed on" in log
        assert worker_pid(h.server) == pid  # the same worker served throughout
        stream = h.chat(who, fake.scenario(tokens=TOKENS))
        assert tokens_text(stream.read_all()) == "".join(TOKENS)


# ------------------------------------------------------------- two instances, one Redis


def redis_settings() -> dict[str, str]:
    # A database no other server of the suite sweeps: which instance declares a
    # killed producer's stream lost is what these tests count.
    return {"REDIS_URL": CLUSTER_REDIS_URL, "PRODUCER_TIMEOUT_S": str(PRODUCER_TIMEOUT_S)}


@pytest.fixture(scope="module")
def host_b(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    log = tmp_path_factory.mktemp("cluster") / "hooks.jsonl"
    with running_host(fake, log, "B", redis_settings()) as b:
        yield b


@contextlib.contextmanager
def host_a(fake: FakeProvider, b: Host) -> Iterator[Host]:
    """Instance A, sharing B's Redis and hook log. Its master may be frozen by
    ``kill_worker``: it is then told to quit at once (SIGQUIT) before it resumes."""
    with running_host(fake, b.hook_log, "A", redis_settings()) as a:
        try:
            yield a
        finally:
            process = a.server.process
            assert process is not None
            if Path(f"/proc/{process.pid}/stat").read_text().split()[2] == "T":  # stopped
                os.kill(process.pid, signal.SIGQUIT)
                os.kill(process.pid, signal.SIGCONT)
                process.wait(timeout=15)


def read_to_cut(stream: SSEStream) -> str:
    """The text a client got of a stream whose server died mid-answer."""
    with contextlib.suppress(http.client.IncompleteRead, ConnectionError):
        stream.read_all()
    return tokens_text([r.event for r in stream.received])


def kill_worker(a: Host) -> int:
    """SIGKILL A's worker. Its master is frozen first (SIGSTOP), so it starts no new
    worker: a new one would sweep for lost streams too, and the process that ends
    the stream must be B's for the test to say who ran the hooks."""
    assert a.server.process is not None
    pid = worker_pid(a.server)
    os.kill(a.server.process.pid, signal.SIGSTOP)
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_killed_producers_stream_runs_its_hooks_once_on_the_instance_that_reads_it(
        fake: FakeProvider, host_b: Host) -> None:
    with host_a(fake, host_b) as a:
        who_a, who_b = a.login("alice"), host_b.login("alice")
        model = fake.scenario(tokens=LONG, delay=0.03)
        first = a.chat(who_a, model, conversation="c-lost")
        stream_id = id_of(first)
        first.read_until(lambda e: e.event == "token")
        reader = host_b.server.stream("GET", f"{PREFIX}/{stream_id}/events", headers=who_b)
        reader.read_until(lambda e: e.event == "token" and int(e.id) >= 3)
        producer = kill_worker(a)
        killed = time.monotonic()
        events = reader.read_all()
        assert events[-1].event == "error"
        assert events[-1].json() == {"code": "stream_lost",
                                     "message": "the process producing this stream stopped",
                                     "retryable": True, "provider": "openai"}
        waited = reader.received[-1].at - killed
        record("ext_sigkill_to_stream_lost_ms", waited * 1000)
        assert waited < PRODUCER_TIMEOUT_S + 3
        rec = host_b.wait_record(stream_id)
        record("ext_lost_declared_to_hook_start_ms", (rec["started"] - rec["ended"]) * 1000)
        assert rec["pid"] == worker_pid(host_b.server) != producer
        assert {k: rec[k] for k in ("owner", "status", "reason", "text", "metadata",
                                    "app_context", "request_context")} == {
            "owner": "alice", "status": "error", "reason": "stream_lost",
            "text": tokens_text(events), "metadata": {"conversation": "c-lost", "user": "alice"},
            "app_context": True, "request_context": False}
        assert tokens_text(events).startswith(read_to_cut(first))
        time.sleep(PRODUCER_TIMEOUT_S)  # every sweep since would have run it again
        assert len(host_b.records(stream_id)) == 1


def test_a_killed_producers_stream_nobody_reads_is_swept_and_its_hooks_run_once(
        fake: FakeProvider, host_b: Host) -> None:
    who_b = host_b.login("alice")
    warm = host_b.chat(who_b, fake.scenario(tokens=["ok"]))  # B has served a stream
    assert tokens_text(warm.read_all()) == "ok"
    with host_a(fake, host_b) as a:
        who_a = a.login("alice")
        model = fake.scenario(tokens=LONG, delay=0.03)
        first = a.chat(who_a, model, conversation="c-swept")
        stream_id = id_of(first)
        first.read_until(lambda e: e.event == "token" and int(e.id) >= 3)
        producer = kill_worker(a)
        killed = time.monotonic()
        seen = read_to_cut(first)  # what reached the client before A died
        rec = host_b.wait_record(stream_id, timeout=PRODUCER_TIMEOUT_S + 10)
        waited = time.monotonic() - killed
        record("ext_sigkill_to_swept_hook_ms", waited * 1000)
        record("ext_lost_declared_to_hook_start_ms", (rec["started"] - rec["ended"]) * 1000)
        assert rec["pid"] == worker_pid(host_b.server) != producer
        assert (rec["status"], rec["reason"], rec["owner"]) == ("error", "stream_lost", "alice")
        assert rec["metadata"] == {"conversation": "c-swept", "user": "alice"}
        assert rec["text"].startswith(seen) and "".join(LONG).startswith(rec["text"])
        status = host_b.get(f"{PREFIX}/{stream_id}?include=message", who_b).json()
        assert status["status"] == "error"
        assert status["message"]["content"] == rec["text"]
        time.sleep(PRODUCER_TIMEOUT_S)
        assert len(host_b.records(stream_id)) == 1


# ------------------------------------------------------------------ a browser's EventSource


def test_a_browsers_eventsource_follows_with_the_session_cookie(
        host: Host, fake: FakeProvider) -> None:
    from tests.live.browser import chromium, watched_page

    tokens = TOKENS * 3
    model = fake.scenario(tokens=tokens, delay=0.02)
    with chromium() as browser, watched_page(browser) as page:
        page.goto(host.server.url + "/")
        result = page.evaluate("""async (model) => {
            const json = {'Content-Type': 'application/json'};
            await fetch('/login', {method: 'POST', headers: json,
                                   body: JSON.stringify({user: 'carol'})});
            const started = await fetch('/chat', {method: 'POST', headers: json,
                body: JSON.stringify({model: 'openai/' + model, prompt: 'hi',
                                      conversation: 'browser', resume_grace_s: 30})});
            const id = started.headers.get('X-Stream-ID');
            const location = started.headers.get('Location');
            await started.body.cancel();   // the page hands the stream to an EventSource
            return await new Promise((resolve) => {
                const source = new EventSource(location);
                const seen = {id, location, text: '', ids: [], names: []};
                const take = (name) => (event) => {
                    seen.ids.push(Number(event.lastEventId));
                    seen.names.push(name);
                    if (name === 'token') seen.text += JSON.parse(event.data).content;
                    if (name === 'done') { source.close(); resolve(seen); }
                };
                for (const name of ['start', 'token', 'done', 'error', 'cancelled'])
                    source.addEventListener(name, take(name));
                source.onerror = () => { seen.failed = source.readyState;
                                         source.close(); resolve(seen); };
            });
        }""", model)
        # Logged out, the same EventSource is refused (401): the cookie was the key.
        refused = page.evaluate("""async (location) => {
            await fetch('/logout', {method: 'POST'});
            return await new Promise((resolve) => {
                const source = new EventSource(location);
                source.onopen = () => { source.close(); resolve('opened'); };
                source.onerror = () => { resolve(source.readyState); source.close(); };
            });
        }""", result["location"])
    stream_id = result["id"]
    assert result.get("failed") is None, result
    assert refused == 2  # EventSource.CLOSED: a non-200 answer ends it, no reconnecting
    assert result["location"] == f"{PREFIX}/{stream_id}/events"
    assert result["text"] == "".join(tokens)
    assert result["ids"] == list(range(len(tokens) + 2))
    assert result["names"] == ["start", *["token"] * len(tokens), "done"]
    rec = host.wait_record(stream_id)
    assert (rec["owner"], rec["status"], rec["text"]) == ("carol", "done", "".join(tokens))
    assert len(fake.calls(model)) == 1


def test_every_stream_ran_its_hooks_exactly_once(host: Host) -> None:
    """Last in this file: no stream of the tests above ran its hooks twice, late."""
    counts = Counter(r["stream_id"] for r in host.records())
    assert all(n == 1 for n in counts.values()), counts

