"""One key's conversations together, live: a real gunicorn worker on Redis with a
small MAX_CONVERSATION_BYTES_PER_KEY.

A key that makes conversation after conversation keeps only its newest ones
(as many as fit): the oldest answer 404, as expired, and a start with such an
id begins anew; another key's conversation of the same id is untouched; the
worker's log names what it forgot, never what was said.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.security import key_id
from sse_gateway.broker.base import CONVERSATION_OVERHEAD
from tests.conftest import record
from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer, tokens_text
from tests.test_broker import REDIS_URL

KEY, OTHER = (f"sk-bound-{secrets.token_hex(8)}" for _ in range(2))
PER_KEY = 4500  # MAX_CONVERSATION_BYTES_PER_KEY: about 5 conversations of one exchange
MADE = 8  # conversations the key makes


@pytest.fixture(scope="module")
def gateway(fake: FakeProvider) -> Iterator[GatewayServer]:
    server = GatewayServer(gateway_env(fake, REDIS_URL=REDIS_URL, API_KEYS=f"{KEY},{OTHER}",
                                       MAX_CONVERSATION_BYTES=str(PER_KEY),
                                       MAX_CONVERSATION_BYTES_PER_KEY=str(PER_KEY)),
                           label="bound")
    try:
        yield server.start()
    finally:
        server.stop()


def say(server: GatewayServer, model: str, conversation: str, key: str, prompt: str) -> str:
    """One turn, read to its end: its text."""
    stream = server.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": prompt,
                                                   "conversation_id": conversation},
                           headers={"Authorization": f"Bearer {key}"})
    assert stream.status == 200, stream.response.read()
    events = stream.read_all()
    assert events[-1].event == "done"
    return tokens_text(events)


def kept(server: GatewayServer, conversation: str, key: str) -> tuple[int, Any]:
    reply = server.request("GET", f"/v1/conversations/{conversation}",
                           headers={"Authorization": f"Bearer {key}"})
    return reply.status, reply.json()


def stored_size(messages: list[dict[str, Any]]) -> int:
    """The bytes the store counts for these turns: each as compact UTF-8 JSON."""
    return sum(len(json.dumps(m, ensure_ascii=False, separators=(",", ":")).encode())
               for m in messages)


def test_a_keys_oldest_conversations_are_forgotten_another_keys_are_not(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["o", "k"], delay=0.001)
    assert say(gateway, model, "bound-00", OTHER, "mine") == "ok"
    theirs = kept(gateway, "bound-00", OTHER)
    started = time.monotonic()
    ids = [f"bound-{i:02d}" for i in range(MADE)]  # one length: every one keeps the same bytes
    for conversation in ids:
        say(gateway, model, conversation, KEY, "hi")
    elapsed = time.monotonic() - started
    status, newest = kept(gateway, ids[-1], KEY)
    assert status == 200
    size = stored_size(newest["messages"])
    fit = PER_KEY // (size + CONVERSATION_OVERHEAD)  # each counts the overhead too
    assert 2 <= fit < MADE, size
    statuses = [kept(gateway, conversation, KEY)[0] for conversation in ids]
    assert statuses == [404] * (MADE - fit) + [200] * fit
    for conversation in ids[MADE - fit:]:  # the kept ones are whole
        assert [m["content"] for m in kept(gateway, conversation, KEY)[1]["messages"]] == [
            "hi", "ok"]
    assert kept(gateway, "bound-00", OTHER) == theirs  # same id, another key: untouched
    assert [m["content"] for m in theirs[1]["messages"]] == ["mine", "ok"]
    # A start with a forgotten id begins a new conversation: the provider is sent
    # only its own message (the oldest kept one is forgotten for room).
    calls = len(fake.calls(model))
    say(gateway, model, ids[0], KEY, "again")
    body = fake.wait_call(model, calls).body
    assert isinstance(body, dict)
    assert [(m["role"], m["content"]) for m in body["messages"]] == [("user", "again")]
    assert kept(gateway, ids[MADE - fit], KEY)[0] == 404
    assert len(fake.calls(model)) == calls + 1
    log = gateway.log()
    owner = key_id(hashlib.sha256(KEY.encode()).digest())
    for conversation in ids[:MADE - fit + 1]:  # the last one for "again"
        assert (f"conversation {conversation} of key {owner!r} ({size} bytes) forgotten: the "
                "key's conversations keep more than their bound") in log
    assert log.count(" forgotten: the key's") == MADE - fit + 1
    assert KEY not in log  # the key's id is logged, never the key itself
    assert '"hi"' not in log and "again" not in log  # nor what was said
    record(f"conversation bound: {MADE} one-exchange conversations (ms)", elapsed * 1000)
