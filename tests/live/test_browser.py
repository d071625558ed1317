"""The demo page in a real headless Chromium, against the real gunicorn and the fake provider.

Debian's ``chromium`` (installed by ``ensure_chromium`` when missing) is driven by
Playwright for Python; no browser is ever downloaded. The resume tests put a small
TCP proxy between the page and the gateway and cut its connections mid-answer. The
page streams over SSE by default, and over one WebSocket (``GET /v1/ws``) for every
answer of the page with ``?transport=websocket``: the last tests run it that way.
Screenshots land in ``build/screenshots/``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, WebSocket

from tests.fake_provider import FakeProvider
from tests.live.browser import SHOTS, watched_page
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer
from tests.live.proxy import CuttableProxy

RETRY_MS = 300  # the gateway's `retry:`, so the resume test waits little

# Multi-byte characters, emoji (with a skin tone and a ZWJ family), CJK, newlines, a tab,
# a CRLF, HTML that must stay text, and JSON-looking text.
TOKENS = ["Hello", ", wörld", " 👋🏽", "\n", "日本語の", "テキスト", " — ", "👨‍👩‍👧", "\n\n",
          "<b>not bold</b>", " &amp;", "\tx", "\r\n", '{"content": 1}', " ça", " va", " ?",
          " naïve", " Ω≈ç√", " 🎉🎉", "\n", "end", "."]
LONG = [f"word{i} " for i in range(300)]


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models(fake: FakeProvider) -> dict[str, str]:
    """One fake model per test, made before the server starts so that MODELS can list them."""
    return {
        "stream": fake.scenario(tokens=TOKENS, delay=0.1, ttft=0.2),
        "stop": fake.scenario(tokens=LONG, delay=0.05),
        "resume": fake.scenario(tokens=TOKENS * 2, delay=0.08),
        "error": fake.scenario(status=400),
        "followup": fake.scenario(tokens=["Sure", "."]),
        "ws_stream": fake.scenario(tokens=TOKENS, delay=0.05, ttft=0.1),
        "ws_followup": fake.scenario(tokens=["Again", " over", " the", " socket", "."]),
        "ws_stop": fake.scenario(tokens=LONG, delay=0.05),
        "ws_resume": fake.scenario(tokens=TOKENS * 2, delay=0.08),
    }


@pytest.fixture(scope="module")
def server(fake: FakeProvider, models: dict[str, str]) -> Iterator[GatewayServer]:
    env = gateway_env(fake, RESUME_GRACE_S="30", RETRY_MS=str(RETRY_MS), MODELS=",".join([
        "demo/echo", "demo/lorem", *(f"openai/{m}" for m in models.values()),
        "anthropic/claude-sonnet-4-5", "openai/*"]))
    # No Anthropic key: its model must be listed as unavailable (a disabled option).
    env.pop("ANTHROPIC_API_KEY")
    env.pop("ANTHROPIC_BASE_URL")
    gateway = GatewayServer(env, label="browser")
    try:
        yield gateway.start()
    finally:
        gateway.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with watched_page(browser, viewport={"width": 1100, "height": 760}) as opened:
        yield opened


def open_page(page: Page, url: str) -> None:
    page.goto(url + "/")
    page.wait_for_selector('[data-testid="app"][data-ready="true"]')


def ask(page: Page, model: str, prompt: str) -> None:
    page.select_option('[data-testid="model-select"]', value=model)
    page.fill('[data-testid="prompt"]', prompt)
    page.click('[data-testid="send"]')


def answer_text(page: Page) -> str:
    text = page.evaluate("""() => {
        const all = document.querySelectorAll('[data-testid="message"][data-role="assistant"]');
        return all.length ? all[all.length - 1].querySelector('[data-testid="message-text"]')
            .textContent : null;
    }""")
    assert text is not None, "no assistant message on the page"
    return str(text)


def wait_state(page: Page, state: str, timeout: float = 15_000) -> None:
    page.wait_for_selector(f'[data-testid="status"][data-state="{state}"]', timeout=timeout)


def wait_answer_length(page: Page, n: int) -> None:
    page.wait_for_function("""(n) => {
        const all = document.querySelectorAll('[data-testid="message"][data-role="assistant"]');
        return all.length && all[all.length - 1].querySelector('[data-testid="message-text"]')
            .textContent.length >= n;
    }""", arg=n)


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def shown(page: Page, name: str) -> str:
    return str(page.get_by_test_id(name).text_content() or "")


# ------------------------------------------------------------------------------- tests


def test_model_picker_lists_the_models(page: Page, server: GatewayServer,
                                       models: dict[str, str]) -> None:
    open_page(page, server.url)
    options = page.eval_on_selector_all(
        '[data-testid="model-select"] option',
        "nodes => nodes.map(o => ({value: o.value, disabled: o.disabled}))")
    listed = server.request("GET", "/v1/models").json()["data"]
    expected = [{"value": m["id"], "disabled": m.get("available") is False} for m in listed]
    assert options[:-1] == expected
    assert options[-1] == {"value": "__custom__", "disabled": False}  # "Other model..."
    assert {"value": "anthropic/claude-sonnet-4-5", "disabled": True} in options
    assert {"value": f"openai/{models['stream']}", "disabled": False} in options
    assert page.get_by_test_id("model-select").input_value() == "demo/echo"
    assert page.get_by_label("Model", exact=True).count() == 1  # the select has its label
    assert page.get_by_label("Message").count() == 1


def test_tokens_stream_in_and_the_text_is_exact(page: Page, server: GatewayServer,
                                                fake: FakeProvider, models: dict[str, str]) -> None:
    open_page(page, server.url)
    ask(page, f"openai/{models['stream']}", "Say hello in many scripts")
    wait_answer_length(page, 1)
    samples = []
    shot_taken = False
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        state = page.get_by_test_id("status").get_attribute("data-state")
        samples.append(answer_text(page))
        if state == "done":
            break
        if not shot_taken and len(samples[-1]) > 30:
            shot(page, "mid-stream")
            shot_taken = True
        time.sleep(0.07)
    wait_state(page, "done")
    final = answer_text(page)
    expected = "".join(TOKENS)
    assert final == expected
    # It grew over time, never all at once, and always as a prefix of the answer.
    lengths = [len(s) for s in samples]
    assert all(expected.startswith(s) for s in samples)
    assert lengths == sorted(lengths)
    assert len(set(lengths)) >= 8, lengths
    assert 0 < lengths[0] < len(expected) // 2, lengths
    # Rendered as text: the tag in a token is not an element.
    assert page.locator('[data-testid="message-text"] b').count() == 0
    # The live figures match the gateway's record of the stream.
    stream_id = shown(page, "stream-id")
    status = server.request("GET", f"/v1/streams/{stream_id}").json()
    assert status["status"] == "done"
    assert shown(page, "metric-event-id") == str(status["last_event_id"])
    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", shown(page, "metric-ttft"))
    assert re.fullmatch(r"\d+\.\d", shown(page, "metric-tps"))
    # Token events: ids 1 .. last-1 (0 is start, the last is done).
    assert int(shown(page, "metric-tokens")) == status["last_event_id"] - 1
    assert page.get_by_test_id("message-state").last.text_content() == "done"
    # The conversation goes on: the next request carries both turns.
    assert fake.wait_closed(models["stream"]).outcome == "complete"
    shot(page, "done")
    ask(page, f"openai/{models['followup']}", "And again?")
    wait_state(page, "done")
    assert fake.calls(models["stream"])[0].body["messages"] == [
        {"role": "user", "content": "Say hello in many scripts"}]
    assert fake.calls(models["followup"])[0].body["messages"] == [
        {"role": "user", "content": "Say hello in many scripts"},
        {"role": "assistant", "content": expected},
        {"role": "user", "content": "And again?"}]
    assert page.locator('[data-testid="message"]').count() == 4


def test_stop_cancels_the_stream_and_closes_the_provider(
        page: Page, server: GatewayServer, fake: FakeProvider, models: dict[str, str]) -> None:
    model = models["stop"]
    open_page(page, server.url)
    ask(page, f"openai/{model}", "Talk for a long time")
    wait_answer_length(page, 40)
    assert page.get_by_test_id("send").is_hidden()
    page.click('[data-testid="stop"]')
    call = fake.wait_closed(model)
    assert call.outcome == "peer_closed"
    assert call.tokens_sent < len(LONG)
    # The status bar says "cancelled" (stopping…) as soon as Stop is clicked; the message
    # turns "stopped" only when the gateway's `cancelled` event (or the wait for it) ends.
    page.wait_for_selector('[data-testid="message"][data-role="assistant"][data-state="cancelled"]')
    wait_state(page, "cancelled")
    assert page.get_by_test_id("message-state").last.text_content() == "stopped"
    assert "deleted" in str(page.get_by_test_id("message-note").last.text_content())
    text = answer_text(page)
    assert text and "".join(LONG).startswith(text)
    stream_id = shown(page, "stream-id")
    assert server.request("GET", f"/v1/streams/{stream_id}").json()["status"] == "cancelled"
    assert page.get_by_test_id("send").is_visible()
    shot(page, "cancelled")


def test_a_cut_connection_resumes_without_losing_or_repeating_a_token(
        page: Page, server: GatewayServer, fake: FakeProvider, models: dict[str, str]) -> None:
    model = models["resume"]
    expected = "".join(TOKENS * 2)
    proxy = CuttableProxy(server.port)
    try:
        open_page(page, proxy.url)
        ask(page, f"openai/{model}", "Stream through a flaky network")
        wait_answer_length(page, 25)
        assert proxy.cut(hold=True) >= 1
        wait_state(page, "reconnecting", timeout=5_000)  # and it stays so while held
        shot(page, "reconnecting")
        partial = answer_text(page)
        assert 0 < len(partial) < len(expected) and expected.startswith(partial)
        proxy.release()
        wait_state(page, "done")
        assert page.get_by_test_id("app").get_attribute("data-reconnected") == "true"
        assert answer_text(page) == expected
        assert fake.wait_closed(model).outcome == "complete"  # generation went on meanwhile
        resumes = [(path, headers) for method, path, headers in proxy.requests()
                   if method == "GET" and path.endswith("/events")]
        assert resumes, proxy.requests()
        stream_id = shown(page, "stream-id")
        path, headers = resumes[0]
        assert path == f"/v1/streams/{stream_id}/events"
        assert int(headers["last-event-id"]) >= 1
    finally:
        proxy.close()


def test_an_error_event_and_an_error_answer_are_shown(
        page: Page, server: GatewayServer, models: dict[str, str]) -> None:
    open_page(page, server.url)
    ask(page, f"openai/{models['error']}", "This one fails")
    wait_state(page, "error")
    note = str(page.get_by_test_id("message-note").last.text_content())
    assert note.startswith("upstream_bad_request:"), note
    assert page.get_by_test_id("message-state").last.text_content() == "error"
    assert answer_text(page) == ""
    shot(page, "error")
    # An HTTP error (400 unknown_model) from a custom model name is shown the same way.
    page.select_option('[data-testid="model-select"]', value="__custom__")
    page.fill('[data-testid="model-custom"]', "nowhere/model")
    page.fill('[data-testid="prompt"]', "and this one is refused")
    page.keyboard.press("Enter")
    page.wait_for_function("""() => document.querySelectorAll(
        '[data-testid="message"][data-role="assistant"][data-state="error"]').length === 2""")
    note = str(page.get_by_test_id("message-note").last.text_content())
    assert note.startswith("unknown_model:"), note
    assert shown(page, "status-label") == "Error"


# ------------------------------------------------------------------------------- WebSocket


class Sockets:
    """The page's WebSockets and the JSON frames each sent and received (Playwright's view
    of the browser's own connections)."""

    def __init__(self, page: Page) -> None:
        self.opened: list[WebSocket] = []
        self.sent: list[list[dict[str, Any]]] = []
        self.received: list[list[dict[str, Any]]] = []
        page.on("websocket", self._opened)

    def _opened(self, ws: WebSocket) -> None:
        sent: list[dict[str, Any]] = []
        received: list[dict[str, Any]] = []
        self.opened.append(ws)
        self.sent.append(sent)
        self.received.append(received)
        ws.on("framesent", lambda payload: sent.append(json.loads(payload)))
        ws.on("framereceived", lambda payload: received.append(json.loads(payload)))

    def frames_sent(self, kind: str) -> list[dict[str, Any]]:
        return [f for frames in self.sent for f in frames if f.get("type") == kind]


