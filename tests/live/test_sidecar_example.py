"""The sidecar example end to end: its backend (gunicorn's sync worker) + the gateway +
Chromium. The page asks the backend, reads the answer from the gateway with a
native EventSource and the stream's token, and stops the next one with DELETE."""

from __future__ import annotations

import ast
import re
import secrets
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from tests.fake_provider import Behaviour, FakeProvider
from tests.live.browser import watched_page
from tests.live.conftest import gateway_env
from tests.live.gateway import ROOT, GatewayServer
from tests.live.test_browser import TOKENS

EXAMPLE = ROOT / "examples" / "sidecar"
KEY = f"sk-sidecar-example-{secrets.token_hex(8)}"
LONG = [f"w{i} " for i in range(400)]


def system_prompt() -> str:
    """The backend's SYSTEM_PROMPT, read from its source (importing it needs its env)."""
    tree = ast.parse((EXAMPLE / "backend.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SYSTEM_PROMPT":
            value = ast.literal_eval(node.value)
            assert isinstance(value, str)
            return value
    raise AssertionError("no SYSTEM_PROMPT in backend.py")


@pytest.fixture(scope="module")
def model(fake: FakeProvider) -> str:
    """The model the backend asks for: its first answer in full, its second long
    enough to be stopped."""
    return fake.scenario_seq([Behaviour(tokens=TOKENS, delay=0.03, ttft=0.2),
                              Behaviour(tokens=LONG, delay=0.05)])


@pytest.fixture(scope="module")
def servers(fake: FakeProvider, model: str) -> Iterator[tuple[GatewayServer, GatewayServer]]:
    backend = GatewayServer({"GATEWAY_API_KEY": KEY, "SIDECAR_MODEL": f"openai/{model}"},
                            app="backend:app", config=None, cwd=EXAMPLE, ready_path="/",
                            args=("-k", "sync", "-w", "2", "--access-logfile", "-"),
                            label="sidecar-backend").bind()
    # The browser reads the gateway from the backend's page: another origin.
    gateway = GatewayServer(gateway_env(fake, API_KEYS=KEY, CORS_ORIGINS=backend.url,
                                        ACCESS_LOG="-"), label="gateway")
    try:
        gateway.start()
        backend.env["GATEWAY_URL"] = gateway.url
        backend.start()
        yield backend, gateway
    finally:
        backend.stop()
        gateway.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with watched_page(browser, console_errors=True) as opened:
        yield opened


def ask(page: Page, text: str) -> dict[str, str]:
    """Send ``text``; the backend's answer to the page (its stream and token)."""
    page.fill('[data-testid="text"]', text)
    with page.expect_response(lambda r: r.url.endswith("/chat")) as chat:
        page.click('[data-testid="send"]')
    assert chat.value.status == 200
    handed: dict[str, str] = chat.value.json()
    return handed


def wait_state(page: Page, state: str) -> None:
    page.wait_for_selector(f'[data-testid="status"][data-state="{state}"]')


def answer(page: Page) -> str:
    return str(page.get_by_test_id("answer").text_content())


def event_gets(gateway: GatewayServer, stream_id: str) -> list[str]:
    """The statuses of the GETs of the stream's events the gateway served."""
    path = re.escape(f"/v1/streams/{stream_id}/events")
    return re.findall(r'"GET ' + path + r'\?token=\[redacted\] HTTP/1\.1" (\d{3}) ',
                      gateway.log())


def test_the_example_streams_and_stops(servers: tuple[GatewayServer, GatewayServer],
                                       fake: FakeProvider, model: str, page: Page) -> None:
    backend, gateway = servers
    page.goto(backend.url + "/")

    # Ask: the backend composed the prompt, the browser read the answer from the gateway.
    handed = ask(page, "How do I reset my password? ✨")
    assert set(handed) == {"stream_id", "token", "events_url", "status_url"}
    assert handed["events_url"] == f"{gateway.url}/v1/streams/{handed['stream_id']}/events"
    wait_state(page, "done")
    assert answer(page) == "".join(TOKENS)
    assert fake.calls(model)[0].body["messages"] == [
        {"role": "system", "content": system_prompt()},
        {"role": "user", "content": "How do I reset my password? ✨"}]
    assert fake.wait_closed(model).outcome == "complete"
    # One GET of the events, with the token: the page closed its EventSource at `done`.
    deadline = time.monotonic() + 10
    while not event_gets(gateway, handed["stream_id"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert event_gets(gateway, handed["stream_id"]) == ["200"]

    # Ask again and stop: the provider's connection is closed.
    second = ask(page, "Tell me everything")
    page.wait_for_function("() => document.querySelector('[data-testid=\"answer\"]')"
                           ".textContent.length >= 20")
    page.click('[data-testid="stop"]')
    call = fake.wait_closed(model, index=1)
    assert call.outcome == "peer_closed"
    assert call.tokens_sent < len(LONG)
    wait_state(page, "cancelled")
    assert page.get_by_test_id("status").text_content() == "Stopped (deleted)"
    stopped = answer(page)
    assert stopped and "".join(LONG).startswith(stopped)
    status = gateway.request("GET", f"/v1/streams/{second['stream_id']}",
                             headers={"Authorization": f"Bearer {KEY}"}).json()
    assert status["status"] == "cancelled"
    assert page.get_by_test_id("send").is_visible()

    # The backend ran gunicorn's sync worker, and held its request for milliseconds only.
    backend_log = backend.log()
    assert "Using worker: sync" in backend_log
    assert backend_log.count('"POST /chat HTTP/1.1" 200') == 2
    # Neither side logged a token or the key.
    gateway_log = gateway.log()
    for secret in (handed["token"], second["token"], KEY):
        assert secret not in gateway_log and secret not in backend_log
    assert re.search(r'"DELETE /v1/streams/' + re.escape(second["stream_id"])
                     + r' HTTP/1\.1" 202 ', gateway_log)
