"""The README's client snippets ("Clients"), run as written against a real gateway:
Chromium's native ``EventSource`` and our ``sse-client.js`` module (over SSE and over a
WebSocket), ``httpx-sse``, ``websockets`` and the official ``openai`` SDK. Only the
gateway's address is put in (the snippets name ``http://127.0.0.1:8000`` or a same-origin
path). The ``useChat`` snippet is an excerpt
of the React example, which tests/live/test_react_example.py runs in Chromium."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from tests.fake_provider import FakeProvider
from tests.live.browser import watched_page
from tests.live.conftest import gateway_env
from tests.live.gateway import ROOT, GatewayServer

README = (ROOT / "README.md").read_text()


def snippet(name: str) -> str:
    """The code block that follows ``<!-- snippet: name -->`` in the README."""
    found = re.search(rf"<!-- snippet: {re.escape(name)} -->\n```\w+\n(.*?)```", README, re.S)
    assert found, f"no snippet {name!r} in the README"
    return found.group(1)


@pytest.fixture(scope="module")
def server(fake: FakeProvider) -> Iterator[GatewayServer]:
    gateway = GatewayServer(gateway_env(fake, RETRY_MS="300"), label="readme-clients")
    try:
        yield gateway.start()
    finally:
        gateway.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with watched_page(browser) as opened:
        yield opened


def detached(server: GatewayServer, model: str, prompt: str) -> dict[str, Any]:
    reply = server.request("POST", "/v1/streams", {"model": model, "prompt": prompt,
                                                   "detach": True, "resume_grace_s": 30})
    assert reply.status == 201, reply.body
    created: dict[str, Any] = reply.json()
    return created


def run_eventsource(page: Page, server: GatewayServer, created: dict[str, Any]) -> Any:
    page.goto(server.url + "/healthz")
    page.evaluate("""([streamId, token, code]) => {
        const output = window.output = {text: "", append(t) { this.text += t; }};
        const errors = window.errors = [];
        const showError = (e) => errors.push(e);
        window.es = new Function("streamId", "token", "output", "showError",
                                 code + "\\nreturn es;")(streamId, token, output, showError);
    }""", [created["stream_id"], created["token"], snippet("eventsource")])
    page.wait_for_function("() => window.es.readyState === EventSource.CLOSED")
    return page.evaluate("() => ({text: window.output.text, errors: window.errors})")


def test_the_eventsource_snippet_shows_the_answer(page: Page, server: GatewayServer) -> None:
    created = detached(server, "demo/echo", "Hello from a native EventSource")
    assert run_eventsource(page, server, created) == {
        "text": "Hello from a native EventSource", "errors": []}


def test_the_eventsource_snippet_shows_the_streams_error(page: Page, server: GatewayServer,
                                                         fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["par", "tial"], error_event_after=1)
    created = detached(server, f"openai/{model}", "hi")
    seen = run_eventsource(page, server, created)
    assert seen["text"] == "par"
    assert [e["code"] for e in seen["errors"]] == ["upstream_unavailable"]


def test_the_httpx_sse_snippet_prints_the_answer(server: GatewayServer) -> None:
    assert run_python(server, "httpx-sse") == "Hello, streaming world"


def run_python(server: GatewayServer, name: str) -> str:
    code = snippet(name)
    assert "http://127.0.0.1:8000" in code
    done = subprocess.run([sys.executable, "-c", code.replace("http://127.0.0.1:8000",
                                                              server.url)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_websockets_snippet_prints_both_answers(server: GatewayServer) -> None:
    code = snippet("websockets-python")
    done = subprocess.run([sys.executable, "-c", code.replace("ws://127.0.0.1:8000",
                                                              server.url.replace("http", "ws"))],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello socket\n"


def test_the_openai_sdk_snippet_prints_the_answer(server: GatewayServer) -> None:
    assert run_python(server, "openai-python") == "Hello from the OpenAI SDK"


def test_the_sse_client_snippet_streams_and_finishes(page: Page,
                                                     server: GatewayServer) -> None:
    """Our module, as the README imports it (same origin), on an open gateway (which
    takes the snippet's placeholder key as no key)."""
    page.goto(server.url + "/healthz")
    page.evaluate("""() => {
        window.output = {text: "", append(t) { this.text += t; }};
        window.showReconnecting = () => {};
        window.stopButton = {};
    }""")
    page.add_script_tag(type="module", content=snippet("sse-client")
                        + "\nwindow.__result = {status: result.status, text: result.text};")
    page.wait_for_function("() => window.__result !== undefined")
    assert page.evaluate("() => [window.__result, window.output.text]") == [
        {"status": "done", "text": "Hello"}, "Hello"]


def test_the_websocket_mode_snippet_streams_on_one_socket(page: Page,
                                                          server: GatewayServer) -> None:
    page.goto(server.url + "/healthz")
    page.evaluate("""() => {
        window.output = {text: "", append(t) { this.text += t; }};
        window.stopButton = {};
        window.__sockets = 0;
        const Native = window.WebSocket;
        window.WebSocket = class extends Native {
            constructor(...args) { super(...args); window.__sockets += 1; }
        };
    }""")
    page.add_script_tag(type="module", content=snippet("sse-client-websocket")
                        + "\nconst other = await two.finished;"
                        + "\nwindow.__result = [result.status, result.text, other.text];")
    page.wait_for_function("() => window.__result !== undefined")
    assert page.evaluate("() => [window.__result, window.output.text, window.__sockets]") == [
        ["done", "One", "Two"], "One", 1]


def test_the_usechat_snippet_is_the_example_s_own_code() -> None:
    example = (ROOT / "examples" / "react" / "src" / "ai-sdk.jsx").read_text()
    assert snippet("usechat") in example
