"""The sidecar mode: detached streams and stream tokens, against the real gunicorn.

A backend holding an API key creates a stream with ``"detach": true`` and hands
its browser ``{events_url, token}``; the browser follows (a native
``EventSource`` with ``?token=``) and cancels that one stream with the token,
and can do nothing else with it. The provider's side (its connection closed or
not) is asserted through the fake provider; what the gateway served, through
its access log (which must never hold a token).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from app.security import key_id
from app.tokens import PREFIX, StreamTokens
from tests.fake_provider import FakeProvider
from tests.live.browser import watched_page
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer, Reply, tokens_text
from tests.live.proxy import CuttableProxy
from tests.live.test_abuse import request_from
from tests.live.test_browser import TOKENS
from tests.test_broker import REDIS_URL

# Fresh keys each run: their counts live in Redis, across runs.
KEY, OTHER = (f"sk-{name}-{secrets.token_hex(8)}" for name in ("sidecar", "other"))
SECRET = secrets.token_urlsafe(32)
RETRY_MS = 300
LONG = [f"w{i} " for i in range(400)]


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def detach(server: GatewayServer, model: str, key: str = KEY, **body: Any) -> dict[str, Any]:
    """Create a detached stream as a backend would; the 201 body."""
    reply = server.request("POST", "/v1/streams", {"model": model, "prompt": "x",
                                                   "detach": True, **body}, bearer(key))
    assert reply.status == 201, reply
    created = reply.json()
    stream_id = created["stream_id"]
    assert created == {"stream_id": stream_id, "token": created["token"],
                       "events_url": f"/v1/streams/{stream_id}/events",
                       "status_url": f"/v1/streams/{stream_id}"}
    assert reply.headers["x-stream-token"] == created["token"]
    assert reply.headers["x-stream-id"] == stream_id
    assert reply.headers["location"] == f"/v1/streams/{stream_id}"
    assert created["token"].startswith(PREFIX)
    return created


def without_pings(raw: bytes) -> bytes:
    return re.sub(rb"(?m)^: ping\n", b"", raw)


def access_lines(server: GatewayServer, path: str) -> list[str]:
    """The statuses of the gateway's access lines for GET ``path`` (any query)."""
    pattern = re.compile(r'"GET ' + re.escape(path) + r'(\?\S*)? HTTP/1\.1" (\d{3}) ')
    return [m.group(2) for m in pattern.finditer(server.log())]


def wait_for(predicate: Any, timeout: float = 10, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


def ended(server: GatewayServer, path: str, headers: dict[str, str] | None = None
          ) -> dict[str, Any]:
    """The status body at ``path`` once the stream is no longer running."""
    def look() -> dict[str, Any] | None:
        body: dict[str, Any] = server.request("GET", path, headers=headers).json()
        return body if body["status"] != "running" else None
    found: dict[str, Any] = wait_for(look, what=f"{path} ends")
    return found


def expired_token(owner_key: str, stream_id: str, secret: str = SECRET) -> str:
    """A token the gateway signed (same secret), issued two hours ago for one hour."""
    past = StreamTokens(secret.encode(), 3600, clock=lambda: time.time() - 7200)
    return past.issue(key_id(hashlib.sha256(owner_key.encode()).digest()), stream_id)


def altered(token: str, stream_id: str | None = None) -> str:
    """``token`` with one character of its signature changed, or (``stream_id``) with
    its payload rewritten to name another stream under the old signature."""
    body, signature = token[len(PREFIX):].split(".")
    if stream_id is None:
        middle = len(signature) // 2
        swapped = "A" if signature[middle] != "A" else "B"
        return f"{PREFIX}{body}.{signature[:middle]}{swapped}{signature[middle + 1:]}"
    owner, _, expires = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps([owner, stream_id, expires],
                                                 separators=(",", ":")).encode())
    return f"{PREFIX}{forged.decode().rstrip('=')}.{signature}"


def unauthorized(reply: Reply, message: str) -> None:
    assert reply.status == 401, reply
    assert reply.json() == {"error": {"code": "unauthorized", "message": message}}
    assert reply.headers["www-authenticate"] == 'Bearer realm="sse-gateway"'


EXPIRED = "the stream token has expired; ask the stream's creator for a new one"
INVALID = ("the stream token is not valid (altered, truncated, or signed with another "
           "secret)")
OTHER_ROUTE = ("a stream token opens only its own stream's events, status and DELETE; "
               "this route needs an API key")
