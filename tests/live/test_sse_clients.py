"""Third-party SSE clients against the real gateway: the conventions they rely on.

The clients are real, pinned packages, not stand-ins: npm ``eventsource`` (a WHATWG
EventSource for Node) and ``@microsoft/fetch-event-source`` (installed by ``npm ci`` in
``tests/clients/``, ``make clients``; driven by the scripts there, which print one JSON
object a line), and PyPI ``requests-sse`` and ``httpx-sse`` (requirements files).

- A finished stream: ``GET .../events`` at or past its terminal event answers 204, and an
  EventSource stops there instead of reconnecting every ``retry:`` until the stream expires.
- A dropped POST that the library retries with ``Last-Event-ID`` and the same
  ``X-Stream-ID`` resumes the stream: no second provider request, nothing lost or repeated.
- No block without ``data`` ends with a blank line, so the ``retry:`` line and the
  ``: ping`` heartbeats never become empty events that break ``json.loads``.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from httpx_sse import connect_sse
from requests_sse import EventSource as RequestsEventSource

from tests.conftest import record
from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import ROOT, GatewayServer
from tests.live.proxy import CuttableProxy
from tests.test_broker import REDIS_URL

CLIENTS = ROOT / "tests" / "clients"
RETRY_MS = 200  # the gateway's `retry:`: how soon the libraries reconnect
HEARTBEAT_S = 0.1
WINDOW_MS = 5 * RETRY_MS  # how long an EventSource is watched after its stream ended
TERMINAL = {"done", "error", "cancelled"}
TOKENS = [f"tok{i} " for i in range(40)] + ["é 👋🏽 \"q\"\n", "end."]


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def npm_clients() -> Path:
    """The pinned npm clients, installed with ``npm ci`` when missing (``make clients``)."""
    stamp = CLIENTS / "node_modules" / ".package-lock.json"
    lock = CLIENTS / "package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        npm = shutil.which("npm")
        assert npm, "npm is missing: make services (apt-get install -y npm)"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=CLIENTS, check=True, timeout=300)
    return CLIENTS


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(fake: FakeProvider, request: pytest.FixtureRequest) -> Iterator[GatewayServer]:
    """One gateway per broker, with a short `retry:`, quick heartbeats and an access log
    (each request's line counts what the clients asked for)."""
    extra = {"REDIS_URL": REDIS_URL} if request.param == "redis" else {}
    gateway = GatewayServer(gateway_env(fake, RETRY_MS=str(RETRY_MS), HEARTBEAT_S=str(HEARTBEAT_S),
                                        ACCESS_LOG="-", RESUME_GRACE_S="30", **extra),
                            label=f"clients-{request.param}")
    try:
        yield gateway.start()
    finally:
        gateway.stop()


def new_stream_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(16)}"


def finished_stream(server: GatewayServer, fake: FakeProvider,
                    tokens: list[str] | None = None) -> tuple[str, list[Any]]:
    """A stream run to its end; its id and its events (our own parser, as replayed)."""
    model = fake.scenario(tokens=tokens or ["Hel", "lo"])
    stream = server.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "hi"})
    assert stream.status == 200
    events = stream.read_all()
    assert events[-1].event == "done", events
    return str(stream.header("X-Stream-ID")), events


def access_lines(server: GatewayServer, path: str) -> list[str]:
    return [line for line in server.log().splitlines() if f'"GET {path}' in line]


def wait_access_lines(server: GatewayServer, path: str, at_least: int) -> list[str]:
    """The access lines for ``path`` once there are ``at_least`` (gunicorn writes a line
    when a request has been answered; the file gives no event to wait on)."""
    deadline = time.monotonic() + 5
    while len(lines := access_lines(server, path)) < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
    return lines