def open_ws_page(page: Page, url: str) -> tuple[Sockets, list[str]]:
    """The demo page on its WebSocket transport; what it sends over HTTP is recorded too."""
    sockets = Sockets(page)
    http: list[str] = []
    page.on("request", lambda r: http.append(f"{r.method} {r.url.split('/', 3)[-1]}"))
    page.goto(url + "/?transport=websocket")
    page.wait_for_selector('[data-testid="app"][data-ready="true"][data-transport="websocket"]')
    assert page.get_by_test_id("transport-select").input_value() == "websocket"
    return sockets, http


def test_websocket_answers_stream_to_the_end_on_one_socket(
        page: Page, server: GatewayServer, fake: FakeProvider, models: dict[str, str]) -> None:
    sockets, http = open_ws_page(page, server.url)
    started = time.monotonic()
    ask(page, f"openai/{models['ws_stream']}", "Say hello over a socket")
    wait_answer_length(page, 1)
    first = answer_text(page)
    wait_state(page, "done")
    expected = "".join(TOKENS)
    assert answer_text(page) == expected
    assert 0 < len(first) < len(expected)  # it streamed in, not all at the end
    assert shown(page, "metric-transport") == "WebSocket"
    stream_id = shown(page, "stream-id")
    status = server.request("GET", f"/v1/streams/{stream_id}").json()
    assert status["status"] == "done"
    assert shown(page, "metric-event-id") == str(status["last_event_id"])
    assert int(shown(page, "metric-tokens")) == status["last_event_id"] - 1
    # The next turn goes over the same socket, with the whole conversation.
    ask(page, f"openai/{models['ws_followup']}", "And again?")
    wait_state(page, "done")
    print(f"\ntwo answers over one WebSocket in {time.monotonic() - started:.2f} s")
    assert answer_text(page) == "Again over the socket."
    assert fake.calls(models["ws_followup"])[0].body["messages"] == [
        {"role": "user", "content": "Say hello over a socket"},
        {"role": "assistant", "content": expected},
        {"role": "user", "content": "And again?"}]
    assert len(sockets.opened) == 1
    starts = sockets.frames_sent("start")
    assert [f["model"] for f in starts] == [f"openai/{models['ws_stream']}",
                                            f"openai/{models['ws_followup']}"]
    assert starts[0]["stream_id"] == stream_id
    assert [r for r in http if r.startswith("POST") or "/v1/streams" in r] == []
    # Every event came as a frame: the same ids as SSE, from 0 to the terminal event.
    ids = [f["id"] for f in sockets.received[0] if f.get("stream_id") == stream_id]
    assert ids == list(range(status["last_event_id"] + 1))
    shot(page, "websocket-done")


