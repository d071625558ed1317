"""The React example (examples/react) in a real headless Chromium: its Vite build served
by ``vite preview``, which proxies ``/v1`` to a real gunicorn wired to the fake provider.

Both pages get the same tests: ``sse-client`` (the gateway's own browser client against
``POST /v1/streams``) and ``ai-sdk`` (the AI SDK 5's ``useChat`` against the gateway's
AI SDK dialect, ``POST /v1/ai-sdk/chat``). Checked: the text streams in and is exact,
reasoning (collapsible) and a tool call (name, input, state) show, Stop closes the
provider's connection, and a reload mid-answer resumes the same stream: the whole text
once, from one provider request.

The example is installed (``npm ci``, only when its lock file changed) and built
(``vite build``) once per session by ``tests/live/vite.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from tests.fake_provider import FakeProvider
from tests.live.browser import SHOTS, watched_page
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer
from tests.live.test_browser import TOKENS
from tests.live.vite import Preview, build

PAGES = ["sse-client", "ai-sdk"]
LONG = [f"word{i} " for i in range(300)]
RESUMED = TOKENS * 3
ECHO = 'Hello, wörld 👋🏽 日本語の テキスト\n<b>not bold</b> {"content": 1} — ça va ?'
THOUGHT = "The user wants the time; I will call get_time."

# Records, in the page, each new value of the last answer's text (every mutation that
# changed it): the test reads how the text grew without sampling it on a timer.
RECORDER = """
window.__texts = [];
new MutationObserver(() => {
  const all = document.querySelectorAll('[data-testid="message"][data-role="assistant"]');
  const last = all.length ? all[all.length - 1] : null;
  const text = last ? [...last.querySelectorAll('[data-testid="text"]')]
    .map((e) => e.textContent).join("") : null;
  if (text !== null && text !== window.__texts.at(-1)) window.__texts.push(text);
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def dist() -> None:
    build()


@pytest.fixture(scope="module")
def models(fake: FakeProvider) -> dict[str, str]:
    """A fake model per page and test (each test waits for its model's one request)."""
    made = {}
    for name in PAGES:
        made[f"{name}-stop"] = fake.scenario(tokens=LONG, delay=0.05)
        made[f"{name}-resume"] = fake.scenario(tokens=RESUMED, delay=0.06)
        made[f"{name}-cors-stop"] = fake.scenario(tokens=LONG, delay=0.05)
    return made


@pytest.fixture(scope="module")
def server(fake: FakeProvider, models: dict[str, str]) -> Iterator[GatewayServer]:
    # A disconnect alone (a reload, useChat's stop()) leaves the stream running for a
    # minute: only the DELETE that Stop sends closes the provider request in time.
    env = gateway_env(fake, DEMO_TOKEN_DELAY_S="0.02", RESUME_GRACE_S="60", MODELS=",".join([
        "demo/echo", "demo/tools", *(f"openai/{m}" for m in models.values())]))
    gateway = GatewayServer(env, label="react-example")
    try:
        yield gateway.start()
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def preview(dist: None, server: GatewayServer) -> Iterator[Preview]:
    served = Preview(server.url).start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def cross_origin(dist: None, fake: FakeProvider, models: dict[str, str]
                 ) -> Iterator[tuple[Preview, GatewayServer]]:
    """The other way to reach the gateway: a build whose pages call it on its own origin
    (VITE_GATEWAY_URL), served with no proxy, and the gateway's CORS_ORIGINS naming the
    pages' origin."""
    env = gateway_env(fake, RESUME_GRACE_S="60", MODELS=",".join([
        "demo/echo", *(f"openai/{m}" for m in models.values())]))
    gateway = GatewayServer(env, label="react-example-cors").bind()
    build("dist-cors", gateway_url=gateway.url)
    served = Preview("http://127.0.0.1:9", out="dist-cors").start()  # a proxy nobody uses
    try:
        gateway.env["CORS_ORIGINS"] = served.url
        gateway.start()
        yield served, gateway
    finally:
        served.stop()
        gateway.stop()


@pytest.fixture(params=PAGES)
def name(request: pytest.FixtureRequest) -> str:
    """The page under test: examples/react/<name>.html."""
    page_name: str = request.param
    return page_name


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with watched_page(browser, viewport={"width": 900, "height": 760}) as opened:
        opened.add_init_script(RECORDER)
        yield opened


# ------------------------------------------------------------------------------- helpers


def open_page(page: Page, preview: Preview, name: str) -> None:
    page.goto(f"{preview.url}/{name}.html")
    page.wait_for_selector('[data-testid="app"][data-ready="true"]')


def ask(page: Page, model: str, prompt: str) -> None:
    page.select_option('[data-testid="model-select"]', value=model)
    page.fill('[data-testid="prompt"]', prompt)
    page.click('[data-testid="send"]')


def answer(page: Page) -> str | None:
    text: Any = page.evaluate("""() => {
        const all = document.querySelectorAll('[data-testid="message"][data-role="assistant"]');
        return all.length ? [...all[all.length - 1].querySelectorAll('[data-testid="text"]')]
            .map((e) => e.textContent).join("") : null;
    }""")
    return text


def wait_answer(page: Page, expected: str) -> None:
    """Until the last answer's text is ``expected`` and the chat is idle again."""
    page.wait_for_function("""(expected) => {
        const all = document.querySelectorAll('[data-testid="message"][data-role="assistant"]');
        const last = all[all.length - 1];
        const text = last ? [...last.querySelectorAll('[data-testid="text"]')]
            .map((e) => e.textContent).join("") : null;
        return text === expected
            && document.querySelector('[data-testid="app"]').dataset.status === "ready";
    }""", arg=expected)


def wait_answer_length(page: Page, n: int) -> None:
    page.wait_for_function("(n) => window.__texts.length && window.__texts.at(-1).length >= n",
                           arg=n)


def roles(page: Page) -> list[str]:
    found: list[str] = page.eval_on_selector_all('[data-testid="message"]',
                                                  "nodes => nodes.map(n => n.dataset.role)")
    return found


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"react-{name}.png"))