NOT_A_TOKEN = "not a stream token (stream tokens begin with sst_)"
NO_KEY = "a valid API key is required: Authorization: Bearer <key>"


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=["memory", "redis"])
def sidecar(fake: FakeProvider, request: pytest.FixtureRequest) -> Iterator[GatewayServer]:
    """A gateway with API keys, a token secret and its access log on, on each broker."""
    extra = {"REDIS_URL": REDIS_URL} if request.param == "redis" else {}
    env = gateway_env(fake, API_KEYS=f"{KEY},{OTHER}", STREAM_TOKEN_SECRET=SECRET,
                      ACCESS_LOG="-", RETRY_MS=str(RETRY_MS), **extra)
    with GatewayServer(env, label=request.param) as server:
        yield server


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with watched_page(browser) as opened:
        yield opened


# ------------------------------------------------------------------------------- detach


def test_a_detached_stream_runs_to_its_end_with_no_reader(sidecar: GatewayServer,
                                                          fake: FakeProvider) -> None:
    model = fake.scenario(tokens=TOKENS, delay=0.02)
    created = detach(sidecar, f"openai/{model}", resume_grace_s=60)
    # Generation runs with nobody reading: the provider sends its whole answer.
    assert fake.wait_closed(model).outcome == "complete"
    status = ended(sidecar, created["status_url"], bearer(created["token"]))
    assert status["status"] == "done"
    assert status["last_event_id"] == len(TOKENS) + 1
    reader = sidecar.stream("GET", f"{created['events_url']}?token={created['token']}")
    assert reader.status == 200
    events = reader.read_all()
    assert [e.id for e in events] == [str(i) for i in range(len(TOKENS) + 2)]
    assert events[0].event == "start" and events[-1].event == "done"
    assert tokens_text(events) == "".join(TOKENS)
    assert len(fake.calls(model)) == 1


def test_a_reader_attaching_within_the_grace_gets_every_event_exactly(
        sidecar: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=LONG[:60], delay=0.03)
    created = detach(sidecar, f"openai/{model}", resume_grace_s=30)
    call = fake.wait_call(model)
    wait_for(lambda: call.tokens_sent >= 5, what="5 tokens sent with no reader")
    reader = sidecar.stream("GET", created["events_url"], headers=bearer(created["token"]))
    assert reader.status == 200
    assert call.outcome is None  # attached while the provider still streams
    events = reader.read_all()
    assert [e.id for e in events] == [str(i) for i in range(62)]
    assert tokens_text(events) == "".join(LONG[:60])
    assert events[-1].event == "done"
    assert fake.wait_closed(model).outcome == "complete"
    # A second reader, after the end, gets the very same bytes (pings aside).
    replay = sidecar.stream("GET", f"{created['events_url']}?token={created['token']}")
    replay.read_all()
    assert without_pings(bytes(replay.raw)) == without_pings(bytes(reader.raw))
    assert len(fake.calls(model)) == 1


def test_a_detached_stream_nobody_reads_ends_after_its_grace(sidecar: GatewayServer,
                                                             fake: FakeProvider) -> None:
    model = fake.scenario(tokens=LONG, delay=0.05)
    grace = 1.0
    asked = time.monotonic()
    created = detach(sidecar, f"openai/{model}", resume_grace_s=grace)
    call = fake.wait_closed(model, timeout=15)
    assert call.outcome == "peer_closed"  # the provider's connection was closed
    assert call.closed_at is not None
    assert grace - 0.1 <= call.closed_at - asked < grace + 3, call.closed_at - asked
    assert call.tokens_sent < len(LONG)
    token = created["token"]
    assert ended(sidecar, f"{created['status_url']}?token={token}")["status"] == "cancelled"
    events = sidecar.stream("GET", created["events_url"], headers=bearer(token)).read_all()
    assert events[-1].event == "cancelled"
    assert events[-1].json() == {"reason": "client_disconnected"}
    assert "".join(LONG).startswith(tokens_text(events))


