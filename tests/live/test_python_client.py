"""The Python client (``sse_gateway_client``) and its CLI (``flask stream``), live.

One gateway (with an API key, a short ``retry:`` and a long resume grace) and
the fake provider. Dropped connections are made by a TCP proxy between client
and gateway whose connections the test cuts mid-answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import fake_wire as fw
from sse_gateway_client import (
    Cancelled,
    Done,
    Event,
    GatewayClient,
    GatewayError,
    GatewayUnreachable,
    Start,
    StreamInterrupted,
    Token,
)
from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import ROOT, GatewayServer

KEY = "sk-python-client-test"
GRACE_S = 30  # a stream nobody reads runs this long: a closed provider call sooner means DELETE
FLASK = str(Path(sys.executable).parent / "flask")
HOSTILE = ["Hé 🙂", "\n", 'data: {"content": "forged"}\n\n', 'say "hi" \\n', "\r\n",
           "id: 999\nevent: done\n\n", ": ping", "\u2028\x85\x0c", " end 👋🏽"]
LONG = [f"w{i} " for i in range(400)]


@pytest.fixture(scope="module")
def server(fake: FakeProvider) -> Iterator[GatewayServer]:
    gateway = GatewayServer(gateway_env(fake, API_KEYS=KEY, RETRY_MS="100",
                                        RESUME_GRACE_S=str(GRACE_S)), label="client")
    try:
        yield gateway.start()
    finally:
        gateway.stop()


@pytest.fixture
def client(server: GatewayServer) -> Iterator[GatewayClient]:
    with GatewayClient(server.url, KEY, timeout=10) as gateway_client:
        yield gateway_client


def status(server: GatewayServer, stream_id: str) -> str:
    reply = server.request("GET", f"/v1/streams/{stream_id}",
                           headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status == 200, reply.body
    return str(reply.json()["status"])


def wait_status(server: GatewayServer, stream_id: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while (now := status(server, stream_id)) == "running" and time.monotonic() < deadline:
        time.sleep(0.05)  # the gateway has no status change to wait on
    return now


class CuttingProxy:
    """A TCP proxy to the gateway; ``cut()`` closes every connection it carries.

    ``forget_position`` removes ``Last-Event-ID`` from requests, so the
    gateway replays a resumed stream from its first event.
    """

    def __init__(self, port: int, forget_position: bool = False) -> None:
        self._target = ("127.0.0.1", port)
        self._forget = forget_position
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self.forgotten = 0  # requests whose Last-Event-ID was removed
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> CuttingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pipe thread blocked in recv
            sock.close()

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.cut()
        self._thread.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                self._sockets += [downstream, upstream]
                self.accepted += 1
            for source, sink, rewrite in ((downstream, upstream, self._forget),
                                          (upstream, downstream, False)):
                thread = threading.Thread(target=self._pipe, args=(source, sink, rewrite),
                                          daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pipe(self, source: socket.socket, sink: socket.socket, rewrite: bool) -> None:
        try:
            while data := source.recv(65536):
                if rewrite:
                    data, n = re.subn(rb"(?i)\r\nlast-event-id:", b"\r\nx-forgotten-id:", data)
                    self.forgotten += n
                sink.sendall(data)
        except OSError:
            pass
        self.cut()  # one side ended: end the pair, as a proxy's error would


# --------------------------------------------------------------------------- the client


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_exact_text_and_typed_events(server: GatewayServer, client: GatewayClient,
                                     fake: FakeProvider, provider: str) -> None:
    model = fake.scenario(tokens=HOSTILE, delay=0.005)
    with client.stream("hello", model=f"{provider}/{model}", max_tokens=100) as chat:
        events = list(chat)
    start, *tokens, done = events
    assert isinstance(start, Start)
    assert start == Start(0, chat.stream_id, f"{provider}/{model}", start.created)
    assert all(isinstance(e, Token) for e in tokens)
    assert chat.text == "".join(t.text for t in tokens if isinstance(t, Token)) == "".join(HOSTILE)
    assert [e.id for e in events] == list(range(len(events)))
    assert isinstance(done, Done)
    assert (done.finish_reason, done.model) == ("stop", f"{provider}/{model}")
    assert done.usage.output_tokens == len(HOSTILE)
    assert done.metrics.ttft_ms is not None and done.metrics.duration_ms is not None
    assert chat.terminal is done and chat.last_event_id == done.id and chat.reconnects == 0
    assert status(server, chat.stream_id) == "done"


def test_messages_and_options_reach_the_provider(client: GatewayClient,
                                                 fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["ok"])
    chat = client.stream(messages=[{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Hi"}],
                         model=f"openai/{model}", max_tokens=7, temperature=0.5,
                         stream_id="my-own-stream-id-0001")
    assert isinstance(chat.result(), Done) and chat.text == "ok"
    assert chat.stream_id == "my-own-stream-id-0001"
    body = fake.wait_call(model).body
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hi"}]
    assert body["temperature"] == 0.5
    assert 7 in (body.get("max_tokens"), body.get("max_completion_tokens"))


@pytest.mark.parametrize("forget_position", [False, True], ids=["from-last-id", "full-replay"])
def test_resume_after_dropped_connections(server: GatewayServer, fake: FakeProvider,
                                          forget_position: bool) -> None:
    """Two connections cut mid-answer: the exact text, no event twice, the provider untouched.

    ``full-replay``: the proxy strips Last-Event-ID, the gateway replays from
    event 0, and the client itself must skip what it has already seen.
    """
    tokens = [f"t{i} " for i in range(60)]
    model = fake.scenario(tokens=tokens, delay=0.02)
    with CuttingProxy(server.port, forget_position) as proxy, \
            GatewayClient(proxy.url, KEY, timeout=10) as client:
        chat = client.stream("x", model=f"openai/{model}", resume_grace_s=60)
        events: list[Event] = []
        for event in chat:
            events.append(event)
            if isinstance(event, Token) and sum(isinstance(e, Token) for e in events) in (3, 20):
                proxy.cut()
        assert proxy.accepted == 3 and chat.reconnects == 2
        assert proxy.forgotten == (2 if forget_position else 0)
    ids = [e.id for e in events]
    assert ids == sorted(set(ids))  # increasing: nothing twice
    assert sum(isinstance(e, Start) for e in events) == 1 and isinstance(events[-1], Done)
    assert chat.text == "".join(e.text for e in events if isinstance(e, Token)) == "".join(tokens)
    assert fake.wait_closed(model).outcome == "complete"  # generation never stopped


def test_gives_up_after_max_retries_and_resumes_later(server: GatewayServer,
                                                      fake: FakeProvider) -> None:
    tokens = [f"t{i} " for i in range(40)]
    model = fake.scenario(tokens=tokens, delay=0.02)
    with CuttingProxy(server.port) as proxy, \
            GatewayClient(proxy.url, KEY, timeout=10, max_retries=2) as client:
        chat = client.stream("x", model=f"openai/{model}", resume_grace_s=60)
        for event in chat:
            if isinstance(event, Token):
                break
        proxy.stop()  # now every reconnection is refused
        with pytest.raises(StreamInterrupted) as info:
            chat.result()
    assert (info.value.stream_id, info.value.attempts) == (chat.stream_id, 2)
    assert info.value.last_event_id == chat.last_event_id == 1
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    with GatewayClient(server.url, KEY) as direct:
        rest = direct.resume(chat.stream_id, info.value.last_event_id)
        assert isinstance(rest.result(), Done)
    assert chat.text + rest.text == "".join(tokens)


def test_cancel_closes_the_provider_and_ends_with_cancelled(
        client: GatewayClient, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=LONG, delay=0.05)
    chat = client.stream("x", model=f"anthropic/{model}")
    events = []
    for event in chat:
        events.append(event)
        if isinstance(event, Token):
            asked = time.monotonic()
            assert chat.cancel()["status"] in ("running", "cancelled")
    call = fake.wait_closed(model)
    assert call.outcome == "peer_closed" and call.closed_at is not None
    assert call.closed_at - asked < 1.0
    assert events[-1] == chat.terminal == Cancelled(events[-1].id, "deleted")
    assert chat.cancel()["status"] == "cancelled"  # already ended: 200, nothing changes


def test_leaving_the_with_block_early_cancels(server: GatewayServer, client: GatewayClient,
                                              fake: FakeProvider) -> None:
    model = fake.scenario(tokens=LONG, delay=0.05)
    with client.stream("x", model=f"openai/{model}") as chat:
        for event in chat:
            if isinstance(event, Token):
                break
    assert fake.wait_closed(model, timeout=3).outcome == "peer_closed"  # not after GRACE_S
    assert wait_status(server, chat.stream_id) == "cancelled"


def test_gateway_errors(server: GatewayServer, client: GatewayClient) -> None:
    with pytest.raises(GatewayError) as info:
        client.stream("x", model="nope/model")
    assert (info.value.status, info.value.code, info.value.param) == (400, "unknown_model",
                                                                      "model")
    assert not info.value.retryable
    with pytest.raises(GatewayError) as info:
        client.stream("x", temperature=5)
    assert (info.value.status, info.value.code, info.value.param) == (400, "invalid_request",
                                                                      "temperature")
    with pytest.raises(GatewayError) as info:
        client.resume("no-such-stream-0123456789")
    assert (info.value.status, info.value.code) == (404, "not_found")
    for key in (None, "sk-wrong"):
        with GatewayClient(server.url, key) as anonymous, pytest.raises(GatewayError) as info:
            anonymous.stream("x")
        assert (info.value.status, info.value.code) == (401, "unauthorized")
        assert info.value.message


def test_unreachable_gateway() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free once closed: the connection is refused
    with GatewayClient(f"http://127.0.0.1:{port}") as client, \
            pytest.raises(GatewayUnreachable) as info:
        client.stream("x")
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_unnumbered_error_and_replayed_events_are_handled() -> None:
    """The wire cases a healthy live gateway does not produce, from a scripted transport:
    the one event without an id (the store unreachable: resume, it is not the end), a
    resume that replays events already seen, and a refusal with Retry-After."""
    asked: list[str | None] = []

    def frame(event_id: int | None, kind: str, data: object) -> str:
        head = "" if event_id is None else f"id: {event_id}\n"
        return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n"

    def answer(request: httpx.Request) -> httpx.Response:
        sse = {"content-type": "text/event-stream; charset=utf-8"}
        if request.method == "POST" and json.loads(request.content)["model"] == "busy/model":
            return httpx.Response(503, headers={"Retry-After": "3"}, json={
                "error": {"code": "overloaded", "message": "at its stream limit; retry"}})
        if request.method == "POST":
            return httpx.Response(200, headers=sse, text="retry: 10\n\n" + "".join([
                frame(0, "start", {"stream_id": "s" * 16, "model": "demo/echo", "created": 1}),
                frame(1, "token", {"content": "a"}),
                frame(None, "error", {"code": "internal_error", "retryable": True,
                                      "message": "the stream store is unreachable"})]))
        asked.append(request.headers.get("Last-Event-ID"))
        return httpx.Response(200, headers=sse, text="retry: 10\n\n: ping\n\n" + "".join([
            frame(0, "start", {"stream_id": "s" * 16, "model": "demo/echo", "created": 1}),
            frame(1, "token", {"content": "a"}), frame(2, "token", {"content": "b"}),
            frame(3, "done", {"finish_reason": "stop", "model": "demo/echo", "usage": None,
                              "metrics": {"ttft_ms": None}})]))

    http = httpx.Client(transport=httpx.MockTransport(answer))
    with http, GatewayClient("http://gateway.test", http_client=http) as client:
        chat = client.stream("x", stream_id="s" * 16)
        events = list(chat)
        with pytest.raises(GatewayError) as info:
            client.stream("x", model="busy/model")
    assert [type(e).__name__ for e in events] == ["Start", "Token", "Token", "Done"]
    assert chat.text == "ab" and asked == ["1"] and chat.reconnects == 1
    assert chat.retry_s == 0.01
    assert (info.value.status, info.value.code, info.value.retry_after) == (503, "overloaded", 3)
    assert info.value.retryable


# --------------------------------------------------------------------------- the CLI

# The test may run with SIGINT ignored (a background job of a shell), and an
# ignored signal stays ignored across exec: give the CLI the default disposition.
SIGINT_DEFAULT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execv(sys.argv[1], sys.argv[1:])")


def cli(server: GatewayServer, *args: str,
        app: str = "sse_gateway_client.cli") -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "ANTHROPIC_", "REDIS_", "API_KEYS", "GATEWAY_"))}
    env.update({"GATEWAY_URL": server.url, "GATEWAY_API_KEY": KEY})
    return subprocess.Popen(
        [sys.executable, "-c", SIGINT_DEFAULT, FLASK, "--app", app, "stream", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen[bytes], timeout: float = 15) -> tuple[bytes, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()  # by its pid
            process.communicate()
    return out, err.decode()


@pytest.mark.parametrize("app", ["sse_gateway_client.cli", "wsgi"])
def test_cli_prints_exactly_the_text(server: GatewayServer, fake: FakeProvider,
                                     app: str) -> None:
    model = fake.scenario(tokens=HOSTILE, delay=0.005)
    out, err = finish(cli(server, "--model", f"openai/{model}", "--max-tokens", "50",
                          "--system", "Be brief.", "hello", app=app))
    assert out.decode() == "".join(HOSTILE), err
    assert re.search(rf"\[openai/{model}\] finish: stop, tokens: {len(HOSTILE)}, ttft: \d+ ms",
                     err), err
    body = fake.wait_call(model).body
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hello"}]


def test_cli_shows_reasoning_refusals_and_tool_calls_on_stderr(
        server: GatewayServer, fake: FakeProvider) -> None:
    """The answer alone on stdout (pipeable); the rest on stderr, each on its own line."""
    model = fake.scenario(tokens=[fw.Reasoning("Let me "), fw.Reasoning("think."), "It is ",
                                  "noon.", fw.ToolCall(0, "call_c1", "get_time"),
                                  fw.ToolArgs(0, '{"tz": '), fw.ToolArgs(0, '"UTC"}')],
                          finish_reason="tool_calls")
    out, err = finish(cli(server, "--model", f"openai/{model}", "hello"))
    assert out.decode() == "It is noon.", err
    lines = err.splitlines()
    assert lines[:3] == ["[reasoning] Let me think.", "",
                         '[tool call 0] get_time({"tz": "UTC"}) id call_c1'], err
    assert lines[3].startswith(f"[openai/{model}] finish: tool_calls,"), err
    refusing = fake.scenario(tokens=[fw.Refusal("I can't "), fw.Refusal("do that.")])
    out, err = finish(cli(server, "--model", f"openai/{refusing}", "hello"))
    assert out == b""
    assert err.splitlines()[0] == "[refusal] I can't do that.", err
    assert "finish: refusal" in err


def test_cli_error_exits_1(server: GatewayServer) -> None:
    process = cli(server, "--model", "nope/model", "hello")
    out, err = finish(process)
    assert process.returncode == 1 and out == b""
    assert "400 unknown_model" in err


@pytest.mark.parametrize("app", ["sse_gateway_client.cli", "wsgi"])
def test_cli_ctrl_c_cancels_the_stream(server: GatewayServer, fake: FakeProvider,
                                       app: str) -> None:
    model = fake.scenario(tokens=LONG, delay=0.05)
    process = cli(server, "--model", f"openai/{model}", "hello", app=app)
    try:
        printed = b""
        deadline = time.monotonic() + 15
        assert process.stdout is not None
        while b"w2 " not in printed and time.monotonic() < deadline:
            if select.select([process.stdout], [], [], 0.5)[0]:
                chunk = os.read(process.stdout.fileno(), 4096)
                assert chunk, "the CLI closed its stdout early"
                printed += chunk
        assert printed.startswith(b"w0 w1 w2 "), printed
        process.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        _, err = finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            finish(process)
    assert process.returncode == 130, err
    found = re.search(r"cancelled stream ([A-Za-z0-9_-]+)", err)
    assert found, err
    stream_id = found.group(1)
    call = fake.wait_closed(model, timeout=5)
    assert call.outcome == "peer_closed" and call.closed_at is not None
    assert call.closed_at - interrupted < 2.0  # DELETE, not the 30 s resume grace
    assert wait_status(server, stream_id) == "cancelled"
    with GatewayClient(server.url, KEY) as client:
        terminal = client.resume(stream_id).result()
    assert isinstance(terminal, Cancelled) and terminal.reason == "deleted"
