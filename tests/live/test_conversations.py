"""Conversations kept by the gateway, live: two gunicorn instances on one Redis.

Turn 1 on instance A, turn 2 on B: the fake provider's second request carries
the history A kept. Another key neither sees nor extends the conversation; a
stream token opens none of its routes; DELETE forgets it; it expires by
itself; a start over its bounds answers 413 before any provider request.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import record
from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer, Reply, tokens_text
from tests.test_broker import REDIS_URL

# Fresh keys each run: the rate counts live in Redis for the window.
KEY, OTHER, RATED = (f"sk-conv-{secrets.token_hex(8)}" for _ in range(3))
TTL_S = 2.5
MAX_TURNS = 6
RATE = 40  # GETs (and DELETEs) an hour per key: a window far longer than the test


@dataclass
class Pair:
    a: GatewayServer
    b: GatewayServer


@pytest.fixture(scope="module")
def pair(fake: FakeProvider) -> Iterator[Pair]:
    env = pair_env(fake)
    a, b = GatewayServer(env, label="A"), GatewayServer(env, label="B")
    try:
        a.start(wait=False)
        b.start(wait=False)  # both boot at once
        a.wait_ready()
        b.wait_ready()
        yield Pair(a, b)
    finally:
        a.stop()
        b.stop()


def pair_env(fake: FakeProvider) -> dict[str, str]:
    return gateway_env(fake, REDIS_URL=REDIS_URL, API_KEYS=f"{KEY},{OTHER},{RATED}",
                      CONVERSATION_TTL_S=str(TTL_S), MAX_CONVERSATION_TURNS=str(MAX_TURNS),
                      MAX_CONVERSATION_BYTES="6000", RATELIMIT_STATUS=f"{RATE}/hour",
                      RATELIMIT_CANCEL=f"{RATE}/hour", PRODUCER_TIMEOUT_S="1")


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def say(server: GatewayServer, model: str, conversation: str, key: str = KEY,
        **fields: Any) -> tuple[list[Any], str]:
    """One turn, read to its end: its events and its stream id."""
    if "messages" not in fields:
        fields.setdefault("prompt", "hi")
    stream = server.stream("POST", "/v1/streams", {"model": f"openai/{model}",
                                                   "conversation_id": conversation, **fields},
                           headers=auth(key))
    assert stream.status == 200, stream.response.read()
    return stream.read_all(), stream.header("X-Stream-ID") or ""


def sent(fake: FakeProvider, model: str, index: int) -> list[tuple[str, Any]]:
    """What the provider's request ``index`` for ``model`` carried: (role, content)."""
    body = fake.wait_call(model, index).body
    assert isinstance(body, dict)
    return [(m["role"], m["content"]) for m in body["messages"]]


def conversation(server: GatewayServer, conversation_id: str, key: str = KEY) -> Reply:
    return server.request("GET", f"/v1/conversations/{conversation_id}", headers=auth(key))


def test_turn_two_on_b_sends_the_history_kept_on_a(pair: Pair, fake: FakeProvider) -> None:
    model = fake.scenario_seq([fake_behaviour(["Hel", "lo"]), fake_behaviour(["Fine."])])
    first, s1 = say(pair.a, model, "trip", prompt="Hi")
    assert tokens_text(first) == "Hello" and first[-1].event == "done"
    second, s2 = say(pair.b, model, "trip",
                     messages=[{"role": "user", "content": "How are you?"}])
    assert tokens_text(second) == "Fine."
    assert sent(fake, model, 0) == [("user", "Hi")]
    assert sent(fake, model, 1) == [("user", "Hi"), ("assistant", "Hello"),
                                    ("user", "How are you?")]
    assert len(fake.calls(model)) == 2
    reply = conversation(pair.a, "trip")
    assert reply.status == 200
    answer = {"tool_calls": None, "reasoning": None, "refusal": None, "provider_data": None}
    assert reply.json() == {"conversation_id": "trip", "messages": [
        {"role": "user", "content": "Hi", "stream_id": s1},
        {"role": "assistant", "content": "Hello", **answer, "stream_id": s1, "status": "done"},
        {"role": "user", "content": "How are you?", "stream_id": s2},
        {"role": "assistant", "content": "Fine.", **answer, "stream_id": s2, "status": "done"},
    ]}
    assert conversation(pair.b, "trip").body == reply.body