def test_a_streamed_post_answers_its_token_too(sidecar: GatewayServer) -> None:
    stream = sidecar.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": "hi there"},
                            headers=bearer(KEY))
    assert stream.status == 200
    token = stream.header("X-Stream-Token")
    stream_id = stream.header("X-Stream-ID")
    assert token is not None and token.startswith(PREFIX)
    assert tokens_text(stream.read_all()) == "hi there"
    status = sidecar.request("GET", f"/v1/streams/{stream_id}", headers=bearer(token))
    assert status.status == 200 and status.json()["status"] == "done"
    # A retried POST (same X-Stream-ID and body) resumes, and answers the token as well.
    again = sidecar.stream("POST", "/v1/streams", {"model": "demo/echo", "prompt": "hi there"},
                           headers={**bearer(KEY), "X-Stream-ID": stream_id,
                                    "Last-Event-ID": "1"})
    assert again.status == 200
    assert again.header("X-Stream-Token") is not None
    again.read_all()


# ------------------------------------------------------------------------------- the browser


def test_a_native_eventsource_follows_a_detached_stream_with_its_token(
        sidecar: GatewayServer, fake: FakeProvider, page: Page) -> None:
    """The browser gets exactly the text, stops after ``done`` (the reconnect answers
    204), and the gateway served exactly those two GETs."""
    model = fake.scenario(tokens=TOKENS, delay=0.03, ttft=0.2)
    created = detach(sidecar, f"openai/{model}", resume_grace_s=30)
    page.goto(sidecar.url + "/healthz")  # any page of the gateway's origin
    page.evaluate("""(url) => {
        const state = window.sidecar = {text: "", events: [], opens: 0, closed: false};
        const es = new EventSource(url);
        es.onopen = () => { state.opens += 1; };
        for (const name of ["start", "token", "done", "error", "cancelled"]) {
            es.addEventListener(name, (e) => {
                if (e.data === undefined) return;  // a connection error, not an event
                state.events.push([name, e.lastEventId]);
                if (name === "token") state.text += JSON.parse(e.data).content;
            });
        }
        es.addEventListener("error", () => {
            if (es.readyState === EventSource.CLOSED) state.closed = true;
        });
    }""", f"{created['events_url']}?token={created['token']}")
    page.wait_for_function("() => window.sidecar.closed")
    state = page.evaluate("() => window.sidecar")
    assert state["text"] == "".join(TOKENS)
    names = [name for name, _ in state["events"]]
    assert names == ["start", *["token"] * len(TOKENS), "done"]
    assert [int(i) for _, i in state["events"]] == list(range(len(TOKENS) + 2))
    assert state["opens"] == 1  # the 204 reconnect never opened
    path = created["events_url"]
    assert wait_for(lambda: len(access_lines(sidecar, path)) >= 2,
                    what="two access lines") and access_lines(sidecar, path) == ["200", "204"]
    time.sleep(4 * RETRY_MS / 1000)  # nothing to await: the absence of a third request
    assert access_lines(sidecar, path) == ["200", "204"]
    log = sidecar.log()
    assert f'"GET {path}?token=[redacted] HTTP/1.1" 204' in log
    token = created["token"]
    assert token not in log and token.split(".")[-1] not in log
    assert fake.wait_closed(model).outcome == "complete"


LISTEN = """(url) => {
    const state = window.sidecar = {text: "", events: [], opens: 0, closed: false,
                                    failures: 0, error: null};
    const es = new EventSource(url);
    es.onopen = () => { state.opens += 1; };
    for (const name of ["start", "token", "done", "error", "cancelled"]) {
        es.addEventListener(name, (e) => {
            if (e.data === undefined) return;  // a connection error, not an event
            state.events.push([name, e.lastEventId]);
            if (name === "token") state.text += JSON.parse(e.data).content;
            if (name === "error") state.error = JSON.parse(e.data);
        });
    }
    // The gateway's `error` event and the EventSource's own connection errors share
    // the name: only the first carries data.
    es.addEventListener("error", (e) => {
        if (e.data === undefined) state.failures += 1;
        if (es.readyState === EventSource.CLOSED) state.closed = true;
    });
}"""


