"""Shared fixtures: the fake provider, figures measured by the live tests, and the markers.

``live``: starts a real server (gunicorn); every test under tests/live/ has it.
``make unit`` deselects them. ``redis``: needs the Redis at ``TEST_REDIS_URL``;
skipped, with the reason, when none answers, failed instead under
``REQUIRE_REDIS=1`` (``make test``): see ``tests/redis_server.py``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import redis_server
from tests.fake_provider import FakeProvider

LIVE = Path(__file__).resolve().parent / "live"

FIGURES: dict[str, list[float]] = {}
FIGURES_FILE = Path(__file__).resolve().parents[1] / "build" / "test-figures.json"


def record(name: str, value: float) -> None:
    """Keep one measurement (e.g. a latency in ms) for the summary at the end."""
    FIGURES.setdefault(name, []).append(value)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(LIVE):
            item.add_marker(pytest.mark.live)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or, under REQUIRE_REDIS=1, fail) a ``redis`` test before its fixtures run."""
    if item.get_closest_marker("redis") is None:
        return
    problem = redis_server.unreachable()
    if problem is None:
        return
    if redis_server.REQUIRED:
        pytest.fail(f"REQUIRE_REDIS=1 and {problem}", pytrace=False)
    pytest.skip(f"{problem}; `make test` runs these (REQUIRE_REDIS=1)")


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