def test_websocket_stop_sends_a_cancel_frame_and_closes_the_provider(
        page: Page, server: GatewayServer, fake: FakeProvider, models: dict[str, str]) -> None:
    model = models["ws_stop"]
    sockets, _ = open_ws_page(page, server.url)
    ask(page, f"openai/{model}", "Talk for a long time")
    wait_answer_length(page, 40)
    page.click('[data-testid="stop"]')
    call = fake.wait_closed(model)
    assert call.outcome == "peer_closed"
    assert call.tokens_sent < len(LONG)
    page.wait_for_selector('[data-testid="message"][data-role="assistant"][data-state="cancelled"]')
    wait_state(page, "cancelled")
    assert "deleted" in str(page.get_by_test_id("message-note").last.text_content())
    text = answer_text(page)
    assert text and "".join(LONG).startswith(text)
    stream_id = shown(page, "stream-id")
    assert sockets.frames_sent("cancel") == [{"type": "cancel", "stream_id": stream_id}]
    assert server.request("GET", f"/v1/streams/{stream_id}").json()["status"] == "cancelled"
    # The gateway's own `cancelled` event ended it (not the client's wait for one).
    assert [f["event"] for f in sockets.received[0] if f.get("stream_id") == stream_id][-1] \
        == "cancelled"
    assert page.get_by_test_id("send").is_visible()