class NodeDriver:
    """A driver script of tests/clients/ in a node subprocess, its JSON lines read as
    they come; stopped by its pid."""

    def __init__(self, script: str, config: dict[str, Any]) -> None:
        node = shutil.which("node")
        assert node, "node is missing: make services"
        self.process = subprocess.Popen([node, script, json.dumps(config)], cwd=CLIENTS,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._cursor = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self._queue.put(json.loads(raw))
        self._queue.put(None)

    def _next(self, timeout: float) -> dict[str, Any] | None:
        item = self._queue.get(timeout=timeout)
        if item is not None:
            self.lines.append(item)
        return item

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool],
                 timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while self._cursor < len(self.lines):
                self._cursor += 1
                if predicate(self.lines[self._cursor - 1]):
                    return self.lines[self._cursor - 1]
            try:
                if self._next(max(0.01, deadline - time.monotonic())) is None:
                    raise AssertionError(f"the driver ended first: {self.lines}\n{self.stderr()}")
            except queue.Empty:
                raise AssertionError(f"nothing matched within {timeout} s: {self.lines}") from None

    def finish(self, timeout: float = 30) -> list[dict[str, Any]]:
        """Every line, once the script has exited (killed by pid after ``timeout``)."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"the driver did not end within {timeout} s: {self.lines}") \
                from None
        self._reader.join(timeout=5)
        while True:
            try:
                if self._next(0) is None:
                    break
            except queue.Empty:
                break
        return self.lines

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


@contextlib.contextmanager
def node_driver(npm_clients: Path, script: str, config: dict[str, Any]) -> Iterator[NodeDriver]:
    driver = NodeDriver(script, config)
    try:
        yield driver
    finally:
        driver.stop()
        for pipe in (driver.process.stdout, driver.process.stderr):
            if pipe is not None:
                pipe.close()


@contextlib.contextmanager
def cuttable(server: GatewayServer) -> Iterator[CuttableProxy]:
    proxy = CuttableProxy(server.port)
    try:
        yield proxy
    finally:
        proxy.close()


def replayed(server: GatewayServer, stream_id: str) -> list[tuple[str, str, str]]:
    """(id, event, data) of every event of a stream, replayed with our own parser."""
    stream = server.stream("GET", f"/v1/streams/{stream_id}/events")
    assert stream.status == 200
    return [(str(e.id), e.event, e.data) for e in stream.read_all()]


def heartbeats(server: GatewayServer) -> float:
    text = server.request("GET", "/metrics").body.decode()
    found = re.search(r"^sse_heartbeats_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


# ------------------------------------------------- item 6: 204 at or past the terminal event


@pytest.mark.parametrize("position", ["last", "past"])
def test_events_at_or_past_the_terminal_event_answer_204(
        server: GatewayServer, fake: FakeProvider, position: str) -> None:
    stream_id, events = finished_stream(server, fake)
    last = int(events[-1].id)
    after = last if position == "last" else last + 5
    path = f"/v1/streams/{stream_id}/events"
    for headers, query in (({"Last-Event-ID": str(after)}, ""), ({}, f"?last_event_id={after}")):
        reply = server.request("GET", path + query, headers=headers)
        assert (reply.status, reply.body) == (204, b""), (headers, query, reply)
    # One event before the end still replays that event.
    reply = server.request("GET", path, headers={"Last-Event-ID": str(last - 1)})
    assert reply.status == 200 and b"event: done" in reply.body, reply


def test_eventsource_stops_on_a_finished_stream(server: GatewayServer, fake: FakeProvider,
                                                npm_clients: Path) -> None:
    """A browser-like EventSource opened on a finished stream at its last id: one request,
    then CLOSED; not a reconnection every `retry:` until the stream expires."""
    stream_id, events = finished_stream(server, fake)
    path = f"/v1/streams/{stream_id}/events"
    with node_driver(npm_clients, "eventsource.mjs", {
            "url": f"{server.url}{path}?last_event_id={events[-1].id}",
            "windowMs": WINDOW_MS, "windowFromFirstAnswer": True}) as driver:
        lines = driver.finish()
    final = lines[-1]
    requests_made = [line for line in lines if line["kind"] == "request"]
    logged = wait_access_lines(server, path, len(requests_made))
    record("eventsource requests on a finished stream", len(logged))
    assert not [line for line in lines if line["kind"] == "event"], lines
    assert final == {"kind": "final", "readyState": 2, "requests": 1}, lines
    assert [line["code"] for line in lines if line["kind"] == "error"] == [204], lines
    assert len(logged) == 1 and '" 204 ' in logged[0], logged


def test_eventsource_follows_a_stream_to_its_end_then_stops(
        server: GatewayServer, fake: FakeProvider, npm_clients: Path) -> None:
    """Following a running stream from the start: every event, then the library's one
    reconnection (Last-Event-ID = the terminal id) answers 204, and it stays CLOSED."""
    model = fake.scenario(tokens=TOKENS[:20], delay=0.05)
    stream_id = new_stream_id("es")
    path = f"/v1/streams/{stream_id}/events"
    post = server.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "hi"},
                         headers={"X-Stream-ID": stream_id})
    assert post.status == 200
    post.read_until(lambda e: e.event == "start")
    with node_driver(npm_clients, "eventsource.mjs", {
            "url": f"{server.url}{path}", "windowMs": WINDOW_MS}) as driver:
        lines = driver.finish()
    post.read_all()
    requests_made = [line for line in lines if line["kind"] == "request"]
    logged = wait_access_lines(server, path, len(requests_made))
    record("eventsource requests following a stream", len(logged))
    got = [(line["id"], line["event"], line["data"]) for line in lines if line["kind"] == "event"]
    assert got == replayed(server, stream_id)
    assert [r["lastEventId"] for r in requests_made] == [None, got[-1][0]], lines
    assert lines[-1] == {"kind": "final", "readyState": 2, "requests": 2}, lines
    assert len(logged) == 2 and '" 204 ' in logged[-1], logged


KEY = f"sk-clients-{secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def keyed(fake: FakeProvider) -> Iterator[GatewayServer]:
    """A gateway that needs an API key: only a stream token opens a stream's events."""
    gateway = GatewayServer(gateway_env(fake, RETRY_MS=str(RETRY_MS), API_KEYS=KEY,
                                        ACCESS_LOG="-", RESUME_GRACE_S="30"),
                            label="clients-keyed")
    try:
        yield gateway.start()
    finally:
        gateway.stop()


