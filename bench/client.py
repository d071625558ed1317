"""The load generator: raw HTTP/1.1 over asyncio sockets, one ``Protocol`` per stream.

Per received chunk the hot path does one ``time.monotonic()`` and one list
append (``Conn.data_received``); HTTP de-chunking, SSE parsing and JSON happen
after the scenario (``Conn.parse``), so the generator stays cheap while the
servers are measured. The event stream is read by the gateway's own decoder
(``sse_gateway.transports.sse.Decoder``, WHATWG rules), the one the tests use. Scenarios that must react to events as they arrive
(drop after the first token, reconnect) ask for ``live=True``: then each chunk
is parsed on arrival, which is fine for the few streams those scenarios open.

Every request carries ``Connection: close``, so the end of a stream is the end
of its connection, whatever the server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sse_gateway.transports.sse import Decoder

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed, else on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def loop_name() -> str:
    """The event loop ``run_loop`` uses."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    return f"uvloop {uvloop.__version__}"

now = time.monotonic

HEAD, BODY, DONE = 0, 1, 2
_SIZE, _DATA, _CRLF = 0, 1, 2


class Parser:
    """Incremental HTTP/1.1 response (chunked or not), its body through a ``Decoder``."""

    __slots__ = ("_buf", "_cstate", "_decoder", "_left", "chunked", "events", "headers",
                 "state", "status")

    def __init__(self) -> None:
        self._buf = b""
        self._decoder = Decoder()
        self._cstate = _SIZE  # in a chunked body: expecting a size line, data, or its CRLF
        self._left = 0  # bytes of the current chunk (or of its CRLF) still to come
        self.state = HEAD
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunked = False
        self.events: list[tuple[float, str, str, str | None]] = []  # (at, event, data, id)

    def feed(self, t: float, data: bytes) -> None:
        self._buf += data
        if self.state == HEAD:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self._buf = self._buf[:end].decode("latin-1"), self._buf[end + 4:]
            lines = head.split("\r\n")
            self.status = int(lines[0].split(" ", 2)[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
            self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
            self.state = BODY
        if self.state != BODY:
            return
        if not self.chunked:
            body, self._buf = self._buf, b""
        else:
            body = self._dechunk()
        self.events += [(t, e.event, e.data, e.id) for e in self._decoder.feed(body)]

    def _dechunk(self) -> bytes:
        """The body bytes in ``_buf`` (whole chunks or not); the rest stays for later."""
        buf = self._buf
        n = len(buf)
        pos = 0
        out = []
        while pos < n:
            if self._cstate == _SIZE:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if size == 0:  # the last chunk: the body is complete
                    self.state = DONE
                    pos = n
                    break
                self._left, self._cstate = size, _DATA
                continue
            take = min(self._left, n - pos)
            if self._cstate == _DATA:
                out.append(buf[pos:pos + take])
            pos += take
            self._left -= take
            if self._left == 0:
                self._cstate, self._left = (_CRLF, 2) if self._cstate == _DATA else (_SIZE, 0)
        self._buf = buf[pos:]
        return b"".join(out)


# --------------------------------------------------------------------------- requests


def http_request(method: str, host: str, port: int, path: str, body: Any = None,
                 headers: dict[str, str] | None = None) -> bytes:
    payload = b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
             "Accept: text/event-stream"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


@dataclass(frozen=True)
class Target:
    """One server under test, as the load generator talks to it."""

    name: str
    kind: str  # "gateway" | "alt" | "openai" (the fake provider itself)
    host: str
    port: int

    def stream_request(self, model: str, *, grace: float = 0, stream_id: str | None = None,
                       extra: dict[str, Any] | None = None) -> bytes:
        """The request for one stream; ``extra``: more fields of the gateway's body."""
        if self.kind == "gateway":
            headers = {"X-Stream-ID": stream_id} if stream_id else None
            return http_request("POST", self.host, self.port, "/v1/streams",
                                {"model": f"openai/{model}", "prompt": "x",
                                 "resume_grace_s": grace, **(extra or {})}, headers)
        if self.kind == "alt":
            return http_request("POST", self.host, self.port, "/chat",
                                {"model": model, "prompt": "x"})
        return http_request("POST", self.host, self.port, "/v1/chat/completions",
                            {"model": model, "stream": True,
                             "messages": [{"role": "user", "content": "x"}]})


# --------------------------------------------------------------------------- one stream


class Conn(asyncio.Protocol):
    """One HTTP exchange; raw chunks are kept with their arrival times."""

    def __init__(self, request: bytes, live: bool = False,
                 on_event: Callable[[Conn], None] | None = None) -> None:
        self.request = request
        self.chunks: list[tuple[float, bytes]] = []
        self.parser: Parser | None = Parser() if live else None
        self.on_event = on_event
        self.transport: asyncio.Transport | None = None
        self.t_start = 0.0  # before connect
        self.t_sent = 0.0
        self.t_end: float | None = None
        self.error: str | None = None
        self.dropped_at: float | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seen = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)
        self.t_sent = now()

    def data_received(self, data: bytes) -> None:
        t = now()
        self.chunks.append((t, data))
        parser = self.parser
        if parser is not None:
            parser.feed(t, data)
            if self.on_event is not None and len(parser.events) > self._seen:
                self._seen = len(parser.events)
                self.on_event(self)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.t_end = now()
        if exc is not None and self.error is None and self.dropped_at is None:
            self.error = f"{type(exc).__name__}: {exc}"
        if not self.closed.done():
            self.closed.set_result(None)

    # control

    def drop(self) -> None:
        """Close the connection as a vanishing client does (FIN)."""
        self.dropped_at = now()
        if self.transport is not None:
            self.transport.close()

    def abort(self, reason: str) -> None:
        if self.error is None and self.dropped_at is None:
            self.error = reason
        if self.transport is not None:
            self.transport.abort()
        if not self.closed.done():
            self.closed.set_result(None)

    def parse(self) -> Parser:
        if self.parser is None:
            parser = Parser()
            for t, data in self.chunks:
                parser.feed(t, data)
            self.parser = parser
        return self.parser


async def connect(target: Target, conn: Conn, timeout: float = 10) -> Conn:
    loop = asyncio.get_running_loop()
    conn.t_start = now()
    try:
        await asyncio.wait_for(loop.create_connection(lambda: conn, target.host, target.port),
                               timeout)
    except (TimeoutError, OSError) as exc:
        conn.error = f"connect: {type(exc).__name__}: {exc}"
        if not conn.closed.done():
            conn.closed.set_result(None)
    return conn


async def run_streams(target: Target, requests: list[bytes], *, deadline_s: float,
                      rate: float | None = None, concurrency: int | None = None,
                      live: bool = False,
                      hold: Callable[[list[Conn]], Awaitable[None]] | None = None
                      ) -> list[Conn]:
    """Open one stream per request and wait for all to end, at most ``deadline_s``.

    ``rate``: open them at this many per second (else all at once); ``concurrency``:
    at most this many at a time. Streams still open at the deadline are aborted
    and marked ``error = "deadline"``. ``hold(conns)``: awaited while the streams run
    (memory sampling); when it returns, every stream is dropped.
    """
    loop = asyncio.get_running_loop()
    conns = [Conn(request, live=live) for request in requests]
    semaphore = asyncio.Semaphore(concurrency) if concurrency else None
    t0 = now()

    async def one(i: int, conn: Conn) -> None:
        if rate:
            delay = t0 + i / rate - now()
            if delay > 0:
                await asyncio.sleep(delay)
        if semaphore is not None:
            async with semaphore:
                await connect(target, conn)
                await conn.closed
        else:
            await connect(target, conn)
            await conn.closed

    tasks = [loop.create_task(one(i, c)) for i, c in enumerate(conns)]
    try:
        if hold is not None:
            await hold(conns)
            for conn in conns:
                conn.drop()
        _done, pending = await asyncio.wait(tasks, timeout=max(0.0, t0 + deadline_s - now()))
        for conn in conns:
            if not conn.closed.done():
                conn.abort("deadline")
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        for task in tasks:
            task.cancel()
    return conns


# --------------------------------------------------------------------------- results


@dataclass
class StreamResult:
    ok: bool
    status: int
    content: str
    token_times: list[float] = field(default_factory=list)
    ttft: float | None = None  # from before connect to the first token's arrival
    terminal: str | None = None
    error: str | None = None

    @property
    def gaps(self) -> list[float]:
        t = self.token_times
        return [b - a for a, b in itertools.pairwise(t)]


def tokens_of(kind: str, events: list[tuple[float, str, str, str | None]]
              ) -> tuple[list[tuple[float, str]], str | None]:
    """(arrival, text) of every token event, and the terminal event's name (None: none)."""
    tokens: list[tuple[float, str]] = []
    terminal = None
    loads = json.loads
    for t, name, data, _ in events:
        if kind == "gateway":
            if name == "token":
                tokens.append((t, loads(data)["content"]))
            elif name == "done":
                terminal = "done"
            elif name in ("error", "cancelled"):
                terminal = f"{name}: {data}"
        elif data == "[DONE]":
            terminal = "done"
        elif kind == "alt":
            obj = loads(data)
            if "content" in obj:
                tokens.append((t, obj["content"]))
            else:
                terminal = f"error: {data}"
        else:  # the provider's own OpenAI chunks
            for choice in loads(data).get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    tokens.append((t, text))
    return tokens, terminal


def result(target: Target, conn: Conn, expected: str | None) -> StreamResult:
    parser = conn.parse()
    error = conn.error
    try:
        tokens, terminal = tokens_of(target.kind, parser.events)
    except (ValueError, KeyError, TypeError) as exc:
        tokens, terminal = [], None
        error = error or f"unparsable event: {exc}"
    content = "".join(text for _, text in tokens)
    times = [t for t, _ in tokens]
    if error is None and parser.status != 200:
        error = f"HTTP {parser.status}" if parser.status else "no response"
    if error is None and terminal != "done":
        error = f"ended without done ({terminal})"
    if error is None and expected is not None and content != expected:
        error = f"content differs ({len(content)} vs {len(expected)} characters)"
    return StreamResult(ok=error is None, status=parser.status, content=content,
                        token_times=times, ttft=times[0] - conn.t_start if times else None,
                        terminal=terminal, error=error)
