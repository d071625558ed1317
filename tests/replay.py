"""A loopback HTTP server that answers one POST route with recorded stream bytes.

The recording tests replay real provider streams (tests/recordings/) to the
official SDKs through it: the bytes go out unchanged, as one
``text/event-stream`` body, and each request is kept for the test to inspect.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

Served = TypeVar("Served", bound=ThreadingHTTPServer)

# The recording to send for a request's JSON body; None answers 404.
Pick = Callable[[Any], "bytes | None"]


class ReplayServer(ThreadingHTTPServer):
    """Serves ``pick(body)`` on ``route``; ``requests`` lists (path, body) as they came."""

    daemon_threads = True

    def __init__(self, route: str, pick: Pick) -> None:
        super().__init__(("127.0.0.1", 0), _Replay)
        self.route = route
        self.pick = pick
        self.requests: list[tuple[str, Any]] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _Replay(BaseHTTPRequestHandler):
    server: ReplayServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.requests.append((self.path, body))
        data = self.server.pick(body) if self.path == self.server.route else None
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@contextmanager
def serving(server: Served) -> Iterator[Served]:
    """Serve ``server`` from a thread; shut it down (its thread joined) on exit."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def replaying(route: str, pick: Pick) -> AbstractContextManager[ReplayServer]:
    """A ReplayServer on a free loopback port, shut down (its thread joined) on exit."""
    return serving(ReplayServer(route, pick))
