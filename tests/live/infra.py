"""Real nginx (from the repository's own ``nginx.conf``) and private Redis servers for live tests.

``NginxServer`` runs ``nginx -c <tmp>/nginx.conf -g 'daemon off;'`` where ``<tmp>/nginx.conf``
is ``ROOT / "nginx.conf"`` with only these directives changed, each by a regex that raises
if the directive is not there (so an edit of nginx.conf can never silently give the tests a
different configuration):

- ``listen HOST:PORT;`` (exactly one)   -> ``listen 127.0.0.1:<free port>;``
- ``server HOST:PORT;`` in ``upstream gateway`` (exactly one, plus any commented-out
  ``# server ...;`` lines there)        -> one ``server host:port;`` line per upstream
- ``pid``, ``client_body_temp_path``, ``proxy_temp_path`` (exactly one each) -> the temp dir
- ``error_log TARGET [LEVEL];`` (exactly one) -> ``<tmp>/error.log``, same level
- with ``read_timeout``: every ``proxy_read_timeout`` (at least one) -> that value
- with ``body_timeout``: ``client_body_timeout`` (exactly one) -> that value

``RedisServer`` runs a private ``redis-server`` (no persistence) on a free loopback port that
a test may stop and restart on the same port.

Every process is started in its own session and stopped by its pid (nginx's workers by
its process group, whose id is the master's pid), never by name, also on failure paths.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "nginx.conf"
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


# --- binaries ---------------------------------------------------------------------------

def _apt_install(package: str) -> None:
    """``apt-get update && apt-get install -y PACKAGE`` without starting the package's service
    (a policy-rc.d answering 101, as .ci/services.sh does)."""
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for command in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n"
                                   f"{done.stdout}{done.stderr}")
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)


def _ensure_binary(name: str, package: str) -> str:
    found = shutil.which(name, path=_SBIN_PATH)
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError(f"{name} is not installed and this is not root: run `make services` "
                           f"or `apt-get install -y {package}` (the live tests need it)")
    _apt_install(package)
    found = shutil.which(name, path=_SBIN_PATH)
    if not found:
        raise RuntimeError(f"apt-get installed {package} but there is still no {name} binary")
    return found


def ensure_nginx() -> str:
    """The nginx binary; Debian's ``nginx`` package is installed when missing (as root).

    Raises RuntimeError when it cannot be had: tests that need nginx fail, never skip.
    """
    return _ensure_binary("nginx", "nginx")


def ensure_redis_server() -> str:
    """The redis-server binary; Debian's ``redis-server`` package is installed when missing."""
    return _ensure_binary("redis-server", "redis-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _stop_process(process: subprocess.Popen[bytes] | None, first: signal.Signals,
                  timeout: float) -> None:
    """Signal ``process`` by its pid, wait; then SIGKILL its process group (its own session,
    so the group id is its pid: this reaches nginx's workers too) and wait again."""
    if process is None or process.poll() is not None:
        return
    try:
        process.send_signal(first)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# --- nginx ------------------------------------------------------------------------------

def _sub(pattern: str, replace: Callable[[re.Match[str]], str], text: str, what: str, *,
         at_least: bool = False) -> str:
    """``re.subn`` that raises unless it replaced exactly one match (or, ``at_least``, some)."""
    new, count = re.subn(pattern, replace, text, flags=re.MULTILINE)
    if count == 0 or (count > 1 and not at_least):
        raise RuntimeError(f"{NGINX_CONF}: expected {'at least' if at_least else 'exactly'} one "
                           f"{what} (/{pattern}/), found {count}; update tests/live/infra.py "
                           f"together with nginx.conf")
    return new


def render_nginx_conf(source: str, *, port: int, upstreams: list[tuple[str, int]],
                      tmp: Path, read_timeout: str | None = None,
                      body_timeout: str | None = None) -> str:
    """``source`` (the text of nginx.conf) with the test's port, upstreams and paths."""
    if not upstreams:
        raise ValueError("at least one upstream is needed")
    text = _sub(r"^(?P<i>[ \t]*)listen[ \t]+[\w.\[\]:]+:\d+[ \t]*;",
                lambda m: f"{m['i']}listen 127.0.0.1:{port};", source, "`listen HOST:PORT;`")
    text = _sub(r"^pid[ \t]+\S+[ \t]*;", lambda m: f"pid {tmp / 'nginx.pid'};", text,
                "top-level `pid PATH;`")
    text = _sub(r"^error_log[ \t]+\S+(?P<level>[ \t]+\w+)?[ \t]*;",
                lambda m: f"error_log {tmp / 'error.log'}{m['level'] or ''};", text,
                "top-level `error_log TARGET [LEVEL];`")
    text = _sub(r"^(?P<i>[ \t]*)client_body_temp_path[ \t]+\S+[ \t]*;",
                lambda m: f"{m['i']}client_body_temp_path {tmp / 'client_body'};", text,
                "`client_body_temp_path PATH;`")
    text = _sub(r"^(?P<i>[ \t]*)proxy_temp_path[ \t]+\S+[ \t]*;",
                lambda m: f"{m['i']}proxy_temp_path {tmp / 'proxy'};", text,
                "`proxy_temp_path PATH;`")

    block = re.search(r"^[ \t]*upstream[ \t]+gateway[ \t]*\{[ \t]*\n(?P<body>.*?)^[ \t]*\}", text,
                      re.MULTILINE | re.DOTALL)
    if block is None:
        raise RuntimeError(f"{NGINX_CONF}: no `upstream gateway {{ ... }}` block; "
                           f"update tests/live/infra.py together with nginx.conf")
    # The commented-out example servers go; the one active server becomes ours.
    body = re.sub(r"^[ \t]*#[ \t]*server[ \t].*\n", "", block["body"], flags=re.MULTILINE)
    body = _sub(r"^(?P<i>[ \t]*)server[ \t]+[\w.\[\]:]+:\d+[ \t]*;.*\n",
                lambda m: "".join(f"{m['i']}server {host}:{p};\n" for host, p in upstreams),
                body, "active `server HOST:PORT;` line in `upstream gateway`")
    text = text[:block.start("body")] + body + text[block.end("body"):]

    if read_timeout is not None:
        text = _sub(r"^(?P<i>[ \t]*)proxy_read_timeout[ \t]+\S+[ \t]*;",
                    lambda m: f"{m['i']}proxy_read_timeout {read_timeout};", text,
                    "`proxy_read_timeout`", at_least=True)
    if body_timeout is not None:
        text = _sub(r"^(?P<i>[ \t]*)client_body_timeout[ \t]+\S+[ \t]*;",
                    lambda m: f"{m['i']}client_body_timeout {body_timeout};", text,
                    "`client_body_timeout`")
    return text