def test_websocket_dropped_resumes_without_losing_or_repeating_a_token(
        page: Page, server: GatewayServer, fake: FakeProvider, models: dict[str, str]) -> None:
    model = models["ws_resume"]
    expected = "".join(TOKENS * 2)
    proxy = CuttableProxy(server.port)
    try:
        sockets, _ = open_ws_page(page, proxy.url)
        ask(page, f"openai/{model}", "Stream through a flaky network")
        wait_answer_length(page, 25)
        assert proxy.cut(hold=True) >= 1
        cut_at = time.monotonic()
        wait_state(page, "reconnecting", timeout=5_000)  # and it stays so while held
        partial = answer_text(page)
        assert 0 < len(partial) < len(expected) and expected.startswith(partial)
        proxy.release()
        wait_state(page, "done")
        print(f"\nWebSocket cut -> answer complete in {time.monotonic() - cut_at:.2f} s")
        assert page.get_by_test_id("app").get_attribute("data-reconnected") == "true"
        assert answer_text(page) == expected
        assert fake.wait_closed(model).outcome == "complete"  # generation went on meanwhile
        assert len(fake.calls(model)) == 1  # resumed, never started again
        stream_id = shown(page, "stream-id")
        assert len(sockets.opened) == 2
        resumes = sockets.frames_sent("resume")
        assert len(resumes) == 1 and resumes[0]["stream_id"] == stream_id
        assert resumes[0]["last_event_id"] >= 1
        # Between them, the two sockets brought every event; the client showed each once.
        ids = [f["id"] for frames in sockets.received for f in frames
               if f.get("stream_id") == stream_id]
        last = server.request("GET", f"/v1/streams/{stream_id}").json()["last_event_id"]
        assert set(ids) == set(range(last + 1))
        assert int(shown(page, "metric-tokens")) == last - 1
    finally:
        proxy.close()


