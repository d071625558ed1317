"""The machine the benchmark ran on, and how busy the rest of it was meanwhile."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench import servers

PACKAGES = ("gunicorn", "gevent", "greenlet", "Flask", "Werkzeug", "openai", "httpx2",
            "httpcore2", "starlette", "sse-starlette", "uvicorn", "uvloop", "httptools",
            "matplotlib", "py-spy")


def system_cpu() -> tuple[float, float]:
    """(busy, total) seconds of all cores since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return (total - idle) / servers.CLK_TCK, total / servers.CLK_TCK


def own_cpu() -> float:
    """CPU seconds of this process and every process it started (servers, provider)."""
    t = os.times()
    return t.user + t.system + servers.cpu_seconds(servers.children_of(os.getpid()))


@dataclass
class Meter:
    """Measures what *other* processes used of the machine over an interval."""

    busy0: float = 0.0
    ours0: float = 0.0
    t0: float = 0.0

    def start(self) -> Meter:
        self.busy0, _ = system_cpu()
        self.ours0 = own_cpu()
        self.t0 = time.monotonic()
        return self

    def stop(self) -> dict[str, float]:
        busy, _ = system_cpu()
        wall = time.monotonic() - self.t0
        ours = own_cpu() - self.ours0
        foreign = max(0.0, busy - self.busy0 - ours)
        return {"wall_s": wall, "ours_cores": ours / wall if wall else 0.0,
                "other_cores": foreign / wall if wall else 0.0}


def busy_fraction(window_s: float = 3.0) -> float:
    """How busy all cores were (0..1) over the next ``window_s`` seconds."""
    busy0, total0 = system_cpu()
    time.sleep(window_s)
    busy1, total1 = system_cpu()
    return (busy1 - busy0) / max(1e-9, total1 - total0)


def wait_quiet(max_wait_s: float, threshold: float = 0.10, log: Any = print) -> dict[str, Any]:
    """Wait until the machine is quiet (busy < ``threshold`` twice in a row), at most
    ``max_wait_s``. Returns what was seen."""
    started = time.monotonic()
    seen = []
    quiet_in_a_row = 0
    while True:
        busy = busy_fraction()
        seen.append(round(busy, 3))
        quiet_in_a_row = quiet_in_a_row + 1 if busy < threshold else 0
        waited = time.monotonic() - started
        if quiet_in_a_row >= 2:
            return {"quiet": True, "waited_s": round(waited, 1), "busy_samples": seen[-5:]}
        if waited >= max_wait_s:
            return {"quiet": False, "waited_s": round(waited, 1), "busy_samples": seen[-5:]}
        if len(seen) % 10 == 1:
            log(f"waiting for a quiet machine: {busy:.0%} busy "
                f"({waited:.0f} of at most {max_wait_s:.0f} s)")


def busiest_others(limit: int = 5) -> list[str]:
    """The other processes using the most CPU right now (ps), for the record."""
    try:
        out = subprocess.run(["ps", "-eo", "pcpu,pid,comm", "--sort=-pcpu"], capture_output=True,
                             text=True, timeout=5).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return []
    mine = {os.getpid(), *servers.children_of(os.getpid())}
    rows = []
    for line in out:
        parts = line.split(None, 2)
        if len(parts) == 3 and int(parts[1]) not in mine and float(parts[0]) >= 1.0:
            rows.append(f"{parts[2]} (pid {parts[1]}): {parts[0]}% CPU (ps, lifetime average)")
        if len(rows) >= limit:
            break
    return rows


def describe() -> dict[str, Any]:
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=servers.ROOT,
                                capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "app", "config", "wsgi.py"],
                               cwd=servers.ROOT, capture_output=True, text=True,
                               timeout=5).stdout.split("\n")
        changed = sorted(line[3:] for line in dirty if line.strip())
    except (OSError, subprocess.SubprocessError):
        commit, changed = "", []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(), "cpu_model": cpu_model, "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(), "python": sys.version.split()[0],
        "implementation": platform.python_implementation(), "versions": versions,
        "commit": commit, "gateway_changes": changed, "nofile_soft": soft, "nofile_hard": hard,
        "loadavg": os.getloadavg(),
    }
