"""Start, watch and stop the processes under test, each by its pid.

Every server gets a listening socket made here and inherited as a file
descriptor (``--bind fd://N`` for gunicorn, ``--fd N`` for uvicorn), as the live
tests do, so there is no race for a port. CPU time and resident memory are read
from ``/proc`` for the server's whole process tree (gunicorn's master and workers).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.client import Target

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

RUNNING: list[Any] = []  # every process started here, stopped at exit whatever happens


# --------------------------------------------------------------------------- /proc


def children_of(pid: int) -> list[int]:
    """Every descendant of ``pid`` (scanning /proc for parent ids)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/statm") as f:
            total += int(f.read().split()[1]) * PAGE_KIB
    return total


def pss_kib(pids: list[int]) -> int:
    """Proportional set size: shared pages (forked workers) counted once in all."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


# --------------------------------------------------------------------------- processes


class Process:
    """A subprocess we started; ``stop`` ends it and its descendants by pid."""

    def __init__(self, name: str, command: list[str], env: dict[str, str],
                 pass_fds: tuple[int, ...] = ()) -> None:
        self.name = name
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.popen = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log,
                                      stderr=subprocess.STDOUT, pass_fds=pass_fds)
        self.pid = self.popen.pid
        RUNNING.append(self)

    def pids(self) -> list[int]:
        return [self.pid, *children_of(self.pid)]

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM by pid, then SIGKILL; its log is kept only if it had exited by itself."""
        exited_by_itself = self.popen.poll() is not None
        if not exited_by_itself:
            descendants = children_of(self.pid)
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
            deadline = time.monotonic() + 5
            for pid in descendants:  # workers normally leave with their master
                while alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if alive(pid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        self.log.close()
        if not exited_by_itself:
            self.cleanup_log()
        with contextlib.suppress(ValueError):
            RUNNING.remove(self)

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def cleanup_log(self) -> None:
        Path(self.log.name).unlink(missing_ok=True)


def stop_all() -> None:
    for process in list(RUNNING):
        with contextlib.suppress(Exception):
            process.stop(timeout=5)


class Provider(Process):
    """``python -m bench.provider``: the fake provider, and its control routes."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        super().__init__("provider", [sys.executable, "-m", "bench.provider"], env)
        deadline = time.monotonic() + 20
        info = None
        while time.monotonic() < deadline and info is None:
            if self.popen.poll() is not None:
                raise RuntimeError(f"the fake provider exited:\n{self.log_tail()}")
            first = Path(self.log.name).read_text().split("\n", 1)
            if len(first) > 1:
                info = json.loads(first[0])
            else:
                time.sleep(0.05)
        if info is None:
            self.stop()
            raise RuntimeError("the fake provider did not start")
        self.url: str = info["url"]
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self.target = Target("provider", "openai", host, int(port))

    def control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as response:
            return json.loads(response.read())

    def scenario(self, tokens: int, count: int = 1, record: bool = True,
                 **behaviour: Any) -> list[str]:
        """Register ``count`` models answering ``tokens`` lorem tokens each."""
        models: list[str] = self.control("POST", "/_scenario", {
            "tokens": tokens, "count": count, "record": record, **behaviour})["models"]
        return models

    def calls(self, model: str) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = self.control("GET", f"/_calls/{model}")
        return calls

    def cpu(self) -> float:
        return cpu_seconds([self.pid])


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class Spec:
    """A server under test: how to start it, and what to call it in the results."""

    name: str
    label: str
    kind: str  # "gateway" | "alt" | "openai" (the fake provider itself, no process)
    config: str  # one line for the results
    module: str = ""  # what it needs importable (else it is skipped)

    def command(self, fd: int) -> list[str]:
        py = [sys.executable, "-m"]
        if self.name == "gateway":
            return [*py, "gunicorn", "-c", "config/gunicorn.conf.py", "--bind", f"fd://{fd}",
                    "wsgi:app"]
        if self.name == "flask-sync":
            return [*py, "gunicorn", "--no-control-socket", "--workers", "5",
                    "--bind", f"fd://{fd}", "bench.alternatives.flask_naive:app"]
        if self.name == "flask-gthread":
            return [*py, "gunicorn", "--no-control-socket", "--worker-class", "gthread",
                    "--workers", "2", "--threads", "128", "--bind", f"fd://{fd}",
                    "bench.alternatives.flask_naive:app"]
        if self.name == "floor":
            return [*py, "bench.alternatives.gevent_floor", "--fd", str(fd)]
        if self.name == "starlette":
            return [*py, "uvicorn", "--fd", str(fd), "bench.alternatives.starlette_sse:app"]
        raise ValueError(self.name)

    def env(self, fake_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OPENAI_", "ANTHROPIC_", "REDIS_", "PROMETHEUS_"))}
        env.update({"PYTHONUNBUFFERED": "1", "OPENAI_API_KEY": "x",
                    "OPENAI_BASE_URL": f"{fake_url}/v1"})
        if self.name == "gateway":
            env.update(GATEWAY_ENV)
        return env


# The environment for the gateway, plus a short drain at stop (not measured).
GATEWAY_ENV = {
    "MODELS": "openai/*", "RATELIMIT_CREATE": "", "RATELIMIT_EVENTS": "",
    "RATELIMIT_STATUS": "", "RATELIMIT_CANCEL": "", "RATELIMIT_MODELS": "",
    "MAX_STREAMS_PER_KEY": "0", "MAX_READERS_PER_KEY": "0", "MAX_ACTIVE_STREAMS": "20000",
    "HEARTBEAT_S": "15",
    "GRACEFUL_TIMEOUT_S": "5", "SHUTDOWN_MARGIN_S": "3",
}

SPECS = {
    "gateway": Spec("gateway", "gateway (gunicorn, 1 gevent worker)", "gateway",
                    "gunicorn -c config/gunicorn.conf.py wsgi:app: 1 gevent worker, "
                    "10,000 worker_connections, memory broker"),
    "flask-sync": Spec("flask-sync", "Flask + sync openai, gunicorn sync x5", "alt",
                       "gunicorn --workers 5 (sync; 2 x cores + 1, gunicorn's rule): "
                       "5 streams at a time", "flask"),
    "flask-gthread": Spec("flask-gthread", "Flask + sync openai, gunicorn gthread 2x128",
                          "alt", "gunicorn --worker-class gthread --workers 2 --threads 128: "
                          "256 streams at a time", "flask"),
    "starlette": Spec("starlette", "Starlette + sse-starlette + AsyncOpenAI, uvicorn", "alt",
                      "uvicorn, 1 process (uvloop + httptools), sse-starlette "
                      "EventSourceResponse, AsyncOpenAI", "sse_starlette"),
    "floor": Spec("floor", "bare gevent relay, no framework (a floor, not deployable)", "alt",
                  "bench/alternatives/gevent_floor.py: one gevent process, raw sockets, "
                  "hand-parsed HTTP, json; no timeouts, errors or disconnect watch", "gevent"),
    "provider": Spec("provider", "fake provider directly (lower bound)", "openai",
                     "the client reads the fake provider's OpenAI stream itself"),
}


class Server(Process):
    """One server under test, listening on an inherited socket."""

    def __init__(self, spec: Spec, fake_url: str) -> None:
        self.spec = spec
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(4096)
        listener.set_inheritable(True)
        self.listener = listener
        self.port = listener.getsockname()[1]
        super().__init__(spec.name, spec.command(listener.fileno()), spec.env(fake_url),
                         pass_fds=(listener.fileno(),))
        # Only the server holds the socket from now on: a dead server refuses, not queues.
        listener.close()
        self.target = Target(spec.name, spec.kind, "127.0.0.1", self.port)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n"
                                   f"{self.log_tail()}")
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                connection.close()
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def rss(self) -> int:
        return rss_kib(self.pids())

    def pss(self) -> int:
        return pss_kib(self.pids())