def test_a_native_eventsource_resumes_through_cut_connections_with_its_token(
        sidecar: GatewayServer, fake: FakeProvider, page: Page) -> None:
    """Chromium's own EventSource, through a proxy that resets its connection twice: it
    reconnects by itself with ``Last-Event-ID`` and the token in its URL, gets every
    event exactly once, and stops after ``done`` (the last reconnect answers 204)."""
    tokens = LONG[:120]
    model = fake.scenario(tokens=tokens, delay=0.02, ttft=0.1)  # 2.4 s: the cuts land mid-stream
    created = detach(sidecar, f"openai/{model}", resume_grace_s=30)
    proxy = CuttableProxy(sidecar.port)
    try:
        page.goto(proxy.url + "/healthz")  # the page's origin is the proxy's
        page.evaluate(LISTEN, f"{created['events_url']}?token={created['token']}")
        for seen in (20, 60):
            page.wait_for_function(f"() => window.sidecar.events.length > {seen}")
            assert proxy.cut() >= 1
        page.wait_for_function("() => window.sidecar.closed")
        state = page.evaluate("() => window.sidecar")
        gets = [headers for method, path, headers in proxy.requests()
                if method == "GET" and path.startswith(created["events_url"])]
    finally:
        proxy.close()
    assert state["text"] == "".join(tokens)
    assert [int(i) for _, i in state["events"]] == list(range(len(tokens) + 2))
    assert [name for name, _ in state["events"]][-1] == "done"
    assert state["opens"] == 3  # the first, two resumes; the 204 never opened
    assert len(gets) == 4
    positions = [int(h["last-event-id"]) for h in gets[1:]]
    assert "last-event-id" not in gets[0] and positions == sorted(positions)
    assert positions[-1] == len(tokens) + 1  # the done's id: nothing follows, 204
    assert len(fake.calls(model)) == 1


def test_the_error_event_reaches_an_eventsource_apart_from_its_connection_errors(
        sidecar: GatewayServer, fake: FakeProvider, page: Page) -> None:
    """The stream's ``error`` event is delivered to ``addEventListener("error")`` with its
    data; the EventSource's own connection errors come without. After it, the reconnect
    answers 204 and the EventSource closes."""
    model = fake.scenario(tokens=["a", "b", "c"], error_event_after=2)
    created = detach(sidecar, f"openai/{model}", resume_grace_s=30)
    page.goto(sidecar.url + "/healthz")
    page.evaluate(LISTEN, f"{created['events_url']}?token={created['token']}")
    page.wait_for_function("() => window.sidecar.closed")
    state = page.evaluate("() => window.sidecar")
    assert state["text"] == "ab"
    assert [name for name, _ in state["events"]] == ["start", "token", "token", "error"]
    assert state["error"]["code"] == "upstream_unavailable"
    assert state["failures"] == 2  # the end of the response, then the 204
    assert state["opens"] == 1


# ------------------------------------------------------------------------------- cancel


def test_delete_with_the_token_closes_the_provider_connection(sidecar: GatewayServer,
                                                               fake: FakeProvider) -> None:
    model = fake.scenario(tokens=LONG, delay=0.05)
    created = detach(sidecar, f"openai/{model}", resume_grace_s=30)
    token = created["token"]
    reader = sidecar.stream("GET", f"{created['events_url']}?token={token}")
    reader.read_until(lambda e: e.event == "token")
    asked = time.monotonic()
    reply = sidecar.request("DELETE", created["status_url"], headers=bearer(token))
    assert reply.status == 202
    assert reply.json()["stream_id"] == created["stream_id"]
    call = fake.wait_closed(model)
    assert call.outcome == "peer_closed"
    assert call.closed_at is not None and call.closed_at - asked < 1.0
    events = reader.read_all()
    assert events[-1].event == "cancelled" and events[-1].json() == {"reason": "deleted"}
    status = sidecar.request("GET", f"{created['status_url']}?token={token}")
    assert status.json()["status"] == "cancelled"
    again = sidecar.request("DELETE", f"{created['status_url']}?token={token}")
    assert again.status == 200 and again.json() == status.json()


# ------------------------------------------------------------------------------- misuse