def fake_behaviour(tokens: list[str], **fields: Any) -> Any:
    from tests.fake_provider import Behaviour

    return Behaviour(tokens=tokens, delay=0.01, **fields)


def test_another_key_neither_sees_nor_extends_it(pair: Pair, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["ok"], delay=0.01)
    say(pair.a, model, "shared-id", prompt="alpha's")
    for method in ("GET", "DELETE"):
        reply = pair.b.request(method, "/v1/conversations/shared-id", headers=auth(OTHER))
        assert reply.status == 404
        assert reply.json()["error"]["code"] == "not_found"
    say(pair.b, model, "shared-id", key=OTHER, prompt="beta's")
    assert sent(fake, model, 1) == [("user", "beta's")]  # not alpha's history
    mine = conversation(pair.a, "shared-id").json()["messages"]
    theirs = conversation(pair.a, "shared-id", OTHER).json()["messages"]
    assert [t["content"] for t in mine] == ["alpha's", "ok"]
    assert [t["content"] for t in theirs] == ["beta's", "ok"]


def test_a_stream_token_opens_no_conversation_route(pair: Pair, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["ok"], delay=0.01)
    stream = pair.a.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x",
                                                   "conversation_id": "tokened"},
                           headers=auth())
    token = stream.header("X-Stream-Token")
    stream.read_all()
    for method in ("GET", "DELETE"):
        for headers, query in (({"Authorization": f"Bearer {token}"}, ""),
                               ({}, f"?token={token}")):
            reply = pair.a.request(method, f"/v1/conversations/tokened{query}", headers=headers)
            assert reply.status == 401, (method, query)
    assert conversation(pair.a, "tokened").status == 200  # still there


def test_delete_forgets_it(pair: Pair, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["ok"], delay=0.01)
    say(pair.a, model, "to-forget", prompt="1")
    reply = pair.b.request("DELETE", "/v1/conversations/to-forget", headers=auth())
    assert (reply.status, reply.body) == (204, b"")
    assert conversation(pair.a, "to-forget").status == 404
    assert pair.a.request("DELETE", "/v1/conversations/to-forget", headers=auth()).status == 404
    say(pair.a, model, "to-forget", prompt="2")
    assert sent(fake, model, 1) == [("user", "2")]  # a new conversation


def test_a_cancel_on_b_keeps_the_answer_as_far_as_it_got(pair: Pair, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["Once ", "upon ", "a ", "time"], delay=0.02, stall_after=2,
                          stall_s=30)
    stream = pair.a.stream("POST", "/v1/streams", {"model": f"openai/{model}",
                                                   "prompt": "A story",
                                                   "conversation_id": "story"},
                           headers=auth())
    stream_id = stream.header("X-Stream-ID")
    seen = [stream.read_until(lambda e: e.event == "token").event]
    seen.append(stream.read_until(lambda e: e.event == "token").event)
    assert pair.b.request("DELETE", f"/v1/streams/{stream_id}", headers=auth()).status == 202
    events = stream.read_all()
    assert events[-1].event == "cancelled"
    assert fake.wait_closed(model).outcome == "peer_closed"
    last = conversation(pair.b, "story").json()["messages"][-1]
    assert (last["content"], last["status"], last["stream_id"]) == (
        tokens_text(events), "cancelled", stream_id)
    assert last["content"] == "Once upon "


def test_a_start_over_the_bounds_answers_413_before_any_provider_request(
        pair: Pair, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["ok"], delay=0.01)
    turns = 0
    while True:  # small turns, on both instances, until the turn bound refuses
        server = pair.a if turns % 2 == 0 else pair.b
        reply = server.request("POST", "/v1/streams", {
            "model": f"openai/{model}", "prompt": f"turn {turns}",
            "conversation_id": "bounded"}, headers=auth())
        if reply.status != 200:
            break
        turns += 1
    assert turns == MAX_TURNS // 2  # each turn keeps a message and its answer
    assert reply.status == 413
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("payload_too_large", "conversation_id")
    assert f"more than {MAX_TURNS} messages" in error["message"]
    assert len(fake.calls(model)) == turns
    assert len(conversation(pair.a, "bounded").json()["messages"]) == 2 * turns
    # One big message in a fresh conversation: the byte bound.
    big = pair.b.request("POST", "/v1/streams", {"model": f"openai/{model}",
                                                 "prompt": "x" * 6000,
                                                 "conversation_id": "big"}, headers=auth())
    assert big.status == 413
    assert "6000 bytes" in big.json()["error"]["message"]
    assert conversation(pair.a, "big").status == 404
    assert len(fake.calls(model)) == turns


