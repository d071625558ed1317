"""A fake LLM provider speaking the OpenAI and Anthropic streaming wire formats.

It is a real HTTP/1.1 server on 127.0.0.1 (standard library only), so the real
``openai`` and ``anthropic`` SDKs talk to it unchanged:

    with FakeProvider() as fake:
        model = fake.scenario(tokens=["Hi", "!"], delay=0.01)
        client = openai.OpenAI(api_key="test", base_url=f"{fake.url}/v1")
        ...
        call = fake.wait_closed(model)
        assert call.outcome == "complete"

Each request is answered by the ``Behaviour`` registered for the ``model`` of its
body, and recorded as a ``Call``. Its point is the record of *how the peer
left*: whenever the fake waits (header delay, time to first token, between
tokens, a stall) it watches the connection socket, so a client that closes its
upstream connection is noticed within a millisecond or so, and ``closed_at``
says when.

Streams, in both dialects: response headers, then the preamble events (OpenAI:
the role chunk; Anthropic: ``message_start``, ``content_block_start``,
``ping``), then ``ttft``, then the events of each token (``delay`` apart), then
the closing events and the zero-length chunk. Each SSE event is one HTTP chunk,
written at once with Nagle disabled. The bytes (and ``Behaviour``) come from
``fake_wire``, which the benchmark's asyncio fake serves too.

A token is text or a stream item (``Reasoning``, ``Refusal``, ``ToolCall``,
``ToolArgs``, ``RedactedThinking``, ``Raw``): one delta chunk in OpenAI's
format; in Anthropic's, a delta plus the block starts and stops its kind
needs (a thinking block ends with its ``signature_delta``):

    model = fake.scenario(tokens=[Reasoning("Let me see."), "Paris",
                                  ToolCall(0, "call_1", "get_weather", '{"city":'),
                                  ToolArgs(0, '"Paris"}')], finish_reason="tool_calls")

``recorded(RECORDINGS / "openai" / "openai_refusal.sse")`` serves a real
recorded stream verbatim, one event per token (only on its own API's path: the
other answers 404). Before streaming, the fake checks the request as the real
API does and answers its 400: an Anthropic thinking block sent back without its
``signature`` or with one the fake did not give, a ``tool_result`` (Anthropic)
or ``tool`` message (OpenAI) that answers no call of the assistant message
before it, calls left without results. A scenario the request's format cannot
carry (redacted thinking on the OpenAI path, interleaved tool arguments on the
Anthropic one) answers 404 saying why. Without ``"stream": true`` only plain
text scenarios are answered (400 otherwise).

A call's outcome: "complete" (or "error_event") once the last event, ``[DONE]``
or ``message_stop`` (or the error event), has been written; the zero-length
chunk follows on a best-effort basis, as the sync openai SDK hangs up as soon as
it has read ``[DONE]``. "peer_closed": the client closed the connection first.
"dropped": ``drop_after`` closed it. "error_status": an HTTP error was answered.
Read outcomes through ``wait_closed``: the server thread sets them a moment
after the client may have seen the end of its stream.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from fake_wire import (
    ANTHROPIC_PATH,
    DIALECTS,
    JSON,
    LAST_CHUNK,
    OPENAI_PATH,
    Behaviour,
    Dialect,
    http_chunk,
    json_bytes,
)

__all__ = [
    "ANTHROPIC_PATH",
    "OPENAI_PATH",
    "RECORDINGS",
    "Behaviour",
    "Call",
    "FakeProvider",
    "Outcome",
]

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"  # openai/, anthropic/

Outcome = Literal["complete", "peer_closed", "dropped", "error_status", "error_event"]


@dataclass
class Call:
    """The record of one upstream request, filled in while it runs."""

    model: str
    path: str  # without the query string
    body: JSON
    headers: dict[str, str]  # lower-cased names
    opened_at: float  # time.monotonic() when the request had been read
    peer: tuple[str, int] | None = None  # the client's address: one per connection
    tokens_sent: int = 0
    outcome: Outcome | None = None
    closed_at: float | None = None  # time.monotonic() when the outcome was reached
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    token_times: list[float] = field(
        default_factory=list, repr=False
    )  # monotonic time of each token write

    def _finish(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.closed_at = time.monotonic()
            self.outcome = outcome
            self.done.set()


_REASONS = {529: "Overloaded"}  # http.HTTPStatus does not know it


# --------------------------------------------------------------------------- watching the peer

_POLL_HANGUP = (
    getattr(select, "POLLHUP", 0) | getattr(select, "POLLERR", 0) | getattr(select, "POLLNVAL", 0)
)
_POLL_RDHUP = getattr(select, "POLLRDHUP", 0)  # Linux: the peer sent FIN
_POLL_IN = getattr(select, "POLLIN", 1)


class _PeerWatch:
    """Waits on a connection socket, noticing at once when the peer closes it.

    ``select.poll`` where there is one (it is ``select.select`` without the
    FD_SETSIZE=1024 ceiling a benchmark with many connections would hit),
    ``select.select`` otherwise. Readable means closed if ``recv(MSG_PEEK)``
    gives b"" or fails. Bytes the peer sends mid-response (it should not) are
    left unread; from then on only a hang-up (``POLLRDHUP``) can be seen.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._poller = select.poll() if hasattr(select, "poll") else None
        if self._poller is not None:
            self._poller.register(sock, _POLL_IN | _POLL_HANGUP | _POLL_RDHUP)
        self._blind = False  # stray bytes pending and no POLLRDHUP: nothing left to watch

    def wait(self, seconds: float) -> bool:
        """Wait ``seconds`` (0: just look); False as soon as the peer is gone."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            if self._blind:
                time.sleep(remaining)
                return True
            events = self._events(remaining)
            if not events:
                if time.monotonic() >= deadline:
                    return True
                continue
            if events & (_POLL_HANGUP | _POLL_RDHUP) or self._peeked_eof():
                return False
            self._ignore_stray_bytes()

    def _events(self, timeout: float) -> int:
        if self._poller is not None:
            ready = self._poller.poll(math.ceil(timeout * 1000))
            return ready[0][1] if ready else 0
        readable, _, _ = select.select([self._sock], [], [], timeout)
        return _POLL_IN if readable else 0

    def _peeked_eof(self) -> bool:
        try:
            return self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:  # spurious wake-up
            return False
        except OSError:  # reset
            return True

    def _ignore_stray_bytes(self) -> None:
        if self._poller is not None and _POLL_RDHUP:
            self._poller.modify(self._sock, _POLL_HANGUP | _POLL_RDHUP)
        else:
            self._blind = True


# --------------------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], provider: FakeProvider) -> None:
        super().__init__(address, _Handler)
        self.provider = provider
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, sock: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            if alive:
                self._connections.add(sock)
            else:
                self._connections.discard(sock)

    def close_connections(self) -> None:
        """Hang up every open connection, so that their handler threads end."""
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the peer went away between requests: nothing to report
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeProvider/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, alive=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, alive=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._read_body()
        self._send_json(
            404,
            {"error": {"message": f"Unknown path {self.path}", "type": "not_found"}},
        )

    def do_POST(self) -> None:
        raw = self._read_body()
        path = urlsplit(self.path).path
        dialect_type = DIALECTS.get(path)
        if dialect_type is None:
            self._send_json(
                404, {"error": {"message": f"Unknown path {path}", "type": "not_found"}}
            )
            return
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._send_json(
                400,
                dialect_type("", {}).error_body(400, "The request body is not a JSON object."),
            )
            return
        model = str(body.get("model", ""))
        headers = {name.lower(): value for name, value in self.headers.items()}
        call, behaviour = self.server.provider._open_call(model, path, body, headers,
                                                          peer=self.client_address[:2])
        _Exchange(self, call, dialect_type(model, body)).run(behaviour)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, status: int, body: JSON, headers: dict[str, str] | None = None) -> None:
        payload = json_bytes(body)
        self.send_response(status, _REASONS.get(status))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


class _Exchange:
    """Plays one ``Behaviour`` on one request, recording it in its ``Call``."""

    def __init__(self, handler: _Handler, call: Call, dialect: Dialect) -> None:
        self.handler = handler
        self.call = call
        self.dialect = dialect
        self.sock: socket.socket = handler.connection
        self.watch = _PeerWatch(self.sock)

    def run(self, b: Behaviour | None) -> None:
        try:
            self._run(b)
        except OSError:  # a write failed: the peer is gone
            self._peer_closed()
        finally:
            if self.call.outcome is None:  # a bug in here: still leave a record
                self._peer_closed()

    def _run(self, b: Behaviour | None) -> None:
        if b is None:
            self._send_error(404, f"The model `{self.call.model}` does not exist.", None)
            return
        if not self._pause(b.header_delay):
            return
        problem = self.dialect.unservable(b)
        if problem is not None:
            self._send_error(404, f"The model `{self.call.model}` cannot be served on "
                             f"{self.call.path}: {problem}.", None)
            return
        if b.check_requests and (invalid := self.dialect.request_error(self.call.body)):
            message, param = invalid
            self._send_error(400, message, None, param)
            return
        if b.status is not None:
            self._send_error(b.status, f"Fake provider error {b.status}.", b.retry_after)
            return
        if not self.call.body.get("stream"):
            if not b.plain:
                self._send_error(400, "This fake answers only text without `stream: true`; "
                                 "ask for a stream.", None)
                return
            self.call.tokens_sent = len(b.tokens)
            self.handler._send_json(200, self.dialect.complete_body(b), self._id_header())
            self.call._finish("complete")
            return
        self._stream(b)

    def _stream(self, b: Behaviour) -> None:
        h = self.handler
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream; charset=utf-8")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header(self.dialect.request_id_header, self.dialect.request_id)
        h.end_headers()
        if not self._emit_all(self.dialect.preamble(b)) or not self._pause(b.ttft):
            return
        for k in range(len(b.tokens) + 1):
            if k == b.stall_after and not self._pause(b.stall_s):
                return
            if k == b.error_event_after:
                if self._emit(self.dialect.error_event(b)):
                    self._end("error_event")
                return
            if k == b.drop_after:
                self._drop()
                return
            if k == len(b.tokens):
                break
            if k > 0 and not self._pause(b.delay):
                return
            if not self._emit_all(self.dialect.render(b.tokens[k], b)):
                return
            self.call.tokens_sent += 1
            self.call.token_times.append(time.monotonic())
        if self._emit_all(self.dialect.epilogue(b)):
            self._end("complete")

    def _pause(self, seconds: float) -> bool:
        """Stay silent for ``seconds`` while watching the peer; False if it closed."""
        if self.watch.wait(seconds):
            return True
        self._peer_closed()
        return False

    def _emit(self, event: bytes) -> bool:
        """Send one event as one HTTP chunk; False if the peer is gone."""
        if not self._pause(0):
            return False
        self.sock.sendall(http_chunk(event))
        return True

    def _end(self, outcome: Outcome) -> None:
        """The last event is out: record ``outcome``, then send the zero-length chunk.

        The outcome is decided before that chunk, since clients rightly hang up
        without waiting for it: the sync openai SDK closes the response as soon
        as it has parsed ``[DONE]``, the anthropic SDK on an error event.
        """
        self.call._finish(outcome)
        try:
            self.sock.sendall(LAST_CHUNK)
        except OSError:
            self.handler.close_connection = True

    def _emit_all(self, events: list[bytes]) -> bool:
        return all(self._emit(event) for event in events)

    def _drop(self) -> None:
        self.handler.close_connection = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.call._finish("dropped")

    def _peer_closed(self) -> None:
        self.handler.close_connection = True
        self.call._finish("peer_closed")

    def _id_header(self) -> dict[str, str]:
        return {self.dialect.request_id_header: self.dialect.request_id}

    def _send_error(self, status: int, message: str, retry_after: float | None,
                    param: str | None = None) -> None:
        headers = self._id_header()
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        self.handler._send_json(status, self.dialect.error_body(status, message, param), headers)
        self.call._finish("error_status")


# --------------------------------------------------------------------------- the provider


class FakeProvider:
    """The fake provider: a threaded HTTP server plus the scenarios and the call records."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        default: Behaviour | None = None,
        record: bool = True,
    ) -> None:
        """``default`` answers the models no scenario names (else: 404).

        ``record=False`` keeps no ``Call`` (for long benchmarks).
        """
        self._address = (host, port)
        self._default = default
        self._record = record
        self._cond = threading.Condition()
        self._scenarios: dict[str, list[Behaviour]] = {}
        self._calls: dict[str, list[Call]] = {}
        self._counts: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # life cycle

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("FakeProvider already started")
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-provider:{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeProvider not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # scenarios

    def scenario(self, behaviour: Behaviour | None = None, /, **fields: Any) -> str:
        """Register a behaviour for every request naming the returned model id ("fake-12")."""
        if behaviour is None:
            behaviour = Behaviour(**fields)
        elif fields:
            behaviour = replace(behaviour, **fields)
        return self.scenario_seq([behaviour])

    def scenario_seq(self, behaviours: list[Behaviour]) -> str:
        """Request i with the returned model gets behaviours[i] (the last one repeats)."""
        if not behaviours:
            raise ValueError("scenario_seq needs at least one Behaviour")
        with self._cond:
            model = f"fake-{next(self._ids)}"
            self._scenarios[model] = list(behaviours)
        return model

    # records

    def calls(self, model: str) -> list[Call]:
        with self._cond:
            return list(self._calls.get(model, []))

    def wait_call(self, model: str, index: int = 0, timeout: float = 10) -> Call:
        """The ``index``-th request for ``model`` once it has arrived; AssertionError on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._calls.get(model, [])) > index, timeout):
                seen = len(self._calls.get(model, []))
                raise AssertionError(
                    f"no request #{index} for {model!r} within {timeout}s ({seen} seen)"
                )
            return self._calls[model][index]

    def wait_closed(self, model: str, index: int = 0, timeout: float = 10) -> Call:
        """Like ``wait_call``, but also until that request has an outcome."""
        deadline = time.monotonic() + timeout
        call = self.wait_call(model, index, timeout)
        if not call.done.wait(max(0.0, deadline - time.monotonic())):
            raise AssertionError(
                f"request #{index} for {model!r} still open after {timeout}s: {call!r}"
            )
        return call

    def _open_call(
        self, model: str, path: str, body: JSON, headers: dict[str, str],
        peer: tuple[str, int] | None = None,
    ) -> tuple[Call, Behaviour | None]:
        call = Call(
            model=model,
            path=path,
            body=body,
            headers=headers,
            opened_at=time.monotonic(),
            peer=peer,
        )
        with self._cond:
            index = self._counts.get(model, 0)
            self._counts[model] = index + 1
            sequence = self._scenarios.get(model)
            behaviour = sequence[min(index, len(sequence) - 1)] if sequence else self._default
            if self._record:
                self._calls.setdefault(model, []).append(call)
                self._cond.notify_all()
        return call, behaviour