def test_websocket_refusals_are_shown(page: Page, server: GatewayServer) -> None:
    sockets, _ = open_ws_page(page, server.url)
    # A start the gateway refuses: its error frame, shown as an HTTP refusal is.
    page.select_option('[data-testid="model-select"]', value="__custom__")
    page.fill('[data-testid="model-custom"]', "nowhere/model")
    page.fill('[data-testid="prompt"]', "refused over the socket")
    page.keyboard.press("Enter")
    wait_state(page, "error")
    note = str(page.get_by_test_id("message-note").last.text_content())
    assert note.startswith("unknown_model:"), note
    refusals = [f for f in sockets.received[0] if f.get("type") == "error"]
    assert [f["error"]["code"] for f in refusals] == ["unknown_model"]
    assert refusals[0]["stream_id"] == sockets.frames_sent("start")[0]["stream_id"]
    assert len(sockets.opened) == 1


def test_websocket_with_an_api_key_rides_it_as_a_subprotocol(
        page: Page, fake: FakeProvider) -> None:
    """A browser's WebSocket sends no headers: the key goes as ``bearer.<key>`` beside
    ``sse-gateway``, which the gateway picks (else Chromium fails the handshake)."""
    key = "sk-browser-" + "k" * 20
    with GatewayServer(gateway_env(fake, API_KEYS=key), label="browser-keyed") as keyed:
        page.goto(keyed.url + "/?transport=websocket")
        page.wait_for_selector('[data-testid="app"][data-transport="websocket"]')
        page.fill('[data-testid="api-key"]', "sk-wrong")
        page.get_by_test_id("api-key").dispatch_event("change")
        page.select_option('[data-testid="model-select"]', value="__custom__")
        page.fill('[data-testid="model-custom"]', "demo/echo")
        page.fill('[data-testid="prompt"]', "refused")
        page.keyboard.press("Enter")
        wait_state(page, "error")  # a wrong key: 401 at the handshake, which a page cannot read
        note = str(page.get_by_test_id("message-note").last.text_content())
        assert note.startswith("network_error:"), note
        page.fill('[data-testid="api-key"]', key)
        page.get_by_test_id("api-key").dispatch_event("change")
        page.wait_for_selector('[data-testid="app"][data-busy="false"]')
        page.fill('[data-testid="prompt"]', "Hello over a keyed socket")
        page.keyboard.press("Enter")
        wait_state(page, "done")
        assert answer_text(page) == "Hello over a keyed socket"
