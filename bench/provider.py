"""The benchmark's fake provider: ``python -m bench.provider [--port N]``.

It speaks the OpenAI chat-completions streaming wire format byte for byte as
the test suite's fake (``tests/fake_provider``) does: both write the events of
``fake_wire.OpenAIDialect`` (the role chunk, one chunk per token, the finish
chunk, the usage chunk when asked, ``[DONE]``), each event one HTTP chunk,
written at once with Nagle off. What differs is the server: an
asyncio (uvloop when installed) event loop instead of a thread per connection.
The threaded fake spends about 67 us of CPU per token on this 2-core machine and
could not serve 2,000 streams at 10 tokens/s (measured while building this
harness: 177 of 2,000 streams completed); the benchmark needs a provider that
is never the bottleneck, since all servers share the machine with it.

Tokens are sent on an absolute schedule: token k at ``t0 + ttft + k * delay``
(plus ``stall_s`` from token ``stall_after`` on), so a late wake-up does not
shift the tokens after it. A peer that closes its connection is seen by the
event loop at once (``eof_received``/``connection_lost``); its ``closed_at`` is
``time.monotonic()``, which is CLOCK_MONOTONIC, system-wide on Linux, so it
compares with the harness's clock (``GET /_clock`` lets the harness check).

Control, on the same port:

* ``POST /_scenario`` ``{"tokens": N, "delay": s, "ttft": s, "stall_after": K,
  "stall_s": s, "count": n, "record": true}`` -> ``{"models": [...]}``;
* ``GET /_calls/<model>`` -> the calls of a recorded model: ``opened_at``,
  ``first_token_at``, ``closed_at``, ``outcome`` (complete | peer_closed),
  ``tokens_sent``;
* ``GET /_clock`` -> ``{"monotonic": ...}``; ``GET /_stats`` -> CPU seconds, streams.

The first line printed is ``{"url": ..., "pid": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from bench.client import run_loop
from fake_wire import LAST_CHUNK, Behaviour, OpenAIDialect, http_chunk, lorem_tokens

now = time.monotonic
_MARK = "@@token@@"


@dataclass
class Scenario:
    behaviour: Behaviour
    token_json: list[bytes]  # each token's text as a JSON string
    delay: float
    ttft: float
    stall_after: int | None
    stall_s: float
    record: bool


class CallRecord:
    __slots__ = ("closed_at", "first_token_at", "opened_at", "outcome", "tokens_sent")

    def __init__(self) -> None:
        self.opened_at = now()
        self.first_token_at: float | None = None
        self.closed_at: float | None = None
        self.outcome: str | None = None
        self.tokens_sent = 0

    def finish(self, outcome: str) -> None:
        if self.outcome is None:
            self.closed_at = now()
            self.outcome = outcome

    def public(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class State:
    def __init__(self) -> None:
        self.scenarios: dict[str, Scenario] = {}
        self.calls: dict[str, list[CallRecord]] = {}
        self.ids = itertools.count(1)
        self.streams = 0
        self.connections = 0


STATE = State()


class Exchange:
    """One streamed answer on one connection."""

    def __init__(self, conn: ProviderConnection, model: str, body: dict[str, Any],
                 scenario: Scenario) -> None:
        self.conn = conn
        self.scenario = scenario
        self.record = CallRecord()
        if scenario.record:
            STATE.calls.setdefault(model, []).append(self.record)
        dialect = OpenAIDialect(model, body)
        prefix, suffix = dialect.token(_MARK).split(json.dumps(_MARK).encode(), 1)
        self.frames = [http_chunk(prefix + text + suffix) for text in scenario.token_json]
        self.epilogue = b"".join(http_chunk(e) for e in dialect.epilogue(scenario.behaviour))
        head = (b"HTTP/1.1 200 OK\r\nServer: FakeProvider/1.0\r\n"
                b"Content-Type: text/event-stream; charset=utf-8\r\n"
                b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
                b"x-request-id: " + dialect.request_id.encode() + b"\r\n\r\n")
        conn.write(head + b"".join(http_chunk(e) for e in dialect.preamble(scenario.behaviour)))
        self.t0 = now() + scenario.ttft
        self.handle: asyncio.TimerHandle | None = None
        STATE.streams += 1
        self._schedule(0)

    def _schedule(self, k: int) -> None:
        s = self.scenario
        at = self.t0 + k * s.delay
        if s.stall_after is not None and k >= s.stall_after:
            at += s.stall_s
        self.handle = self.conn.loop.call_at(at, self._send, k)

    def _send(self, k: int) -> None:
        frames = self.frames
        record = self.record
        if k < len(frames):
            self.conn.write(frames[k])
            record.tokens_sent = k + 1
            if k == 0:
                record.first_token_at = now()
            if k + 1 < len(frames):
                self._schedule(k + 1)
                return
        self.handle = None
        self.conn.write(self.epilogue)
        record.finish("complete")
        STATE.streams -= 1
        self.conn.write(LAST_CHUNK)
        self.conn.exchange_done()

    def peer_closed(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
            STATE.streams -= 1
        self.record.finish("peer_closed")


class ProviderConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.exchange: Exchange | None = None
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        STATE.connections += 1

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.exchange is None:
            self._next_request()

    def eof_received(self) -> bool:
        self._gone()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()
        self.transport = None
        STATE.connections -= 1

    def _gone(self) -> None:
        if self.exchange is not None:
            self.exchange.peer_closed()
            self.exchange = None

    def exchange_done(self) -> None:
        self.exchange = None
        if self.close_after:
            if self.transport is not None:
                self.transport.close()
        elif self.buf:
            self._next_request()

    def _next_request(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = self.buf[:end].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        if len(self.buf) < end + 4 + length:
            return
        body, self.buf = self.buf[end + 4:end + 4 + length], self.buf[end + 4 + length:]
        method, path = lines[0].split(" ")[:2]
        self.close_after = headers.get("connection", "").lower() == "close"
        try:
            self._handle(method, path.split("?", 1)[0], body)
        except Exception as exc:
            self._json(500, {"error": {"message": repr(exc), "type": "server_error"}})

    def _json(self, status: int, obj: Any) -> None:
        payload = json.dumps(obj).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
        self.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (status, reason.encode(), len(payload),
                                                      payload))
        self.exchange_done()

    def _handle(self, method: str, path: str, raw: bytes) -> None:
        if path == "/v1/chat/completions" and method == "POST":
            body = json.loads(raw)
            model = str(body.get("model", ""))
            scenario = STATE.scenarios.get(model)
            if scenario is None:
                self._json(404, {"error": {"message": f"The model `{model}` does not exist.",
                                           "type": "invalid_request_error", "param": None,
                                           "code": "model_not_found"}})
            elif not body.get("stream"):
                self._json(200, OpenAIDialect(model, body).complete_body(scenario.behaviour))
            else:
                self.exchange = Exchange(self, model, body, scenario)
        elif path == "/_scenario" and method == "POST":
            self._json(200, {"models": add_scenarios(json.loads(raw or b"{}"))})
        elif path.startswith("/_calls/"):
            calls = STATE.calls.get(path.removeprefix("/_calls/"), [])
            self._json(200, [c.public() for c in calls])
        elif path == "/_clock":
            self._json(200, {"monotonic": now()})
        elif path == "/_stats":
            t = os.times()
            self._json(200, {"cpu_s": t.user + t.system, "streams": STATE.streams,
                             "connections": STATE.connections})
        else:
            self._json(404, {"error": {"message": f"Unknown path {path}",
                                       "type": "not_found"}})


def add_scenarios(spec: dict[str, Any]) -> list[str]:
    tokens = lorem_tokens(int(spec.get("tokens", 20)))
    scenario = Scenario(
        behaviour=Behaviour(tokens=tokens), delay=float(spec.get("delay") or 0),
        token_json=[json.dumps(t, ensure_ascii=False).encode() for t in tokens],
        ttft=float(spec.get("ttft") or 0), stall_after=spec.get("stall_after"),
        stall_s=float(spec.get("stall_s") or 0), record=bool(spec.get("record", True)))
    models = []
    for _ in range(int(spec.get("count", 1))):
        model = f"bench-{next(STATE.ids)}"
        STATE.scenarios[model] = scenario
        models.append(model)
    return models


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    server = await loop.create_server(ProviderConnection, host, port, backlog=4096,
                                      reuse_address=True)
    bound = server.sockets[0].getsockname()
    print(json.dumps({"url": f"http://{bound[0]}:{bound[1]}", "pid": os.getpid()}), flush=True)
    gc.freeze()  # what was imported is never collected: keep it out of every collection
    async with server:
        await stopped.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.provider")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    run_loop(serve(args.host, args.port))


if __name__ == "__main__":
    main()
