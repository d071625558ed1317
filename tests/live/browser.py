"""Chromium for the live tests: Debian's browser driven by Playwright for Python
(no browser is ever downloaded), and a page that fails its test on uncaught errors."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.live.gateway import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SHOTS = ROOT / "build" / "screenshots"


def ensure_chromium() -> Path:
    """Debian's chromium, installed with apt-get (as root) when missing, with emoji and
    CJK fonts so that the screenshots show the test's text (as .ci/services.sh does)."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} missing and not root: apt-get install -y chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium",
                    "fonts-noto-color-emoji", "fonts-wqy-microhei"], check=True, env=env)
    assert CHROMIUM.exists(), f"apt-get installed chromium but {CHROMIUM} is missing"
    return CHROMIUM


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium, closed (and Playwright's driver stopped) on the way out."""
    executable = ensure_chromium()
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(executable), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


@contextmanager
def watched_page(browser: Browser, *, console_errors: bool = False,
                 **context_options: Any) -> Iterator[Page]:
    """A page in a fresh context; an uncaught error in it (and, with
    ``console_errors``, a console error) fails the test when the page closes."""
    context = browser.new_context(**context_options)
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    if console_errors:
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        yield page
    finally:
        context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"
