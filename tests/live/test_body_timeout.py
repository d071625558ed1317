"""A request body that stops arriving is answered 408 and its connection closed.

Raw sockets against one real gunicorn (gevent worker) with ``BODY_TIMEOUT_S=1``,
and through the repository's nginx.conf (tests/live/infra.py). The deadline is
for the whole body, so a slow drip that never stalls for long is bounded too.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import record
from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer
from tests.live.infra import NginxServer

BODY_TIMEOUT_S = 1.0
MARGIN_S = 4.0  # generous: two cores, four people testing at once
BODY = json.dumps({"model": "demo/echo", "prompt": "slow but steady"}).encode()


@pytest.fixture(scope="module")
def server(fake: FakeProvider) -> Iterator[GatewayServer]:
    with GatewayServer(gateway_env(fake, BODY_TIMEOUT_S=str(BODY_TIMEOUT_S)),
                       label="body-timeout") as gateway:
        yield gateway


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    closed_after: float  # seconds from the last byte sent to the server's FIN


def head(host: str, port: int, *, length: int | None = 1000, chunked: bool = False) -> bytes:
    lines = [b"POST /v1/streams HTTP/1.1", f"Host: {host}:{port}".encode(),
             b"Content-Type: application/json"]
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
    elif length is not None:
        lines.append(f"Content-Length: {length}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def stalled(host: str, port: int, *, chunked: bool = False) -> socket.socket:
    """Connect, send the head and 10 bytes of the body, then nothing more."""
    sock = socket.create_connection((host, port), timeout=BODY_TIMEOUT_S + MARGIN_S)
    body = b"a\r\n" + BODY[:10] + b"\r\n" if chunked else BODY[:10]
    sock.sendall(head(host, port, chunked=chunked) + body)
    return sock


def read_to_close(sock: socket.socket, since: float) -> Answer:
    """Read until the server closes; socket.timeout (a failure) if it does not in time."""
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass  # closed all the same
    closed_after = time.monotonic() - since
    sock.close()
    status_line, _, rest = bytes(data).partition(b"\r\n")
    status = int(status_line.split()[1]) if status_line else 0
    head, _, body = rest.partition(b"\r\n\r\n")
    headers = dict(line.decode("latin-1").lower().split(": ", 1)
                   for line in head.split(b"\r\n") if b": " in line)
    return Answer(status, headers, body, closed_after)


def assert_request_timeout(answer: Answer, *, proxied: bool = False) -> None:
    assert answer.status == 408, answer
    assert answer.headers["content-type"] == "application/json"
    if not proxied:  # nginx speaks for itself to its client (and closes, as measured)
        assert answer.headers["connection"] == "close"
    assert json.loads(answer.body)["error"]["code"] == "request_timeout"
    assert BODY_TIMEOUT_S * 0.9 <= answer.closed_after <= BODY_TIMEOUT_S + MARGIN_S, answer


def test_a_stalled_body_is_answered_408_and_closed(server: GatewayServer) -> None:
    sock = stalled(server.host, server.port)
    answer = read_to_close(sock, time.monotonic())
    record("body_timeout.stalled_closed_after_s", answer.closed_after)
    assert_request_timeout(answer)
    assert json.loads(answer.body) == {"error": {
        "code": "request_timeout",
        "message": f"the request body did not arrive within {BODY_TIMEOUT_S:g} s"}}


def test_a_stalled_chunked_body_is_answered_408_and_closed(server: GatewayServer) -> None:
    sock = stalled(server.host, server.port, chunked=True)
    answer = read_to_close(sock, time.monotonic())
    record("body_timeout.chunked_closed_after_s", answer.closed_after)
    assert_request_timeout(answer)


def test_twenty_stalled_bodies_at_once_are_all_closed(server: GatewayServer) -> None:
    sent = time.monotonic()
    socks = [stalled(server.host, server.port, chunked=i % 2 == 1) for i in range(20)]
    answers = [read_to_close(sock, sent) for sock in socks]
    for answer in answers:
        assert_request_timeout(answer)
    record("body_timeout.twenty_last_closed_after_s", max(a.closed_after for a in answers))
    assert server.request("GET", "/healthz").status == 200


def test_a_slow_drip_is_bounded_in_total(server: GatewayServer) -> None:
    """One byte every 0.2 s never stalls for long, but the body is due within the deadline."""
    sock = socket.create_connection((server.host, server.port), timeout=BODY_TIMEOUT_S + MARGIN_S)
    sock.sendall(head(server.host, server.port))
    started = time.monotonic()
    answered = False
    i = 0
    while time.monotonic() - started < BODY_TIMEOUT_S + MARGIN_S:
        # Pacing the drip, and the moment the answer arrives ends it.
        if select.select([sock], [], [], 0.2)[0]:
            answered = True
            break
        try:
            sock.sendall(BODY[i % len(BODY):][:1])
        except OSError:
            break
        i += 1
    assert answered
    answer = read_to_close(sock, started)
    record("body_timeout.drip_closed_after_s", answer.closed_after)
    assert_request_timeout(answer)


def test_a_slow_but_steady_body_within_the_limit_is_served(server: GatewayServer) -> None:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    sock.sendall(head(server.host, server.port, length=len(BODY)))
    pieces = [BODY[i:i + 12] for i in range(0, len(BODY), 12)]
    for piece in pieces:  # about 0.3 s in all, well within the 1 s deadline
        sock.sendall(piece)
        select.select([sock], [], [], 0.3 / len(pieces))
    data = bytearray()
    while b"event: done" not in data and (chunk := sock.recv(65536)):
        data += chunk
    sock.close()
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"event: done" in data


# --- through nginx ----------------------------------------------------------------------------

def established_to(port: int) -> int:
    """TCP connections in ESTABLISHED state whose local port is ``port`` (the server side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":
                count += 1
    return count


@pytest.mark.parametrize("chunked", [False, True])
def test_through_nginx_a_stalled_body_is_closed_and_the_gateway_holds_nothing(
        fake: FakeProvider, chunked: bool) -> None:
    """nginx's own client_body_timeout (nginx.conf, 1 s here) ends the request; the gateway,
    whose own deadline is far away, sees its upstream connection close and keeps nothing."""
    with GatewayServer(gateway_env(fake, BODY_TIMEOUT_S="60"), label="behind-nginx") as gateway, \
            NginxServer([(gateway.host, gateway.port)], body_timeout="1s") as nginx:
        sock = stalled(nginx.host, nginx.port, chunked=chunked)
        answer = read_to_close(sock, time.monotonic())
        record("body_timeout.nginx_closed_after_s", answer.closed_after)
        assert 0.9 <= answer.closed_after <= 1 + MARGIN_S, answer
        deadline = time.monotonic() + MARGIN_S
        while established_to(gateway.port) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling /proc: nothing to await
        assert established_to(gateway.port) == 0
        assert gateway.request("GET", "/healthz").status == 200


def test_through_nginx_the_gateway_deadline_answers_408(server: GatewayServer) -> None:
    """With nginx's timeout the longer one (nginx.conf as shipped), the gateway's answers."""
    with NginxServer([(server.host, server.port)]) as nginx:
        sock = stalled(nginx.host, nginx.port)
        answer = read_to_close(sock, time.monotonic())
        record("body_timeout.nginx_gateway_408_after_s", answer.closed_after)
        assert_request_timeout(answer, proxied=True)
