"""Live fixtures: a real gunicorn with the gevent worker, wired to the fake provider."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser

from tests.fake_provider import FakeProvider
from tests.live.gateway import OPEN_STREAMS, GatewayServer
from tests.test_broker import REDIS_URL

HEARTBEAT_S = 0.5


def gateway_env(fake: FakeProvider, **extra: str) -> dict[str, str]:
    env = {
        "OPENAI_API_KEY": "sk-test-openai",
        "OPENAI_BASE_URL": f"{fake.url}/v1",
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "ANTHROPIC_BASE_URL": fake.url,
        "MODELS": "demo/echo,demo/lorem,openai/*,anthropic/*",
        "HEARTBEAT_S": str(HEARTBEAT_S),
        "DEMO_TTFT_S": "0.05",
        "DEMO_TOKEN_DELAY_S": "0.01",
        # The suite makes many streams from one address; the limit tests set their own.
        "RATELIMIT_CREATE": "", "RATELIMIT_EVENTS": "", "RATELIMIT_STATUS": "",
        "RATELIMIT_CANCEL": "", "RATELIMIT_MODELS": "", "RATELIMIT_AUTH_FAILURES": "",
        "MAX_STREAMS_PER_KEY": "200", "MAX_READERS_PER_KEY": "400",
        "RETRY_BASE_DELAY_S": "0.01", "RETRY_MAX_DELAY_S": "0.05",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="session", params=["memory", "redis"])
def gateway(fake: FakeProvider, request: pytest.FixtureRequest) -> Iterator[GatewayServer]:
    """One worker on each broker: every test using it runs against both."""
    extra = {"REDIS_URL": REDIS_URL} if request.param == "redis" else {}
    server = GatewayServer(gateway_env(fake, **extra), label=request.param)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium (Debian's, driven by Playwright), one per test module."""
    from tests.live.browser import chromium

    with chromium() as launched:
        yield launched


@pytest.fixture(autouse=True)
def _close_streams() -> Iterator[None]:
    yield
    while OPEN_STREAMS:
        OPEN_STREAMS.pop().close()