class NginxServer:
    """nginx with the repository's nginx.conf, in front of ``upstreams``, on a free port."""

    def __init__(self, upstreams: list[tuple[str, int]], *,
                 read_timeout: str | None = None, body_timeout: str | None = None) -> None:
        self.upstreams = list(upstreams)
        self.read_timeout = read_timeout
        self.body_timeout = body_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.tmp: Path | None = None
        self._saved_log = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def conf_path(self) -> Path:
        assert self.tmp is not None, "not started"
        return self.tmp / "nginx.conf"

    def start(self, timeout: float = 15) -> NginxServer:
        """Write the config, ``nginx -t`` it, run nginx; return once it accepts connections.

        Raises RuntimeError with nginx's output and error log when it does not come up.
        """
        if self.process is not None:
            raise RuntimeError("already started")
        binary = ensure_nginx()
        for attempt in range(3):  # another process may take the free port in between
            try:
                self._start_once(binary, timeout)
                return self
            except _PortTaken:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, binary: str, timeout: float) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="sse-gateway-nginx-"))
        # nginx started as root runs its workers as `nobody`: they must be able to reach
        # the temp paths under this directory (mkdtemp makes it 0700).
        self.tmp.chmod(0o755)
        self._saved_log = ""
        try:
            self.port = free_port()
            self.conf_path.write_text(render_nginx_conf(
                NGINX_CONF.read_text(), port=self.port, upstreams=self.upstreams, tmp=self.tmp,
                read_timeout=self.read_timeout, body_timeout=self.body_timeout))
            checked = subprocess.run([binary, "-t", "-q", "-c", str(self.conf_path)],
                                     capture_output=True, text=True, check=False)
            if checked.returncode != 0:
                raise RuntimeError(f"nginx -t -c {self.conf_path} failed:\n"
                                   f"{checked.stdout}{checked.stderr}{self.error_log()}")
            with (self.tmp / "output.log").open("ab") as output:
                self.process = subprocess.Popen(
                    [binary, "-c", str(self.conf_path), "-g", "daemon off;"],
                    stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                    start_new_session=True)
            deadline = time.monotonic() + timeout
            while not _accepts(self.host, self.port):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.error_log()
                    error = _PortTaken if "Address already in use" in log else RuntimeError
                    raise error(f"nginx did not start on {self.url} (exit "
                                f"{self.process.poll()}), its log:\n{log}")
                time.sleep(0.02)  # polling for readiness: nginx signals nothing
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 5) -> None:
        """SIGQUIT (graceful) the master by pid, wait; then SIGKILL master and workers
        (by process group). Removes the temp dir, keeping the log for error_log().

        Idempotent. An open stream holds a graceful stop for up to ``timeout`` seconds.
        """
        process, self.process = self.process, None
        _stop_process(process, signal.SIGQUIT, timeout)
        if self.tmp is not None:
            self._saved_log = self.error_log()
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def error_log(self) -> str:
        """nginx's error log and anything it printed (also after stop())."""
        if self.tmp is None:
            return self._saved_log
        return "".join(path.read_text(errors="replace")
                       for path in (self.tmp / "error.log", self.tmp / "output.log")
                       if path.exists())

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class _PortTaken(RuntimeError):
    """nginx could not bind the port that was free a moment before."""


# --- Redis ------------------------------------------------------------------------------

def redis_ping(host: str, port: int, timeout: float = 1) -> bool:
    """True if a Redis on host:port answers PING with +PONG (raw RESP, no client library)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    break
                reply += chunk
            return reply == b"+PONG\r\n"
    except OSError:
        return False


class RedisServer:
    """A private redis-server on a free loopback port (no persistence) that tests may stop
    and restart on the SAME port."""

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.tmp: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 15) -> RedisServer:
        """Run redis-server and return once it answers PING; raises with its log otherwise."""
        if self.process is not None:
            raise RuntimeError("already started")
        binary = ensure_redis_server()
        self.tmp = Path(tempfile.mkdtemp(prefix="sse-gateway-redis-"))
        log = self.tmp / "redis.log"
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                [binary, "--bind", self.host, "--port", str(self.port), "--save", "",
                 "--appendonly", "no", "--dir", str(self.tmp), "--daemonize", "no",
                 "--protected-mode", "no", "--logfile", ""],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while not redis_ping(self.host, self.port):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not answer PING:\n"
                                       f"{log.read_text(errors='replace')}")
                time.sleep(0.02)  # polling for readiness: redis-server signals nothing
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5) -> None:
        """SIGTERM by pid, wait; then SIGKILL. Idempotent."""
        process, self.process = self.process, None
        _stop_process(process, signal.SIGTERM, timeout)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
