"""`make bench`'s harness in smoke mode: it runs end to end and writes every section.

Tiny counts (``python -m bench.run --smoke``), into a temporary directory, never
into bench/results/. The gateway and the lower bound (the fake provider read
directly) always run; an alternative whose dependency is not installed here
(sse-starlette, uvicorn: requirements-bench.txt) is skipped by the harness, and
nothing is installed. No figure is checked against a target: other tests may
load the machine; only that every scenario ran and every stream was exact.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SECTIONS = [
    "## Machine",
    "## How it was run",
    "## The gateway's targets",
    "## 1. Added time to first token, one stream at a time",
    "## 2. 200 concurrent streams",
    "## 3. Most concurrent streams held at 10 tokens/s",
    "## 4. Memory per held stream",
    "## 5. CPU seconds per 1,000 tokens relayed",
    "## 6. DELETE to the provider's connection closed",
    "## 7. Client drop to the provider's connection closed",
    "## 8. Reconnect to the first replayed event",
    "## Load from other processes during the run",
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("bench")
    run = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text()), run.stdout


@pytest.mark.live
def test_writes_every_section(smoke: tuple[Path, dict, str]) -> None:
    out, results, _ = smoke
    text = (out / "results.md").read_text()
    missing = [section for section in SECTIONS if section not in text]
    assert not missing, text
    assert results["mode"] == "smoke"
    assert not results["errors"], results["errors"]


@pytest.mark.live
def test_gateway_and_lower_bound_ran_every_figure(smoke: tuple[Path, dict, str]) -> None:
    _, results, _ = smoke
    figures = results["figures"]
    for key in "12345":
        for server in ("gateway", "provider"):
            assert server in figures[key], (key, server)
            assert "failed" not in figures[key][server], (key, server, figures[key][server])
    for key in ("1", "2"):
        for server, value in figures[key].items():
            assert value["ok"] == value["n"] > 0, (key, server, value)
    for server, steps in figures["3"].items():
        for step in steps.values():
            assert step["ok"] == step["n"], (server, step)
    for key in ("6", "8"):
        assert set(figures[key]) == {"gateway"}
    # The gateway closes the provider at once on a client drop and on DELETE.
    for key in ("6", "7"):
        for mode in ("streaming", "silent"):
            closed = figures[key]["gateway"][mode]
            assert closed["closed"] == closed["n"], (key, mode, closed)
    for case in ("running", "ended"):
        assert figures["8"]["gateway"][case]["failures"] == 0


@pytest.mark.live
def test_optional_alternatives_are_skipped_not_installed(smoke: tuple[Path, dict, str]) -> None:
    _, results, _ = smoke
    has_starlette = all(importlib.util.find_spec(m) is not None
                        for m in ("sse_starlette", "uvicorn"))
    if has_starlette:
        assert "starlette" in results["servers"]
        assert "starlette" in results["figures"]["1"]
    else:
        assert "starlette" in results["skipped"]
        assert "starlette" not in results["figures"].get("1", {})
    assert "flask-gthread" in results["figures"]["1"]