def assert_grew(texts: list[str], expected: str) -> None:
    """The text grew over several renders, each a prefix of the answer."""
    assert texts[-1] == expected
    assert all(expected.startswith(t) for t in texts), texts
    assert len(texts) >= 4, texts


# ------------------------------------------------------------------------------- tests


def test_the_text_streams_in_and_is_exact(page: Page, preview: Preview, name: str) -> None:
    open_page(page, preview, name)
    ask(page, "demo/echo", ECHO)
    wait_answer(page, ECHO)
    assert_grew(page.evaluate("window.__texts"), ECHO)
    assert roles(page) == ["user", "assistant"]
    assert page.get_by_test_id("text").first.text_content() == ECHO  # the user's message
    assert page.locator('[data-testid="text"] b').count() == 0  # text, not HTML
    # The conversation goes on: the second answer echoes the second question.
    ask(page, "demo/echo", "And again?")
    wait_answer(page, "And again?")
    assert roles(page) == ["user", "assistant", "user", "assistant"]
    shot(page, f"{name}-text")


def test_reasoning_and_a_tool_call_show(page: Page, preview: Preview, name: str) -> None:
    open_page(page, preview, name)
    ask(page, "demo/tools", "What time is it?")
    page.wait_for_selector('[data-testid="tool"][data-state="input-available"]')
    page.wait_for_selector('[data-testid="app"][data-status="ready"]')
    reasoning = page.get_by_test_id("reasoning")
    assert reasoning.count() == 1
    assert not reasoning.get_attribute("open")  # collapsed: its summary opens it
    assert not page.get_by_test_id("reasoning-text").is_visible()
    page.click('[data-testid="reasoning"] summary')
    assert page.get_by_test_id("reasoning-text").is_visible()
    assert page.get_by_test_id("reasoning-text").text_content() == THOUGHT
    assert page.get_by_test_id("tool-name").text_content() == "get_time"
    assert page.get_by_test_id("tool-input").text_content() == '{"timezone":"UTC"}'
    assert page.get_by_test_id("tool-state").text_content() == "input-available"
    assert answer(page) == ""  # a tool call, no text
    shot(page, f"{name}-tools")