@pytest.mark.parametrize("sidecar", ["memory"], indirect=True)
def test_token_misuse_is_refused(sidecar: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["a", "b"], stall_after=1, stall_s=30)
    mine = detach(sidecar, f"openai/{model}", resume_grace_s=30)
    sibling = detach(sidecar, f"openai/{model}", resume_grace_s=30)  # same key, other stream
    theirs = detach(sidecar, f"openai/{model}", key=OTHER, resume_grace_s=30)
    token = mine["token"]
    unknown = "unknown-stream-id-0000"

    # Its own stream: every route of it.
    assert sidecar.request("GET", mine["status_url"], headers=bearer(token)).status == 200
    assert sidecar.request("GET", f"{mine['status_url']}?token={token}&include=message"
                           ).json()["message"]["role"] == "assistant"

    # Another stream, of the same key or another's: exactly as unknown (404).
    for other in (sibling, theirs):
        other_id = other["stream_id"]
        for method, suffix in (("GET", ""), ("GET", "/events"), ("DELETE", "")):
            for via_query in (False, True):
                path = f"/v1/streams/{other_id}{suffix}"
                path_unknown = f"/v1/streams/{unknown}{suffix}"
                if via_query:
                    got = sidecar.request(method, f"{path}?token={token}")
                else:
                    got = sidecar.request(method, path, headers=bearer(token))
                nobody = sidecar.request(method, path_unknown, headers=bearer(KEY))
                assert got.status == nobody.status == 404, (method, path)
                assert got.json() == json.loads(nobody.body.replace(unknown.encode(),
                                                                    other_id.encode()))
    assert sidecar.request("GET", sibling["status_url"], headers=bearer(KEY)
                           ).json()["status"] == "running"  # the DELETEs did nothing

    # Any other route: 401, as a Bearer value or as ?token= (a POST included).
    body = {"model": "demo/echo", "prompt": "x"}
    for method, path, payload in (("POST", "/v1/streams", body), ("GET", "/v1/models", None)):
        unauthorized(sidecar.request(method, path, payload, bearer(token)), OTHER_ROUTE)
        unauthorized(sidecar.request(method, f"{path}?token={token}", payload), OTHER_ROUTE)
    unauthorized(sidecar.request("POST", f"/v1/streams?token={token}",
                                 {**body, "detach": True}), OTHER_ROUTE)

    # Expired, altered, or signed with another secret: 401 with a clear message.
    stream_path = mine["status_url"]
    for bad, message in ((expired_token(KEY, mine["stream_id"]), EXPIRED),
                         (altered(token), INVALID),
                         (altered(token, sibling["stream_id"]), INVALID),
                         (expired_token(KEY, mine["stream_id"], secrets.token_urlsafe(32)),
                          INVALID),
                         (token[:-3], INVALID)):
        for method, suffix in (("GET", ""), ("GET", "/events"), ("DELETE", "")):
            unauthorized(sidecar.request(method, f"{stream_path}{suffix}", headers=bearer(bad)),
                         message)
            unauthorized(sidecar.request(method, f"{stream_path}{suffix}?token={bad}"), message)
    unauthorized(sidecar.request("GET", f"{stream_path}?token={KEY}"), NOT_A_TOKEN)
    # A Bearer value without the token's prefix is a (wrong) key.
    unauthorized(sidecar.request("GET", stream_path, headers=bearer(token[len(PREFIX):])),
                 NO_KEY)

    # Keys are tried first: a key's request is the key's, whatever token it carries.
    assert sidecar.request("GET", f"{sibling['status_url']}?token={token}",
                           headers=bearer(KEY)).status == 200
    # The stream still runs: nothing above cancelled it.
    assert sidecar.request("GET", stream_path, headers=bearer(token)).json()["status"] == \
        "running"
    log = sidecar.log()
    assert token not in log and token.split(".")[-1] not in log
    assert KEY not in log  # also when sent where a token goes
    assert f"{stream_path}?token=[redacted]" in log
    for created in (mine, sibling):
        sidecar.request("DELETE", created["status_url"], headers=bearer(KEY))
    sidecar.request("DELETE", theirs["status_url"], headers=bearer(OTHER))


def test_token_requests_count_for_their_key(fake: FakeProvider) -> None:
    """Rate limits, reader caps and failed authentications, with tokens."""
    env = gateway_env(fake, API_KEYS=KEY, STREAM_TOKEN_SECRET=SECRET,
                      RATELIMIT_CANCEL="3/minute", MAX_READERS_PER_KEY="2",
                      RATELIMIT_AUTH_FAILURES="3/minute")
    model = fake.scenario(tokens=["a", "b"], stall_after=1, stall_s=30)
    with GatewayServer(env) as server:
        created = detach(server, f"openai/{model}", resume_grace_s=30)
        token, status_url = created["token"], created["status_url"]

        # Reader caps: one reader by key and one by token make the key's two.
        by_key = server.stream("GET", created["events_url"], headers=bearer(KEY))
        by_token = server.stream("GET", f"{created['events_url']}?token={token}")
        assert by_key.status == by_token.status == 200
        third = server.request("GET", f"{created['events_url']}?token={token}")
        assert third.status == 429
        assert third.json()["error"]["code"] == "too_many_readers"
        by_key.close()
        by_token.close()

        # Failed authentications are counted per address: altered tokens are guesses...
        for _ in range(3):
            unauthorized(request_from(server, "127.0.0.2", "GET", status_url,
                                      bearer(altered(token))), INVALID)
        locked = request_from(server, "127.0.0.2", "GET", status_url, bearer(token))
        assert locked.status == 429 and int(locked.headers["retry-after"]) > 0
        # ...an expired token of ours is not.
        for _ in range(5):
            unauthorized(request_from(server, "127.0.0.3", "GET", status_url,
                                      bearer(expired_token(KEY, created["stream_id"]))),
                         EXPIRED)
        assert request_from(server, "127.0.0.3", "GET", status_url, bearer(token)).status == 200

        # Request rates: the key's and its tokens' requests share one count.
        assert server.request("DELETE", status_url, headers=bearer(token)).status == 202
        assert fake.wait_closed(model).outcome == "peer_closed"
        assert ended(server, status_url, bearer(KEY))["status"] == "cancelled"
        statuses = [server.request("DELETE", status_url, headers=h).status
                    for h in (bearer(KEY), bearer(token), bearer(token), bearer(KEY))]
        assert statuses == [200, 200, 429, 429]