def test_eventsource_resumes_through_cut_connections_with_a_token(
        keyed: GatewayServer, fake: FakeProvider, npm_clients: Path) -> None:
    """npm ``eventsource`` through a proxy that resets it twice, on a gateway that needs
    a key: the stream token in its URL is its credential; it reconnects with
    Last-Event-ID, gets every event once, and stops at the 204 after ``done``."""
    model = fake.scenario(tokens=TOKENS, delay=0.05)  # 2.1 s: the cuts land mid-stream
    post = keyed.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "hi"},
                        headers={"Authorization": f"Bearer {KEY}"})
    assert post.status == 200
    stream_id, token = post.header("X-Stream-ID"), post.header("X-Stream-Token")
    post.read_until(lambda e: e.event == "start")
    post.drop()  # the browser's POST is gone: the EventSource takes over within the grace
    with cuttable(keyed) as proxy, node_driver(npm_clients, "eventsource.mjs", {
            "url": f"{proxy.url}/v1/streams/{stream_id}/events?token={token}",
            "windowMs": WINDOW_MS}) as driver:
        for seen in (5, 15):
            driver.wait_for(lambda line, n=seen: line["kind"] == "event" and int(line["id"]) >= n)
            assert proxy.cut() >= 1
        lines = driver.finish()
    events = [(line["id"], line["event"], line["data"]) for line in lines
              if line["kind"] == "event"]
    ids = [int(event_id) for event_id, _, _ in events]
    assert ids == list(range(len(ids))), ids  # none lost, none repeated
    assert "".join(json.loads(data)["content"] for _, kind, data in events
                   if kind == "token") == "".join(TOKENS)
    assert events[-1][1] == "done"
    requested = [line["lastEventId"] for line in lines if line["kind"] == "request"]
    assert requested[0] is None and len(requested) == 4, lines  # 2 resumes, then the 204
    assert [int(i) for i in requested[1:]] == sorted(int(i) for i in requested[1:])
    assert requested[-1] == events[-1][0]
    assert lines[-1] == {"kind": "final", "readyState": 2, "requests": 4}, lines
    assert len(fake.calls(model)) == 1


# ------------------------------------- item 7: a retried POST resumes, never a second stream


