"""The React example (examples/react) for the live tests: its npm packages (``npm ci``,
only when package-lock.json changed since the last install), its Vite build, and
``vite preview`` serving the build and proxying ``/v1`` to a test's gateway."""

from __future__ import annotations

import hashlib
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import record
from tests.live.gateway import ROOT

EXAMPLE = ROOT / "examples" / "react"
STAMP = EXAMPLE / "node_modules" / ".installed-lock.sha256"  # npm ci removes it with the rest
LOCAL = re.compile(r"http://127\.0\.0\.1:(\d+)/")


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: `make services` installs node and npm", pytrace=False)
    return npm


def _run(command: list[str], what: str, env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    done = subprocess.run(command, cwd=EXAMPLE, capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1", **(env or {})}, check=False)
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}",
                    pytrace=False)
    return time.monotonic() - started


def build(out: str = "dist", gateway_url: str = "") -> Path:
    """``npm ci`` when the lock file is not the one installed, then ``vite build`` into
    examples/react/``out`` (with ``gateway_url``: pages that call that gateway, across
    origins); returns that folder. Both times go to the figures."""
    npm = _npm()
    lock = hashlib.sha256((EXAMPLE / "package-lock.json").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != lock:
        seconds = _run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       "npm ci in examples/react")
        record("react_example.npm_ci_s", seconds)
        STAMP.write_text(lock + "\n")
    record("react_example.build_s", _run([npm, "run", "build", "--", "--outDir", out],
                                         "vite build", {"VITE_GATEWAY_URL": gateway_url}))
    return EXAMPLE / out


class Preview:
    """``vite preview`` of examples/react/``out`` on a free port (Vite's own choice:
    ``--port 0``), proxying ``/v1`` to ``gateway_url``; stopped by its pid."""

    def __init__(self, gateway_url: str, out: str = "dist") -> None:
        self.gateway_url = gateway_url
        self.out = out
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.output: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 20) -> Preview:
        vite = EXAMPLE / "node_modules" / ".bin" / "vite"
        self.process = subprocess.Popen(
            [str(vite), "preview", "--port", "0", "--host", "127.0.0.1", "--outDir", self.out],
            cwd=EXAMPLE,
            env={**os.environ, "GATEWAY_URL": self.gateway_url, "NO_COLOR": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:  # keeps draining, so that the pipe never fills
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                self.output.append(line)
                lines.put(line)
            lines.put(None)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise AssertionError(f"vite preview not ready in {timeout} s:\n"
                                     + "".join(self.output)) from None
            if line is None:
                self.stop()
                raise AssertionError("vite preview exited:\n" + "".join(self.output))
            found = LOCAL.search(line)
            if found:
                self.url = f"http://127.0.0.1:{found.group(1)}"
                return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)  # it ends at the pipe's end
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
