"""The floor for one gevent process: no framework, no HTTP library, no SDK.

    python -m bench.alternatives.gevent_floor --fd N    # OPENAI_BASE_URL from the environment

Not something to deploy (no timeouts, no errors handled, no disconnect watch):
per client it opens a raw TCP connection to the provider, sends the chat
request, de-chunks the provider's HTTP body by hand, splits its SSE lines,
``json.loads`` each chunk, and writes ``data: {"content": ...}`` per delta to
the client on the raw socket (HTTP/1.1, chunked), in one greenlet. What it
spends per token is what gevent and CPython spend on one wake-up, one read,
one parse and one write: the least any gevent design can, and the reference
for the gateway's CPU per token.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from gevent.server import StreamServer  # noqa: E402

PROVIDER = urlsplit(os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1"))
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def read_request(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return b"", b""
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            return b"", b""
        body += data
    return head.split(b" ", 2)[1], body


def deltas(upstream: socket.socket):  # noqa: ANN201 - a generator of str
    """The content of each chunk of the provider's chunked SSE body."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += upstream.recv(65536)
    buf = buf.partition(b"\r\n\r\n")[2]
    body = b""  # de-chunked bytes not yet split into lines
    ended = False
    while True:
        while not ended:  # every complete chunk in buf
            size_end = buf.find(b"\r\n")
            if size_end < 0:
                break
            size = int(buf[:size_end], 16)
            if len(buf) < size_end + 2 + size + 2:
                break
            ended = size == 0
            body += buf[size_end + 2:size_end + 2 + size]
            buf = buf[size_end + 2 + size + 2:]
        *lines, body = body.split(b"\n")
        for line in lines:
            if line.startswith(b"data: "):
                if line == b"data: [DONE]":
                    return
                for choice in json.loads(line[6:]).get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text
        data = b"" if ended else upstream.recv(65536)
        if not data:
            return
        buf += data


def handle(client: socket.socket, address: object) -> None:
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    path, raw = read_request(client)
    if not path:
        client.close()
        return
    if path == b"/healthz":
        client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        client.close()
        return
    request = json.loads(raw)
    payload = json.dumps({"model": request["model"], "stream": True,
                          "messages": [{"role": "user", "content": request["prompt"]}]}).encode()
    upstream = socket.create_connection((PROVIDER.hostname, PROVIDER.port))
    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    upstream.sendall(b"POST %s/chat/completions HTTP/1.1\r\nHost: %s\r\n"
                     b"Content-Type: application/json\r\nAuthorization: Bearer x\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (PROVIDER.path.encode(),
                                                        PROVIDER.netloc.encode(),
                                                        len(payload), payload))
    try:
        client.sendall(HEAD)
        for text in deltas(upstream):
            data = json.dumps({"content": text}, ensure_ascii=False)
            client.sendall(chunk(f"data: {data}\n\n".encode()))
        client.sendall(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    except OSError:
        pass
    finally:
        upstream.close()
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.alternatives.gevent_floor")
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args()
    listener = socket.socket(fileno=args.fd)
    StreamServer(listener, handle).serve_forever()


if __name__ == "__main__":
    main()
