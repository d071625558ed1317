"""Run the real gateway (gunicorn, gevent worker) as a subprocess, and talk to it.

The listening socket is made here on a free port and handed to gunicorn as an
inherited file descriptor (``--bind fd://N``), so there is no race for the
port. Every process is stopped by its pid, also when a test fails.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sse_gateway.transports.sse import Decoder, ServerSentEvent

ROOT = Path(__file__).resolve().parents[2]
OPEN_STREAMS: list[SSEStream] = []  # closed after each test by an autouse fixture


class GatewayServer:
    """``gunicorn -c config/gunicorn.conf.py wsgi:app`` (or another ``app``) with a given
    environment."""

    def __init__(self, env: Mapping[str, str] | None = None,
                 args: tuple[str, ...] = (), label: str = "", app: str = "wsgi:app",
                 config: str | None = "config/gunicorn.conf.py", cwd: Path = ROOT,
                 ready_path: str = "/healthz") -> None:
        self.env = dict(env or {})
        self.app = app  # the WSGI app gunicorn serves (a test's host app, say)
        self.label = label
        self.args = args
        self.config = config  # None: gunicorn's defaults (its sync worker), for other apps
        self.cwd = cwd
        self.ready_path = ready_path
        self.process: subprocess.Popen[bytes] | None = None
        self._listener: socket.socket | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix="gateway-", suffix=".log", delete=False)
        self.host, self.port = "127.0.0.1", 0

    def bind(self) -> GatewayServer:
        """Take a free port now (``url`` is known), before the server starts on it:
        two servers that must know each other's address start one after the other."""
        if self._listener is None:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, 0))
            listener.listen(1024)
            listener.set_inheritable(True)
            self._listener = listener
            self.port = listener.getsockname()[1]
        return self

    def start(self, wait: bool = True) -> GatewayServer:
        listener = self.bind()._listener
        assert listener is not None
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OPENAI_", "ANTHROPIC_", "REDIS_"))}
        # Streams still running when a test stops the server end 2 s after SIGTERM.
        env.update({"PYTHONUNBUFFERED": "1", "ACCESS_LOG": "", "GRACEFUL_TIMEOUT_S": "5",
                    "SHUTDOWN_MARGIN_S": "3"})
        env.update(self.env)
        config = ("-c", self.config) if self.config else ("--no-control-socket",)
        command = [sys.executable, "-m", "gunicorn", *config,
                   "--bind", f"fd://{listener.fileno()}", *self.args, self.app]
        self.process = subprocess.Popen(command, cwd=self.cwd, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT,
                                        pass_fds=(listener.fileno(),))
        if wait:
            self.wait_ready()
        return self

    def release_listener(self) -> None:
        """Close the test's copy of the listening socket, so that only gunicorn holds it
        (then a connection after gunicorn closed it is refused, not queued)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.request("GET", self.ready_path, timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)  # polling for readiness: there is no event to await
        raise AssertionError(f"gunicorn not ready after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM the master by pid; SIGKILL it if it does not exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._log.close()
        if self.process is not None and self.process.returncode == 0:
            Path(self._log.name).unlink(missing_ok=True)  # kept when the server failed

    def log(self) -> str:
        path = Path(self._log.name)
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(self, method: str, path: str, body: Any = None,
                headers: Mapping[str, str] | None = None, timeout: float = 10) -> Reply:
        """One plain request; the whole body is read."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            data, all_headers = _encode(body, headers)
            connection.request(method, path, body=data, headers=all_headers)
            response = connection.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                         response.read())
        finally:
            connection.close()

    def stream(self, method: str, path: str, body: Any = None,
               headers: Mapping[str, str] | None = None, timeout: float = 30) -> SSEStream:
        """Open an SSE response and return it unread."""
        return open_sse(self.host, self.port, method, path, body, headers, timeout=timeout)

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def open_sse(host: str, port: int, method: str, path: str, body: Any = None,
             headers: Mapping[str, str] | None = None, *, timeout: float = 30,
             source: str | None = None) -> SSEStream:
    """Open an SSE response (optionally from another loopback address) and return it unread."""
    connection = http.client.HTTPConnection(
        host, port, timeout=timeout, source_address=(source, 0) if source else None)
    data, all_headers = _encode(body, headers)
    connection.request(method, path, body=data, headers=all_headers)
    stream = SSEStream(connection, connection.getresponse())
    OPEN_STREAMS.append(stream)
    return stream


def _encode(body: Any, headers: Mapping[str, str] | None) -> tuple[bytes | None, dict[str, str]]:
    all_headers = dict(headers or {})
    if body is None or isinstance(body, bytes):
        return body, all_headers
    all_headers.setdefault("Content-Type", "application/json")
    return json.dumps(body).encode(), all_headers


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Received:
    event: ServerSentEvent
    at: float  # time.monotonic() when its bytes arrived


@dataclass
class SSEStream:
    """An SSE response read incrementally, with arrival times, as a browser would parse it."""

    connection: http.client.HTTPConnection
    response: http.client.HTTPResponse
    decoder: Decoder = field(default_factory=Decoder)
    raw: bytearray = field(default_factory=bytearray)
    received: list[Received] = field(default_factory=list)
    ended: bool = False
    _cursor: int = 0

    @property
    def status(self) -> int:
        return self.response.status

    def header(self, name: str) -> str | None:
        return self.response.getheader(name)

    def events(self) -> Iterator[Received]:
        """Yield events in order as they arrive, until the server closes the response.

        Each call goes on from the last event a previous call yielded.
        """
        while True:
            while self._cursor < len(self.received):
                self._cursor += 1
                yield self.received[self._cursor - 1]
            if self.ended:
                return
            chunk = self.response.read1(65536)
            now = time.monotonic()
            if not chunk:
                self.ended = True
                self.connection.close()
                continue
            self.raw += chunk
            self.received.extend(Received(event, now) for event in self.decoder.feed(chunk))

    def read_until(self, predicate: Any) -> Received:
        for item in self.events():
            if predicate(item.event):
                return item
        raise AssertionError(f"stream ended first; got {[r.event for r in self.received]}")

    def read_all(self) -> list[ServerSentEvent]:
        for _ in self.events():
            pass
        return [r.event for r in self.received]

    def drop(self, reset: bool = False) -> None:
        """Close the connection as a vanishing client would: FIN, or RST with ``reset``."""
        sock = self.connection.sock
        if sock is not None and reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.response.close()
        self.connection.close()

    def close(self) -> None:
        self.drop()


def worker_pid(server: GatewayServer) -> int:
    """The pid of a one-worker gunicorn's worker (the master's only child)."""
    assert server.process is not None
    master = server.process.pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, f"expected one gunicorn worker, got {children}"
    return int(children[0])


def tokens_text(events: list[ServerSentEvent]) -> str:
    return "".join(e.json()["content"] for e in events if e.event == "token")
