"""The example chat app (examples/chat_app) as its users and its team would see it.

It runs under real gunicorn with its own config (the gevent worker, the
product's gunicorn hooks), on the in-process broker and on Redis, with the
fake provider behind the extension (FLASK_SSE_GATEWAY_* settings), so that the
text is known and the provider's side of a Stop can be seen. What the
completion hook saved is read from the app's SQLite file.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Browser, Page

from fake_wire import Behaviour
from tests.fake_provider import FakeProvider
from tests.live.browser import SHOTS, watched_page
from tests.live.gateway import GatewayServer, SSEStream, tokens_text
from tests.live.proxy import CuttableProxy
from tests.test_broker import REDIS_URL

EXAMPLE = "examples.chat_app.wsgi:app"
CONFIG = "examples/chat_app/gunicorn.conf.py"
SYSTEM = "You are a helpful assistant talking to {}. Be concise."
GRACE_S = 2.0  # the app's resume grace: how long a dropped reply goes on
MAX_MESSAGES = 8  # SSE_GATEWAY_MAX_MESSAGES: a longer conversation is refused

ANSWER = ["Bonjour", ", ", "Alice", " — ", "ça", " va", " ?", " 👋🏽", "\n", "日本語", " <b>ok</b>"]
LONG = [f"word{i} " for i in range(400)]


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models(fake: FakeProvider) -> dict[str, str]:
    """One fake model per test (the app's conversations name them openai/<model>)."""
    slow = Behaviour(tokens=LONG, delay=0.05)
    return {
        # The browser test's conversation: a full answer, then one that is stopped.
        "browser": fake.scenario_seq([Behaviour(tokens=ANSWER, delay=0.08, ttft=0.1), slow]),
        "done": fake.scenario(tokens=ANSWER, delay=0.01),
        "delete": fake.scenario(slow),
        "drop": fake.scenario(slow),
        "error": fake.scenario(status=400),
        "owner": fake.scenario(slow),
        "follow": fake.scenario(slow),
        "limit": fake.scenario(slow),
        "cut": fake.scenario(tokens=LONG[:60], delay=0.03),
        "long": fake.scenario(tokens=["unused"]),
    }


@pytest.fixture(scope="module", params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def app(fake: FakeProvider, models: dict[str, str], request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The example under its own gunicorn config, the fake provider behind it."""
    db = tmp_path_factory.mktemp(f"chat-{request.param}") / "chat.db"
    env = {
        "FLASK_DATABASE_URL": f"sqlite:///{db}",
        "FLASK_SECRET_KEY": "test-secret",
        "FLASK_CHAT_MODELS": ",".join(f"openai/{m}" for m in models.values()),
        "FLASK_SSE_GATEWAY_MODELS": "demo/echo,openai/*",
        "FLASK_SSE_GATEWAY_OPENAI_BASE_URL": f"{fake.url}/v1",
        "FLASK_SSE_GATEWAY_OPENAI_API_KEY": "sk-test-openai",
        "FLASK_SSE_GATEWAY_RESUME_GRACE_S": str(GRACE_S),
        "FLASK_SSE_GATEWAY_HEARTBEAT_S": "0.5",
        "FLASK_SSE_GATEWAY_MAX_MESSAGES": str(MAX_MESSAGES),
    }
    if request.param == "redis":
        env["FLASK_SSE_GATEWAY_REDIS_URL"] = REDIS_URL
    # The second -c wins over GatewayServer's own: the example's config is the one used.
    server = GatewayServer(env, args=("-c", CONFIG), app=EXAMPLE, label=request.param)
    try:
        server.start()
        assert "Using worker: gevent" in server.log()
        yield App(server, db)
    finally:
        server.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with watched_page(browser, viewport={"width": 1100, "height": 700}) as opened:
        yield opened


# ------------------------------------------------------------------------------- helpers


class App:
    """The running example, its users' sessions, and its database."""

    def __init__(self, server: GatewayServer, db: Path) -> None:
        self.server = server
        self.db = db

    def login(self, username: str) -> dict[str, str]:
        """Sign in through the form; the session cookie as a header."""
        reply = self.server.request(
            "POST", "/login", urlencode({"username": username, "password": username}).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"})
        assert reply.status == 302, reply.body
        return {"Cookie": reply.headers["set-cookie"].split(";", 1)[0]}

    def conversation(self, user: dict[str, str], model: str) -> int:
        """A new conversation with the fake ``model``; its id."""
        reply = self.server.request("POST", "/api/conversations", {"model": f"openai/{model}"},
                                    user)
        assert reply.status == 201, reply.body
        return int(reply.json()["id"])

    def send(self, user: dict[str, str], conversation: int, text: str) -> SSEStream:
        stream = self.server.stream("POST", f"/api/conversations/{conversation}/messages",
                                    {"text": text}, user)
        assert stream.status == 200
        return stream

    def rows(self, conversation: int) -> list[tuple[Any, ...]]:
        """(role, content, status, note) of each message, oldest first."""
        with sqlite3.connect(self.db) as connection:
            return connection.execute(
                "SELECT role, content, status, note FROM messages WHERE conversation_id = ? "
                "ORDER BY id", (conversation,)).fetchall()

    def saved_reply(self, stream_id: str, timeout: float = 10) -> dict[str, Any]:
        """The reply of a stream once the completion hook has saved it."""
        deadline = time.monotonic() + timeout
        while True:
            with sqlite3.connect(self.db) as connection:
                connection.row_factory = sqlite3.Row
                row = connection.execute("SELECT * FROM messages WHERE stream_id = ?",
                                         (stream_id,)).fetchone()
            if row is not None and row["status"] != "streaming":
                return dict(row)
            assert time.monotonic() < deadline, f"reply of {stream_id} not saved: {row}"
            time.sleep(0.05)  # polling the app's database: there is no event to await


def read_tokens(stream: SSEStream, n: int) -> str:
    """Read until ``n`` token events have arrived; their text."""
    stream.read_until(lambda e: e.event == "token" and int(e.id) >= n)
    return tokens_text([r.event for r in stream.received])


def prompt(username: str, *turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM.format(username)},
            *({"role": role, "content": content} for role, content in turns)]


def sign_in(page: Page, url: str, username: str) -> None:
    """Open the app, get sent to the sign-in form, sign in, land on the chat page."""
    page.goto(url + "/")
    assert page.url == f"{url}/login?next=/"
    page.fill('input[name="username"]', username)
    page.fill('input[name="password"]', username)
    page.click('[data-testid="login"]')
    page.wait_for_selector('[data-testid="app"][data-ready="true"]')
    assert page.get_by_test_id("username").text_content() == username


def messages_on(page: Page) -> list[dict[str, str]]:
    return list(page.eval_on_selector_all('[data-testid="message"]', """items => items.map(m => ({
        role: m.dataset.role, state: m.dataset.state,
        text: m.querySelector('[data-testid="message-text"]').textContent,
        note: m.querySelector('[data-testid="message-note"]').textContent}))"""))


def wait_reply_length(page: Page, n: int) -> None:
    page.wait_for_function("""(n) => {
        const r = document.querySelectorAll('[data-role="assistant"]');
        return r.length && r[r.length - 1].querySelector('[data-testid="message-text"]')
            .textContent.length >= n; }""", arg=n)


def last_reply_text(page: Page) -> str:
    return str(page.locator('[data-testid="message"][data-role="assistant"]').last
               .get_by_test_id("message-text").text_content())


def send(page: Page, text: str, model: str | None = None) -> None:
    """Type ``text`` and send it (in a new conversation with ``model``, if given)."""
    if model is not None:
        page.select_option('[data-testid="model-select"]', value=model)
    page.fill('[data-testid="prompt"]', text)
    page.click('[data-testid="send"]')


# ------------------------------------------------------------------------------- tests


def test_in_chromium_sign_in_stream_stop_and_reload(
        app: App, page: Page, fake: FakeProvider, models: dict[str, str]) -> None:
    model = models["browser"]
    if app.server.label == "redis":
        pytest.skip("the browser flow runs once, on the in-process broker")
    sign_in(page, app.server.url, "alice")
    send(page, "Hello", model=f"openai/{model}")

    # Tokens arrive one by one: the reply grows through prefixes of the answer.
    expected = "".join(ANSWER)
    wait_reply_length(page, 1)
    seen = {last_reply_text(page)}
    deadline = time.monotonic() + 10
    while page.locator('[data-state="streaming"]').count() and time.monotonic() < deadline:
        text = last_reply_text(page)
        assert expected.startswith(text), text
        seen.add(text)
        time.sleep(0.03)  # sampling what the page shows while it streams
    page.wait_for_selector('[data-role="assistant"][data-state="done"]')
    assert last_reply_text(page) == expected
    assert len(seen - {""}) >= 3, seen
    assert page.locator('[data-testid="message-text"] b').count() == 0  # text, not HTML
    conversation = int(page.get_by_test_id("app").get_attribute("data-conversation-id") or 0)
    assert page.url.endswith(f"/c/{conversation}")
    assert page.get_by_test_id("title").text_content() == "Hello"  # named by its first message
    assert page.get_by_test_id("conversation-link").first.text_content() == "Hello"
    assert fake.wait_closed(model).body["messages"] == prompt("alice", ("user", "Hello"))

    # A second question; Stop while it streams.
    send(page, "Tell me more")
    page.wait_for_selector('[data-role="assistant"] >> nth=1')
    wait_reply_length(page, 40)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "example-streaming.png"))
    page.click('[data-testid="stop"]')
    call = fake.wait_closed(model, 1)
    assert call.outcome == "peer_closed"  # the provider's connection was closed
    assert call.body["messages"] == prompt("alice", ("user", "Hello"), ("assistant", expected),
                                           ("user", "Tell me more"))
    page.wait_for_selector('[data-role="assistant"][data-state="cancelled"]')
    partial = last_reply_text(page)
    assert "".join(LONG).startswith(partial)
    assert 40 <= len(partial) < len("".join(LONG))
    assert page.get_by_test_id("send").is_visible()
    stream_id = page.locator('[data-role="assistant"]').last.get_attribute("data-stream-id")
    assert stream_id
    saved = app.saved_reply(stream_id)
    assert (saved["status"], saved["content"], saved["note"]) == ("cancelled", partial, "stopped")

    # After a reload the saved conversation is shown: the whole first reply, the partial one.
    page.reload()
    page.wait_for_selector('[data-testid="app"][data-ready="true"]')
    assert messages_on(page) == [
        {"role": "user", "state": "done", "text": "Hello", "note": ""},
        {"role": "assistant", "state": "done", "text": expected, "note": ""},
        {"role": "user", "state": "done", "text": "Tell me more", "note": ""},
        {"role": "assistant", "state": "cancelled", "text": partial, "note": "stopped"},
    ]
    assert page.get_by_test_id("title").text_content() == "Hello"
    links = page.get_by_test_id("conversation-link")
    assert links.first.text_content() == "Hello"
    assert links.first.get_attribute("aria-current") == "page"
    page.screenshot(path=str(SHOTS / "example-reloaded.png"))


def test_in_chromium_another_tab_follows_a_running_reply(
        app: App, page: Page, fake: FakeProvider, models: dict[str, str]) -> None:
    """A reply still streaming when a page opens is followed with the browser's own
    EventSource (the session cookie is its credential), and can be stopped there."""
    model = models["follow"]
    if app.server.label == "memory":
        pytest.skip("runs once, on Redis (the other browser test runs in memory)")
    sign_in(page, app.server.url, "bob")
    send(page, "Talk for a long time", model=f"openai/{model}")
    wait_reply_length(page, 20)
    other = page.context.new_page()
    other.goto(page.url)
    other.wait_for_selector('[data-testid="app"][data-ready="true"]')
    assert other.locator('[data-role="assistant"]').get_attribute("data-state") == "streaming"
    # The other tab replays the reply from its start, then follows it live.
    wait_reply_length(other, len(last_reply_text(page)) + 20)
    assert "".join(LONG).startswith(last_reply_text(other))
    other.click('[data-testid="stop"]')
    assert fake.wait_closed(model, len(fake.calls(model)) - 1).outcome == "peer_closed"
    for tab in (page, other):
        tab.wait_for_selector('[data-role="assistant"][data-state="cancelled"]')
        assert tab.locator('[data-role="assistant"] [data-testid="message-note"]'
                           ).text_content() == "stopped"
    assert last_reply_text(page) == last_reply_text(other)
    stream_id = page.locator('[data-role="assistant"]').get_attribute("data-stream-id")
    saved = app.saved_reply(stream_id or "")
    assert (saved["status"], saved["content"]) == ("cancelled", last_reply_text(page))


def test_in_chromium_a_cut_connection_follows_the_reply_again(
        app: App, page: Page, fake: FakeProvider, models: dict[str, str]) -> None:
    """The page's POST connection breaks mid-reply: it follows the reply again
    (EventSource, from its start) and shows it whole, once, from one provider call."""
    model = models["cut"]
    if app.server.label == "redis":
        pytest.skip("runs once, on the in-process broker")
    proxy = CuttableProxy(app.server.port)
    try:
        sign_in(page, proxy.url, "alice")
        send(page, "Stream through a flaky network", model=f"openai/{model}")
        wait_reply_length(page, 30)
        assert proxy.cut() >= 1
        page.wait_for_selector('[data-role="assistant"][data-state="done"]')
        assert last_reply_text(page) == "".join(LONG[:60])
        assert fake.wait_closed(model).outcome == "complete"
        assert len(fake.calls(model)) == 1
        stream_id = page.locator('[data-role="assistant"]').get_attribute("data-stream-id")
        follows = [path for method, path, _ in proxy.requests() if method == "GET"
                   and path == f"/api/streams/{stream_id}/events"]
        assert follows, proxy.requests()
        saved = app.saved_reply(stream_id or "")
        assert (saved["status"], saved["content"]) == ("done", "".join(LONG[:60]))
    finally:
        proxy.close()


def test_on_end_saves_the_reply_after_done(app: App, fake: FakeProvider,
                                           models: dict[str, str]) -> None:
    alice = app.login("alice")
    conversation = app.conversation(alice, models["done"])
    stream = app.send(alice, conversation, "Say hello")
    events = stream.read_all()
    assert tokens_text(events) == "".join(ANSWER)
    assert events[-1].event == "done"
    assert stream.header("Location") == f"/api/streams/{stream.header('X-Stream-ID')}/events"
    saved = app.saved_reply(stream.header("X-Stream-ID") or "")
    assert (saved["status"], saved["content"], saved["note"]) == ("done", "".join(ANSWER), "")
    assert saved["output_tokens"] == events[-1].json()["usage"]["output_tokens"] == len(ANSWER)
    assert app.rows(conversation) == [("user", "Say hello", "done", ""),
                                      ("assistant", "".join(ANSWER), "done", "")]
    # The prompt was built by the server: the browser sent only the text.
    call = fake.calls(models["done"])[-1]
    assert call.body["messages"] == prompt("alice", ("user", "Say hello"))


def test_on_end_saves_the_partial_reply_after_delete(app: App, fake: FakeProvider,
                                                     models: dict[str, str]) -> None:
    alice = app.login("alice")
    conversation = app.conversation(alice, models["delete"])
    stream = app.send(alice, conversation, "Talk for a long time")
    read_tokens(stream, 5)
    stream_id = stream.header("X-Stream-ID")
    reply = app.server.request("DELETE", f"/api/streams/{stream_id}", headers=alice)
    assert reply.status == 202
    events = stream.read_all()
    assert events[-1].event == "cancelled"
    assert events[-1].json() == {"reason": "deleted"}
    shown = tokens_text(events)
    call = fake.wait_closed(models["delete"], len(fake.calls(models["delete"])) - 1)
    assert call.outcome == "peer_closed"
    saved = app.saved_reply(stream_id or "")
    assert (saved["status"], saved["content"], saved["note"]) == ("cancelled", shown, "stopped")
    assert 0 < len(shown) < len("".join(LONG))


def test_on_end_saves_the_partial_reply_after_a_client_drop(app: App, fake: FakeProvider,
                                                            models: dict[str, str]) -> None:
    alice = app.login("alice")
    conversation = app.conversation(alice, models["drop"])
    stream = app.send(alice, conversation, "Talk for a long time")
    shown = read_tokens(stream, 5)
    stream_id = stream.header("X-Stream-ID") or ""
    stream.drop()
    dropped = time.monotonic()
    call = fake.wait_closed(models["drop"], len(fake.calls(models["drop"])) - 1)
    assert call.outcome == "peer_closed"
    assert call.closed_at is not None and call.closed_at - dropped >= GRACE_S * 0.9
    saved = app.saved_reply(stream_id)
    assert (saved["status"], saved["note"]) == ("cancelled", "the connection was lost")
    # Generation went on through the grace: more than the client saw, all of it kept
    # (whole tokens; the last few the provider wrote may not have been read).
    kept = saved["content"].count("word")
    assert saved["content"] == "".join(LONG[:kept])
    assert shown.count("word") < kept <= call.tokens_sent


def test_on_end_notes_an_error(app: App, models: dict[str, str]) -> None:
    alice = app.login("alice")
    conversation = app.conversation(alice, models["error"])
    stream = app.send(alice, conversation, "Fail, please")
    events = stream.read_all()
    assert events[-1].event == "error"
    error = events[-1].json()
    saved = app.saved_reply(stream.header("X-Stream-ID") or "")
    assert (saved["status"], saved["content"]) == ("error", "")
    assert saved["note"] == f"{error['code']}: {error['message']}"
    assert error["code"] == "upstream_bad_request"


def test_another_user_gets_404_and_nobody_401(app: App, models: dict[str, str]) -> None:
    alice, bob = app.login("alice"), app.login("bob")
    conversation = app.conversation(alice, models["owner"])
    stream = app.send(alice, conversation, "Talk for a long time")
    read_tokens(stream, 2)
    stream_id = stream.header("X-Stream-ID")
    routes = [("GET", f"/api/streams/{stream_id}/events"), ("GET", f"/api/streams/{stream_id}"),
              ("DELETE", f"/api/streams/{stream_id}")]
    # As for an id nobody has: the answer does not tell that alice's exists.
    unknown = app.server.request("GET", "/api/streams/no-such-stream-0123456789", headers=bob)
    assert (unknown.status, unknown.json()) == (404, {"error": {
        "code": "not_found", "message": "no stream 'no-such-stream-0123456789'"}})
    for method, path in routes:
        reply = app.server.request(method, path, headers=bob)
        assert reply.status == 404, (method, path)
        assert reply.json() == {"error": {"code": "not_found",
                                          "message": f"no stream {stream_id!r}"}}
        reply = app.server.request(method, path)
        assert reply.status == 401, (method, path)
        assert reply.json() == {"error": {"code": "unauthorized",
                                          "message": "sign in to use streams"}}
    # The app's own routes: bob cannot post into alice's conversation, nobody signed out can.
    path = f"/api/conversations/{conversation}/messages"
    assert app.server.request("POST", path, {"text": "hi"}, bob).status == 404
    assert app.server.request("GET", f"/c/{conversation}", headers=bob).status == 404
    anonymous = app.server.request("POST", path, {"text": "hi"})
    assert (anonymous.status, anonymous.json()) == (401, {"error": "sign in first"})
    # Alice's stream went on untouched, and is hers to follow and stop.
    status = app.server.request("GET", f"/api/streams/{stream_id}", headers=alice).json()
    assert status["status"] == "running"
    assert status["metadata"] == {"conversation_id": str(conversation)}
    assert app.server.request("DELETE", f"/api/streams/{stream_id}", headers=alice).status == 202
    assert stream.read_all()[-1].event == "cancelled"


def test_invalid_request_is_the_apps_own_400(app: App, models: dict[str, str]) -> None:
    alice = app.login("alice")
    conversation = app.conversation(alice, models["long"])
    with sqlite3.connect(app.db) as connection:  # a conversation already at the limit
        connection.executemany(
            "INSERT INTO messages (conversation_id, role, content, status, note, created_at) "
            "VALUES (?, ?, ?, 'done', '', '2026-01-01 00:00:00')",
            [(conversation, "user" if i % 2 == 0 else "assistant", f"turn {i}")
             for i in range(MAX_MESSAGES - 1)])
    before = app.rows(conversation)
    reply = app.server.request("POST", f"/api/conversations/{conversation}/messages",
                               {"text": "one more"}, alice)
    assert (reply.status, reply.json()) == (
        400, {"error": f"messages: at most {MAX_MESSAGES} are accepted"})
    assert app.rows(conversation) == before  # the refused turn was not kept


def test_other_refusals_are_the_products_json(app: App, fake: FakeProvider,
                                              models: dict[str, str]) -> None:
    """The app lets one user stream 3 replies at once (SSE_GATEWAY_MAX_STREAMS_PER_KEY)."""
    bob = app.login("bob")
    conversation = app.conversation(bob, models["limit"])
    streams = [app.send(bob, conversation, f"question {i}") for i in range(3)]
    before = app.rows(conversation)
    reply = app.server.request("POST", f"/api/conversations/{conversation}/messages",
                               {"text": "one too many"}, bob)
    assert (reply.status, reply.headers["retry-after"], reply.json()) == (429, "1", {"error": {
        "code": "too_many_streams",
        "message": "at most 3 streams may run at once for one key (one owner); wait for one to end"}})
    assert app.rows(conversation) == before
    for stream in streams:
        path = f"/api/streams/{stream.header('X-Stream-ID')}"
        assert app.server.request("DELETE", path, headers=bob).status == 202
        assert stream.read_all()[-1].event == "cancelled"