def check_resumed(fake: FakeProvider, model: str, events: list[tuple[str, str, str]],
                  retried: list[dict[str, str]]) -> None:
    """The events a library delivered across a cut: the provider's text exactly once, ids
    strictly increasing, one terminal event, and one provider request in all."""
    ids = [int(event_id) for event_id, _, _ in events]
    assert ids == list(range(len(ids))), ids  # from 0, +1 each: none lost or repeated
    assert [kind for _, kind, _ in events].count("start") == 1, events
    assert events[-1][1] == "done", events
    assert [kind for _, kind, _ in events if kind in TERMINAL] == ["done"], events
    text = "".join(json.loads(data)["content"] for _, kind, data in events if kind == "token")
    assert text == "".join(TOKENS)
    assert retried, "the library did not retry the POST"
    assert all(headers.get("last-event-id", "").isdigit() for headers in retried), retried
    assert fake.wait_closed(model).outcome == "complete"
    assert len(fake.calls(model)) == 1, fake.calls(model)


def test_fetch_event_source_retries_a_dropped_post_and_resumes(
        server: GatewayServer, fake: FakeProvider, npm_clients: Path) -> None:
    model = fake.scenario(tokens=TOKENS, delay=0.03)
    stream_id = new_stream_id("fes")
    with cuttable(server) as proxy, node_driver(npm_clients, "fetch-event-source.mjs", {
            "url": f"{proxy.url}/v1/streams", "method": "POST", "maxErrors": 4,
            "headers": {"Content-Type": "application/json", "X-Stream-ID": stream_id},
            "body": json.dumps({"model": f"openai/{model}", "prompt": "hi"})}) as driver:
        driver.wait_for(lambda line: line.get("event") == "token" and int(line["id"]) >= 5)
        assert proxy.cut() == 1
        lines = driver.finish()
        sent = proxy.requests()
    # Blocks without data are item 8's business (test_no_empty_events_*): left out here.
    events = [(line["id"], line["event"], line["data"]) for line in lines
              if line["kind"] == "message" and line["data"] != ""]
    assert lines[-1]["kind"] == "end", [line for line in lines if line["kind"] != "message"]
    assert [method for method, _, _ in sent] == ["POST", "POST"], sent
    assert all(headers.get("x-stream-id") == stream_id for _, _, headers in sent), sent
    check_resumed(fake, model, events, [headers for _, _, headers in sent[1:]])


def test_requests_sse_retries_a_dropped_post_and_resumes(
        server: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=TOKENS, delay=0.03)
    stream_id = new_stream_id("rsse")
    events: list[tuple[str, str, str]] = []
    with cuttable(server) as proxy:
        source = RequestsEventSource(
            f"{proxy.url}/v1/streams", method="POST", timeout=10, max_connect_retry=2,
            reconnection_time=timedelta(milliseconds=RETRY_MS),
            json={"model": f"openai/{model}", "prompt": "hi"},
            headers={"X-Stream-ID": stream_id})
        cut = False
        try:
            with source:
                for event in source:
                    events.append((event.last_event_id, str(event.type), str(event.data)))
                    if not cut and event.type == "token" and int(event.last_event_id) >= 5:
                        assert proxy.cut() == 1
                        cut = True
                    if event.type in TERMINAL:
                        break  # requests-sse reconnects after any end; a client stops here
        except requests.RequestException as exc:
            response = getattr(exc, "response", None)
            body = response.text if response is not None else ""
            raise AssertionError(f"requests-sse failed: {exc!r} {body}; events: {events}") from exc
        sent = proxy.requests()
    assert cut
    assert [method for method, _, _ in sent] == ["POST", "POST"], sent
    check_resumed(fake, model, events, [headers for _, _, headers in sent[1:]])


# ----------------------------------------------- item 8: no empty events from retry: or pings