def test_bad_ids_and_other_routes(pair: Pair) -> None:
    reply = pair.a.request("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x",
                                                   "conversation_id": "no spaces"},
                           headers=auth())
    assert reply.status == 400 and reply.json()["error"]["param"] == "conversation_id"
    reply = pair.a.request("POST", "/v1/chat/completions", {
        "model": "demo/echo", "messages": [{"role": "user", "content": "x"}],
        "conversation_id": "c1"}, headers=auth())
    assert reply.status == 400 and reply.json()["error"]["param"] == "conversation_id"
    reply = pair.a.request("POST", "/v1/ai-sdk/chat", {
        "id": "chat", "conversation_id": "c1", "messages": [
            {"id": "m", "role": "user", "parts": [{"type": "text", "text": "x"}]}]},
        headers=auth())
    assert reply.status == 400 and reply.json()["error"]["param"] == "conversation_id"
    assert pair.a.request("GET", "/v1/conversations/x", headers={}).status == 401


def test_it_expires_its_ttl_after_its_last_turn(pair: Pair, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["ok"], delay=0.01)
    say(pair.a, model, "fleeting", prompt="1")
    added = time.monotonic()
    assert conversation(pair.b, "fleeting").status == 200
    deadline = added + TTL_S + 10
    while conversation(pair.b, "fleeting").status == 200:
        assert time.monotonic() < deadline, "the conversation did not expire"
        time.sleep(0.1)  # polling: Redis expires the key by its own clock, unannounced
    gone = time.monotonic() - added
    record("conversation_expired_after_s", gone)
    assert gone >= TTL_S - 0.5


def test_the_routes_are_rate_limited_per_key(pair: Pair) -> None:
    """GET counts as the status route, DELETE as the cancel route, on every instance."""
    for method in ("GET", "DELETE"):
        for i in range(RATE):
            server = pair.a if i % 2 == 0 else pair.b
            reply = server.request(method, "/v1/conversations/none", headers=auth(RATED))
            assert reply.status == 404, (method, i, reply.status)
        refused = pair.b.request(method, "/v1/conversations/none", headers=auth(RATED))
        assert refused.status == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) > 0
    assert conversation(pair.a, "none").status == 404  # another key: its own count


def test_a_lost_streams_answer_is_kept_by_the_instance_that_declares_it_lost(
        pair: Pair, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["Half ", "way ", *(["more "] * 200)], delay=0.05)
    with GatewayServer(pair_env(fake), label="C") as producer_host:
        assert producer_host.process is not None
        first = producer_host.stream("POST", "/v1/streams", {
            "model": f"openai/{model}", "prompt": "Go", "conversation_id": "lost"},
            headers=auth())
        stream_id = first.header("X-Stream-ID")
        reader = pair.a.stream("GET", f"/v1/streams/{stream_id}/events", headers=auth())
        reader.read_until(lambda e: e.event == "token")
        reader.read_until(lambda e: e.event == "token")
        master = producer_host.process.pid
        (worker,) = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        os.kill(int(worker), signal.SIGKILL)
        events = reader.read_all()
        assert events[-1].event == "error" and events[-1].json()["code"] == "stream_lost"
        deadline = time.monotonic() + 10
        while len(turns := conversation(pair.a, "lost").json()["messages"]) < 2:
            assert time.monotonic() < deadline, turns
            time.sleep(0.05)  # polling: the answer is added just after the end is stored
        answer = turns[1]
        assert (answer["status"], answer["stream_id"]) == ("error", stream_id)
        assert answer["content"] == tokens_text(events)  # what the store kept, all of it
        assert answer["content"].startswith("Half way ")
