"""Shared fixtures: the fake provider, and figures measured by the live tests."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_provider import FakeProvider

FIGURES: dict[str, list[float]] = {}
FIGURES_FILE = Path(__file__).resolve().parents[1] / "build" / "test-figures.json"


def record(name: str, value: float) -> None:
    """Keep one measurement (e.g. a latency in ms) for the summary at the end."""
    FIGURES.setdefault(name, []).append(value)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("figures measured by the live tests")
    summary = {}
    for name, values in sorted(FIGURES.items()):
        summary[name] = {"n": len(values), "median": round(statistics.median(values), 2),
                         "worst": round(max(values), 2)}
        terminalreporter.write_line(
            f"{name}: n={len(values)} median={summary[name]['median']} "
            f"worst={summary[name]['worst']}")
    FIGURES_FILE.parent.mkdir(exist_ok=True)
    FIGURES_FILE.write_text(json.dumps(summary, indent=2) + "\n")


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider().start()
    try:
        yield provider
    finally:
        provider.stop()