def test_no_empty_events_in_httpx_sse(server: GatewayServer, fake: FakeProvider) -> None:
    """httpx-sse (our own Python client's parser): every event it yields, on the POST and on
    a replay, has data that json-parses; they are the gateway's events, in order."""
    model = fake.scenario(tokens=["a", "b", "c"], ttft=8 * HEARTBEAT_S, delay=4 * HEARTBEAT_S)
    pings_before = heartbeats(server)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        with connect_sse(client, "POST", "/v1/streams",
                         json={"model": f"openai/{model}", "prompt": "hi"}) as source:
            assert source.response.status_code == 200
            stream_id = source.response.headers["x-stream-id"]
            posted = list(source.iter_sse())
        with connect_sse(client, "GET", f"/v1/streams/{stream_id}/events") as source:
            assert source.response.status_code == 200
            replay = list(source.iter_sse())
    pings = heartbeats(server) - pings_before
    record("heartbeats during the httpx-sse stream", pings)
    assert pings >= 3, "the stream had no heartbeats to test"
    for sse in posted + replay:
        assert sse.data != "", (sse, posted)
        sse.json()  # what fails on an empty event
    expected = replayed(server, stream_id)
    assert [(sse.id, sse.event, sse.data) for sse in posted] == expected
    assert [(sse.id, sse.event, sse.data) for sse in replay] == expected


def test_no_empty_events_in_fetch_event_source(server: GatewayServer, fake: FakeProvider,
                                               npm_clients: Path) -> None:
    model = fake.scenario(tokens=["a", "b", "c"], ttft=8 * HEARTBEAT_S, delay=4 * HEARTBEAT_S)
    pings_before = heartbeats(server)
    with node_driver(npm_clients, "fetch-event-source.mjs", {
            "url": f"{server.url}/v1/streams", "method": "POST", "maxErrors": 0,
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps({"model": f"openai/{model}", "prompt": "hi"})}) as driver:
        lines = driver.finish()
    pings = heartbeats(server) - pings_before
    assert pings >= 3, "the stream had no heartbeats to test"
    assert lines[-1]["kind"] == "end", lines
    messages = [line for line in lines if line["kind"] == "message"]
    for message in messages:
        assert message["data"] != "", (message, messages)
        json.loads(message["data"])
    start = json.loads(messages[0]["data"])
    assert [(m["id"], m["event"], m["data"]) for m in messages] == replayed(
        server, start["stream_id"])


def test_every_block_that_ends_with_a_blank_line_has_data(server: GatewayServer,
                                                           fake: FakeProvider) -> None:
    """The wire itself, on a POST with heartbeats and on a replay: a block without a data
    field (the `retry:` line, a `: ping`) never ends with a blank line."""
    model = fake.scenario(tokens=["a", "b"], ttft=8 * HEARTBEAT_S, delay=4 * HEARTBEAT_S)
    post = server.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "hi"})
    post.read_all()
    replay = server.stream("GET", f"/v1/streams/{post.header('X-Stream-ID')}/events")
    replay.read_all()
    assert post.raw.count(b": ping") >= 3, post.raw  # heartbeats while the model was silent
    for raw in (bytes(post.raw), bytes(replay.raw)):
        *blocks, rest = raw.split(b"\n\n")
        assert rest == b"", raw  # the terminal event's block is the last thing sent
        for block in blocks:
            assert any(line.startswith(b"data:") for line in block.split(b"\n")), (block, raw)
        assert raw.startswith(f"retry: {RETRY_MS}\n".encode()), raw


# ------------------------------------------------------ Last-Event-ID is ASCII digits only


@pytest.mark.parametrize("value", ["-1", "+1", "1_0", "1.0", "0x1", "1 2", "\u0661"])
def test_last_event_id_must_be_ascii_digits(server: GatewayServer, fake: FakeProvider,
                                            value: str) -> None:
    """``int()`` would take all of these (but ``1 2`` and ``1.0``) as a position."""
    stream_id, _ = finished_stream(server, fake)
    path = f"/v1/streams/{stream_id}/events"
    replies = [server.request("GET", f"{path}?{httpx.QueryParams({'last_event_id': value})}")]
    if value.isascii():
        replies.append(server.request("GET", path, headers={"Last-Event-ID": value}))
        replies.append(server.request(  # a POST resume takes the same positions
            "POST", "/v1/streams", {"model": "demo/echo", "prompt": "hi"},
            headers={"Last-Event-ID": value, "X-Stream-ID": stream_id}))
    for reply in replies:
        assert reply.status == 400, (value, reply)
        error = reply.json()["error"]
        assert error["code"] == "invalid_request", error
        assert error["param"] in ("last_event_id", "Last-Event-ID"), error