def test_stop_closes_the_provider_request(page: Page, preview: Preview, server: GatewayServer,
                                          fake: FakeProvider, models: dict[str, str],
                                          name: str) -> None:
    model = models[f"{name}-stop"]
    open_page(page, preview, name)
    ask(page, f"openai/{model}", "Talk for a long time")
    wait_answer_length(page, 40)
    page.click('[data-testid="stop"]')
    call = fake.wait_closed(model)
    assert call.outcome == "peer_closed"
    assert call.tokens_sent < len(LONG)
    page.wait_for_selector('[data-testid="app"][data-status="ready"]')
    assert page.get_by_test_id("send").is_visible()
    text = answer(page)
    assert text and len(text) >= 40 and "".join(LONG).startswith(text)
    assert roles(page) == ["user", "assistant"]
    assert len(fake.calls(model)) == 1
    if name == "sse-client":
        stream_id = page.get_by_test_id("stream-id").text_content()
        status = server.request("GET", f"/v1/streams/{stream_id}").json()["status"]
        assert status == "cancelled"
    else:
        chat_id = page.get_by_test_id("chat-id").text_content()
        assert server.request("GET", f"/v1/ai-sdk/chat/{chat_id}/stream").status == 204
    shot(page, f"{name}-stopped")


def test_a_reload_mid_answer_resumes_it(page: Page, preview: Preview, fake: FakeProvider,
                                        models: dict[str, str], name: str) -> None:
    model = models[f"{name}-resume"]
    expected = "".join(RESUMED)
    open_page(page, preview, name)
    ask(page, f"openai/{model}", "Keep streaming across a reload")
    wait_answer_length(page, 10)
    url = page.url
    page.reload()
    assert page.url == url  # the chat id is in it
    page.wait_for_selector('[data-testid="app"][data-ready="true"]')
    wait_answer_length(page, 1)
    assert fake.calls(model)[0].outcome is None  # resumed while the provider still streams
    wait_answer(page, expected)
    # The answer was rebuilt from the stream's start, live, once: never anything but a
    # prefix of the answer, and no second assistant message.
    assert_grew(page.evaluate("window.__texts"), expected)
    assert roles(page) == ["user", "assistant"]
    assert page.get_by_test_id("text").first.text_content() == "Keep streaming across a reload"
    assert fake.wait_closed(model).outcome == "complete"
    assert len(fake.calls(model)) == 1  # one provider request
    shot(page, f"{name}-resumed")


def test_across_origins_with_cors(page: Page, cross_origin: tuple[Preview, GatewayServer],
                                  fake: FakeProvider, models: dict[str, str], name: str) -> None:
    """Built with VITE_GATEWAY_URL, the pages call the gateway directly: its CORS answers
    the preflights of the POST (JSON) and of Stop's DELETE, and exposes what they read."""
    served, gateway = cross_origin
    requests: list[str] = []
    page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
    open_page(page, served, name)
    ask(page, "demo/echo", ECHO)
    wait_answer(page, ECHO)
    model = models[f"{name}-cors-stop"]
    ask(page, f"openai/{model}", "Talk for a long time")
    wait_answer_length(page, 40)
    page.click('[data-testid="stop"]')
    assert fake.wait_closed(model).outcome == "peer_closed"
    page.wait_for_selector('[data-testid="app"][data-status="ready"]')
    assert roles(page) == ["user", "assistant", "user", "assistant"]
    # Every /v1 request went to the gateway's origin, none to the page's.
    api = [r for r in requests if "/v1/" in r]
    assert api and all(r.split(" ", 1)[1].startswith(gateway.url + "/v1/") for r in api), api
    assert any(r.startswith("DELETE ") for r in api), api
