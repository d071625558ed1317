"""The live-test infrastructure (tests/live/infra.py) and what nginx.conf itself does for SSE.

A tiny stdlib HTTP/1.1 server stands in for gunicorn. It streams ``text/event-stream``
WITHOUT ``X-Accel-Buffering: no``, so events that arrive one by one through nginx prove
that nginx.conf itself turns buffering off on the stream routes.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.live.infra import (
    NGINX_CONF,
    NginxServer,
    RedisServer,
    free_port,
    redis_ping,
    render_nginx_conf,
)

EVENTS = 5
GAP_S = 0.3
MIB = 1024 * 1024
STREAM_ROUTE = re.compile(r"^/v1/streams(/[A-Za-z0-9_-]+/events)?$")  # as in nginx.conf


# --- a stand-in for gunicorn ------------------------------------------------------------

@dataclass
class Seen:
    """One request as the upstream received it."""

    connection: int  # which accepted TCP connection (1, 2, ...) carried it
    method: str
    path: str
    version: str
    headers: dict[str, str]
    body_length: int


class Upstream:
    """A threaded HTTP/1.1 server on a free port.

    - ``POST /v1/streams`` and ``GET /v1/streams/<id>/events``: ``text/event-stream``,
      chunked, ``EVENTS`` events ``GAP_S`` apart (``?gap=S`` changes the gap);
    - ``GET /v1/streams/<id>``: the same stream, on a route nginx buffers;
    - ``GET /big?mib=N``: N MiB of a known pattern, with Content-Length;
    - anything else: ``{name} {connection}`` as text/plain.
    """

    def __init__(self, name: str = "upstream") -> None:
        self.name = name
        self.connections = 0
        self.seen: list[Seen] = []
        self.big_sent = threading.Event()
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.upstream = self  # type: ignore[attr-defined]
        self.address = ("127.0.0.1", self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> Upstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    def connected(self) -> int:
        with self._lock:
            self.connections += 1
            return self.connections

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, chunked responses

    def setup(self) -> None:
        super().setup()
        self.upstream: Upstream = self.server.upstream  # type: ignore[attr-defined]
        self.connection_number = self.upstream.connected()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return bytes(body)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self) -> None:
        body = self._read_body()
        url = urlsplit(self.path)
        self.upstream.record(Seen(self.connection_number, self.command, url.path,
                                  self.request_version, dict(self.headers.items()), len(body)))
        query = parse_qs(url.query)
        if STREAM_ROUTE.match(url.path) or re.fullmatch(r"/v1/streams/[\w-]+", url.path):
            self._stream(float(query.get("gap", [GAP_S])[0]),
                         query.get("framing", ["chunked"])[0])
        elif url.path == "/big":
            self._big(int(query["mib"][0]))
        else:
            text = f"{self.upstream.name} {self.connection_number}".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

    def _stream(self, gap: float, framing: str) -> None:
        events = [f"id: {i}\ndata: {{\"n\": {i}}}\n\n".encode() for i in range(EVENTS)]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        elif framing == "length":
            self.send_header("Content-Length", str(sum(map(len, events))))
        else:  # "close": the body ends when the connection does (an HTTP/1.0 upstream)
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()  # deliberately no X-Accel-Buffering
        for i, event in enumerate(events):
            if i and self.upstream.closing.wait(gap):  # paces the events; ends early on stop()
                return
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event)
                             if framing == "chunked" else event)
        if framing == "chunked":
            self.wfile.write(b"0\r\n\r\n")

    def _big(self, mib: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(mib * MIB))
        self.end_headers()
        for i in range(mib):
            self.wfile.write(_block(i))
        self.upstream.big_sent.set()


def _block(i: int) -> bytes:
    return bytes([i % 251]) * MIB


# --- fixtures and helpers ---------------------------------------------------------------

@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nginx(upstream: Upstream) -> Iterator[NginxServer]:
    with NginxServer([upstream.address]) as server:
        yield server


def connect(nginx: NginxServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(nginx.host, nginx.port, timeout=10)


def read_events(response: http.client.HTTPResponse) -> list[float]:
    """Read an SSE response to its end; the time.monotonic() at which each event arrived."""
    arrivals = []
    while line := response.readline():
        if line.startswith(b"data:"):
            arrivals.append(time.monotonic())
    return arrivals


def stream(connection: http.client.HTTPConnection, method: str, path: str) -> list[float]:
    body = b'{"model": "demo/echo", "prompt": "hi"}' if method == "POST" else None
    connection.request(method, path, body=body, headers={
        "Content-Type": "application/json", "Accept-Encoding": "gzip"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream"
    assert response.getheader("X-Accel-Buffering") is None  # the config alone must do it
    assert response.getheader("Content-Encoding") is None  # gzip off
    return read_events(response)


def post_body(nginx: NginxServer, path: str, size: int) -> int:
    """POST ``size`` bytes (with Content-Length); the status nginx answers."""
    connection = connect(nginx)
    try:
        # nginx may answer 413 and close before it has read the whole body.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request("POST", path, body=b"x" * size,
                               headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


# --- nginx.conf on the stream routes ----------------------------------------------------

def test_stream_routes_are_unbuffered_with_keepalive_and_forwarded_for(
        nginx: NginxServer, upstream: Upstream) -> None:
    connection = connect(nginx)  # one client connection: one nginx worker, one upstream pool
    try:
        created = stream(connection, "POST", "/v1/streams")
        resumed = stream(connection, "GET", "/v1/streams/my-stream-0123456789/events")
    finally:
        connection.close()

    for arrivals in (created, resumed):
        assert len(arrivals) == EVENTS
        assert arrivals[-1] - arrivals[0] > 0.9, arrivals  # 5 events 0.3 s apart
    assert [(s.method, s.path) for s in upstream.seen] == [
        ("POST", "/v1/streams"), ("GET", "/v1/streams/my-stream-0123456789/events")]
    for seen in upstream.seen:
        assert seen.version == "HTTP/1.1"
        assert seen.headers["X-Forwarded-For"] == "127.0.0.1"
        assert "Connection" not in seen.headers  # `Connection ""`: keep-alive to the upstream
        assert seen.headers["Host"] == "127.0.0.1"  # $host
    assert upstream.seen[0].body_length == len(b'{"model": "demo/echo", "prompt": "hi"}')
    # Keep-alive: the second request reused nginx's idle connection to the upstream.
    assert upstream.connections == 1
    assert {s.connection for s in upstream.seen} == {1}


def test_stream_routes_are_unbuffered_whatever_the_framing(nginx: NginxServer) -> None:
    """With chunked upstream responses (the test above) nginx passes each chunk on even where
    it buffers; with a Content-Length or close-delimited body (an HTTP/1.0 upstream) it holds
    events back unless buffering is off. So: the stream routes pass each event at once, and
    the status route (location /, buffered) is the control that shows the timing can fail.
    All requests run at the same time."""
    cases = {
        ("POST", "/v1/streams?framing=length"): True,
        ("GET", "/v1/streams/my-stream-0123456789/events?framing=length"): True,
        ("POST", "/v1/streams?framing=close"): True,
        ("GET", "/v1/streams/my-stream-0123456789/events?framing=close"): True,
        ("GET", "/v1/streams/my-stream-0123456789?framing=length"): False,
        ("GET", "/v1/streams/my-stream-0123456789?framing=close"): False,
    }

    def run(case: tuple[str, str]) -> list[float]:
        connection = connect(nginx)
        try:
            return stream(connection, *case)
        finally:
            connection.close()

    with ThreadPoolExecutor(len(cases)) as pool:
        results = dict(zip(cases, pool.map(run, cases), strict=True))
    for case, arrivals in results.items():
        assert len(arrivals) == EVENTS, case
        spread = arrivals[-1] - arrivals[0]
        assert spread > 0.9 if cases[case] else spread < 0.2, (case, arrivals)


def test_bodies_over_one_mib_get_413_from_nginx(nginx: NginxServer, upstream: Upstream) -> None:
    assert post_body(nginx, "/v1/streams", MIB + 1) == 413
    assert post_body(nginx, "/v1/other", MIB + 1) == 413
    assert upstream.seen == []
    assert post_body(nginx, "/v1/streams?gap=0", MIB) == 200  # = MAX_CONTENT_LENGTH still passes
    assert [s.body_length for s in upstream.seen] == [MIB]


def test_workers_can_use_the_temp_paths(nginx: NginxServer, upstream: Upstream) -> None:
    """nginx as root runs workers as `nobody`; bodies and responses too large for memory go
    through client_body_temp_path and proxy_temp_path in the private temp dir."""
    assert post_body(nginx, "/v1/other", 512 * 1024) == 200  # request buffering is on here
    assert upstream.seen[-1].body_length == 512 * 1024

    mib = 16
    connection = connect(nginx)
    try:
        connection.request("GET", f"/big?mib={mib}")
        response = connection.getresponse()
        # Not reading until the upstream has sent everything makes nginx spill to disk.
        assert upstream.big_sent.wait(10)
        for i in range(mib):
            assert response.read(MIB) == _block(i)
        assert response.read() == b""
    finally:
        connection.close()
    log = nginx.error_log()
    assert "a client request body is buffered to a temporary file" in log, log
    assert "an upstream response is buffered to a temporary file" in log, log
    assert "Permission denied" not in log, log


def test_read_timeout_replaces_proxy_read_timeout(upstream: Upstream) -> None:
    with NginxServer([upstream.address], read_timeout="1s") as nginx:
        assert re.findall(r"proxy_read_timeout (\S+);", nginx.conf_path.read_text()) == \
            ["1s", "1s", "1s"]  # the stream routes, the WebSocket, the rest
        connection = connect(nginx)
        try:
            connection.request("GET", "/v1/streams/my-stream-0123456789/events?gap=3")
            response = connection.getresponse()
            started = time.monotonic()
            try:
                arrivals = read_events(response)
            except http.client.IncompleteRead:  # nginx cut the chunked response
                arrivals = []
            assert time.monotonic() - started < 2.5
        finally:
            connection.close()
        assert len(arrivals) < EVENTS
        assert "upstream timed out" in nginx.error_log()


def test_two_upstreams_take_turns() -> None:
    first, second = Upstream("first").start(), Upstream("second").start()
    try:
        with NginxServer([first.address, second.address]) as nginx:
            connection = connect(nginx)
            try:
                names = []
                for _ in range(4):
                    connection.request("GET", "/v1/models")
                    names.append(connection.getresponse().read().decode().split()[0])
            finally:
                connection.close()
    finally:
        first.stop()
        second.stop()
    assert sorted(names) == ["first", "first", "second", "second"]
    assert names[0] != names[1]  # round robin
    assert len(first.seen) == len(second.seen) == 2


# --- infra.py itself --------------------------------------------------------------------

def test_config_is_the_repository_file_with_only_the_test_values(
        nginx: NginxServer, upstream: Upstream) -> None:
    source = NGINX_CONF.read_text().splitlines()
    rendered = nginx.conf_path.read_text().splitlines()
    changed = [line.strip() for line in rendered if line not in source]
    tmp = nginx.conf_path.parent
    assert changed == [
        f"pid {tmp}/nginx.pid;",
        f"error_log {tmp}/error.log warn;",
        f"client_body_temp_path {tmp}/client_body;",
        f"proxy_temp_path {tmp}/proxy;",
        f"server {upstream.address[0]}:{upstream.address[1]};",
        f"listen 127.0.0.1:{nginx.port};",
    ]
    assert len(rendered) == len(source) - 1  # the commented-out example server is gone
    assert str(tmp) not in NGINX_CONF.read_text()


@pytest.mark.parametrize(("pattern", "replacement", "missing"), [
    (r"listen 127\.0\.0\.1:8080;", "", "listen"),
    (r"pid \S+;", "", "pid"),
    (r"error_log \S+ \w+;", "", "error_log"),
    (r"client_body_temp_path \S+;", "", "client_body_temp_path"),
    (r"proxy_temp_path \S+;", "", "proxy_temp_path"),
    (r"server 127\.0\.0\.1:8000;", "", "server"),
    (r"server 127\.0\.0\.1:8000;", "server 127.0.0.1:8000;\n server 127.0.0.1:8002;", "server"),
    (r"upstream gateway", "upstream other", "upstream gateway"),
])
def test_config_changes_fail_loudly(pattern: str, replacement: str, missing: str) -> None:
    source = re.sub(pattern, replacement, NGINX_CONF.read_text())
    with pytest.raises(RuntimeError, match=missing):
        render_nginx_conf(source, port=1, upstreams=[("127.0.0.1", 2)], tmp=Path("/tmp/x"))


def test_a_config_nginx_refuses_raises_with_its_output(upstream: Upstream) -> None:
    nginx = NginxServer([upstream.address], read_timeout="not-a-time")
    with pytest.raises(RuntimeError, match="proxy_read_timeout"):
        nginx.start()
    assert nginx.process is None and nginx.tmp is None  # stopped and cleaned up
    nginx.stop()  # idempotent


def test_nginx_stop_ends_master_and_workers(upstream: Upstream) -> None:
    nginx = NginxServer([upstream.address]).start()
    assert nginx.process is not None
    group = nginx.process.pid
    nginx.stop()
    nginx.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)  # no process of nginx's group is left
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((nginx.host, nginx.port), timeout=1).close()


def test_redis_server_stops_and_restarts_on_the_same_port() -> None:
    with RedisServer() as redis:
        assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
        assert redis_ping("127.0.0.1", redis.port)
        port = redis.port
        redis.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        redis.stop()  # idempotent
        redis.restart()
        assert redis.port == port
        assert redis_ping("127.0.0.1", port)
    assert not redis_ping("127.0.0.1", port)


def test_redis_server_on_a_given_port() -> None:
    port = free_port()
    with RedisServer(port) as redis:
        assert redis.port == port and redis_ping("127.0.0.1", port)
