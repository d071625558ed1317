"""Batching and smoothing through the real gunicorn, the real SDKs and the fake provider.

The fake sends its deltas a few ms apart (``make bench`` figure 9 measures
realistic cadences); what the client reads is checked for exactness, for fewer
and larger events, for the first token arriving alone, for boundaries, and for a
resume whose bytes are those of a reader who never dropped. Both providers, both
brokers.
"""

from __future__ import annotations

from typing import Any

import pytest
from httpx_sse import ServerSentEvent

import fake_wire as fw
from sse_gateway.pump.batching import boundary
from tests.conftest import record
from tests.fake_provider import FakeProvider
from tests.live.gateway import GatewayServer, tokens_text

# Lorem ipsum, with a sentence ending every seven words.
WORDS = [f"{w}." if i % 7 == 6 else w for i, w in enumerate(fw.lorem_tokens(60))]


def read(gateway: GatewayServer, body: dict[str, Any]) -> tuple[str, list[ServerSentEvent]]:
    stream = gateway.stream("POST", "/v1/streams", body)
    assert stream.status == 200, bytes(stream.response.read())
    events = stream.read_all()
    assert [e.id for e in events] == [str(i) for i in range(len(events))]
    assert events[-1].event == "done"
    stream_id = stream.header("X-Stream-ID")
    assert stream_id
    return stream_id, events


def tokens(events: list[ServerSentEvent]) -> list[str]:
    return [e.json()["content"] for e in events if e.event == "token"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_coalescing_merges_deltas_into_fewer_events_and_keeps_the_text_exact(
        gateway: GatewayServer, fake: FakeProvider, provider: str) -> None:
    model = fake.scenario(fw.Behaviour(tokens=WORDS, delay=0.005))
    _, events = read(gateway, {"model": f"{provider}/{model}", "prompt": "hi",
                               "coalesce_ms": 500})
    got = tokens(events)
    assert "".join(got) == "".join(WORDS)
    assert got[0] == WORDS[0]  # the first token is never held
    assert all(got)
    # 60 deltas 5 ms apart (0.3 s) in 500 ms windows: about 2 events; more than 20
    # would take the answer stretching past 10 s (a busy machine only merges more).
    record("coalesced_events_of_60_deltas", len(got))
    assert len(got) <= len(WORDS) // 3, len(got)
    assert len(fake.calls(model)) == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_sentence_chunking_ends_events_on_sentences(
        gateway: GatewayServer, fake: FakeProvider, provider: str) -> None:
    model = fake.scenario(fw.Behaviour(tokens=WORDS, delay=0.002))
    _, events = read(gateway, {"model": f"{provider}/{model}", "prompt": "hi",
                               "chunking": "sentence"})
    got = tokens(events)
    assert "".join(got) == "".join(WORDS)
    assert got[0] == WORDS[0]
    for text in got[1:-1]:
        assert boundary(text, "sentence") == len(text), got
    # The first token, each sentence, and what follows the last one.
    assert len(got) == 1 + "".join(WORDS).count(". ") + 1


def test_tool_call_arguments_coalesce_too(gateway: GatewayServer, fake: FakeProvider) -> None:
    fragments = ['{"ci', 'ty": ', '"Par', 'is", ', '"unit', 's": "c"}']
    model = fake.scenario(fw.Behaviour(
        tokens=["Checking.", fw.ToolCall(0, "call_1", "weather"),
                *(fw.ToolArgs(0, f) for f in fragments)],
        delay=0.005, finish_reason="tool_calls"))
    _, events = read(gateway, {"model": f"openai/{model}", "prompt": "hi",
                               "coalesce_ms": 500})
    names = [e.event for e in events]
    assert names == ["start", "token", "tool_call", "tool_call_delta", "tool_call_done", "done"]
    assert events[3].json() == {"index": 0, "arguments": "".join(fragments)}


def test_a_resume_of_a_coalesced_stream_is_byte_identical(
        gateway: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(fw.Behaviour(tokens=WORDS, delay=0.01))
    stream = gateway.stream("POST", "/v1/streams", {
        "model": f"anthropic/{model}", "prompt": "hi", "coalesce_ms": 50,
        "chunking": "word", "resume_grace_s": 30})
    stream_id = stream.header("X-Stream-ID")
    seen = stream.read_until(lambda e: e.event == "token" and e.id != "1")
    stream.drop()
    position = seen.event.id
    assert position is not None
    rest = gateway.stream("GET", f"/v1/streams/{stream_id}/events",
                          headers={"Last-Event-ID": position})
    assert rest.status == 200
    after = rest.read_all()
    assert after[0].id == str(int(position) + 1) and after[-1].event == "done"
    whole = gateway.stream("GET", f"/v1/streams/{stream_id}/events")
    replay = whole.read_all()
    assert tokens_text(replay) == "".join(WORDS)
    # The resumed bytes are exactly the replay's after that position.
    strip = lambda raw: raw.replace(b": ping\n", b"")  # noqa: E731 - heartbeats may differ
    tail = strip(bytes(whole.raw))[strip(bytes(whole.raw)).index(
        f"id: {int(position) + 1}\n".encode()):]
    assert strip(bytes(rest.raw)).removeprefix(b"retry: 2000\n") == tail
    assert len(fake.calls(model)) == 1