# ------------------------------------------------------------------------------- secrets


def test_hosts_with_the_same_keys_accept_each_others_tokens(fake: FakeProvider) -> None:
    """No STREAM_TOKEN_SECRET: the secret is derived from the keys, so two instances
    (two hosts, as far as tokens go) agree; another set of keys does not."""
    env = gateway_env(fake, API_KEYS=f"{KEY},{OTHER}", REDIS_URL=REDIS_URL)
    rotated = gateway_env(fake, API_KEYS=f"{KEY},sk-new-{secrets.token_hex(8)}",
                          REDIS_URL=REDIS_URL)
    model = fake.scenario(tokens=TOKENS, delay=0.01)
    with GatewayServer(env) as first, GatewayServer({**env, "API_KEYS": f"{OTHER},{KEY}"}
                                                    ) as second, GatewayServer(rotated) as third:
        created = detach(first, f"openai/{model}", resume_grace_s=30)
        events = second.stream("GET", f"{created['events_url']}?token={created['token']}"
                               ).read_all()
        assert tokens_text(events) == "".join(TOKENS)
        assert events[-1].event == "done"
        assert "development secret" not in first.log()
        # The keys changed: every token signed before is refused, with the reason.
        unauthorized(third.request("GET", created["status_url"],
                                   headers=bearer(created["token"])), INVALID)
        assert third.request("GET", created["status_url"], headers=bearer(KEY)).status == 200


def test_an_open_gateway_signs_with_the_development_secret_and_says_so(
        fake: FakeProvider) -> None:
    origin = "http://127.0.0.1:1"
    with GatewayServer(gateway_env(fake, CORS_ORIGINS=origin)) as server:
        log = server.log()
        assert log.count("no API keys configured") == 1
        assert ("stream tokens are signed with a fixed development secret that anyone can use "
                "(set STREAM_TOKEN_SECRET)") in log
        first = server.request("POST", "/v1/streams", {"model": "demo/echo", "prompt": "a b",
                                                       "detach": True}, {"Origin": origin})
        assert first.status == 201
        exposed = first.headers["access-control-expose-headers"]
        assert "X-Stream-Token" in [h.strip() for h in exposed.split(",")]
        second = server.request("POST", "/v1/streams", {"model": "demo/echo", "prompt": "c",
                                                        "detach": True})
        token = first.json()["token"]
        # A token still binds its request: its own stream only.
        assert server.request("GET", f"{first.json()['status_url']}?token={token}"
                              ).status == 200
        assert server.request("GET", f"{second.json()['status_url']}?token={token}"
                              ).status == 404
        assert server.request("GET", second.json()["status_url"]).status == 200  # open
        unauthorized(server.request("POST", f"/v1/streams?token={token}",
                                    {"model": "demo/echo", "prompt": "x"}), OTHER_ROUTE)
        unauthorized(server.request("GET", first.json()["status_url"],
                                    headers=bearer(altered(token))), INVALID)
        # Any other Bearer value (an SDK's placeholder key) is ignored, as before.
        assert server.request("GET", "/v1/models", headers=bearer("sk-anything")).status == 200
        # The browser's preflight for DELETE with the token in Authorization passes.
        preflight = server.request("OPTIONS", first.json()["status_url"], headers={
            "Origin": origin, "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "authorization"})
        assert preflight.status == 200
        assert preflight.headers["access-control-allow-origin"] == origin
