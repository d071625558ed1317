"""A TCP forwarder between a client under test and the gateway, whose connections a
test can cut mid-answer (the browser tests and the third-party SSE client tests)."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading


class CuttableProxy:
    """A TCP forwarder 127.0.0.1:port -> the gateway, whose live connections can be cut
    (the listener stays up), and which keeps what the client sent, to see its requests."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = bytearray()  # every byte client -> gateway, all connections
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._forwarding = threading.Event()  # cleared: new connections wait, unanswered
        self._forwarding.set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
                self._forwarding.wait()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        try:
            while data := src.recv(65536):
                if outbound:
                    with self._lock:
                        self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def cut(self, hold: bool = False) -> int:
        """Reset every live connection (both sides); new ones are still accepted, and with
        ``hold`` left waiting (unanswered) until ``release()``."""
        if hold:
            self._forwarding.clear()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the pump threads
                sock.close()
        return len(pairs)

    def release(self) -> None:
        self._forwarding.set()

    def requests(self) -> list[tuple[str, str, dict[str, str]]]:
        """(method, path, headers) of every request the client sent through the proxy."""
        with self._lock:
            raw = bytes(self.sent)
        found = []
        for m in re.finditer(rb"(GET|POST|DELETE) (\S+) HTTP/1\.1\r\n(.*?)\r\n\r\n", raw, re.S):
            headers = {}
            for line in m.group(3).decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            found.append((m.group(1).decode(), m.group(2).decode(), headers))
        return found

    def close(self) -> None:
        self._closed = True
        self._forwarding.set()
        self.listener.close()
        self.cut()
