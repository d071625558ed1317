"""Conversations kept by the streams service, in process: memory broker, a scripted
provider that records what it was asked, a fake clock for the expiry.

What is asserted is what a client sees (the kept turns, the 413s and 400s, the
events) and what the provider was sent (the history, then the new messages).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator, Sequence
from typing import Any

import pytest

from sse_gateway.broker import StreamInfo
from sse_gateway.broker.base import CONVERSATION_OVERHEAD
from sse_gateway.config import ConfigError, StreamsConfig
from sse_gateway.errors import InvalidRequest, NotFound, RequestTooLarge
from sse_gateway.events import Event
from sse_gateway.providers.base import (
    ChatRequest,
    Delta,
    Finished,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    UpstreamUnavailable,
    Usage,
)
from sse_gateway.reader import Reader
from sse_gateway.streams import Streams
from sse_gateway.streams.service import Detached, broker_options
from tests.fake_clock import FakeClock
from tests.test_streams import (
    HANG,
    HOLDER,
    OWNER,
    GreenMemoryBroker,
    Scripted,
    names,
    read_all,
    read_until,
)

CONV = "chat-1"


class Recording(Scripted):
    """The scripted provider, keeping every request it was sent; each request plays
    the next script (the last one repeats)."""

    def __init__(self, *scripts: Sequence[Any]) -> None:
        super().__init__(scripts[0])
        self.scripts = scripts
        self.requests: list[ChatRequest] = []

    def stream(self, request: ChatRequest) -> Generator[Delta, None, None]:
        self.script = self.scripts[min(len(self.requests), len(self.scripts) - 1)]
        self.requests.append(request)
        return super().stream(request)

    def sent(self, index: int = -1) -> list[tuple[str, str]]:
        """What request ``index`` sent: (role, text) per message."""
        return [(m.role, m.text) for m in self.requests[index].messages]


def answer(text: str) -> list[Any]:
    return [TextDelta(text), Usage(1, 1), Finished("stop")]


def service(*scripts: Sequence[Any], clock: FakeClock | None = None,
            **config: Any) -> tuple[Streams, Recording]:
    provider = Recording(*(scripts or (answer("Hello"),)))
    settings = StreamsConfig(models=("scripted/a",), heartbeat_s=0.05, producer_timeout_s=0.2,
                             shutdown_margin_s=0.0, **config).check()
    broker = GreenMemoryBroker(broker_options(settings), clock=clock or FakeClock())
    return Streams(settings, broker=broker, providers={"scripted": provider}), provider


def body(conversation_id: str | None = CONV, **fields: Any) -> dict[str, Any]:
    fields.setdefault("prompt", "hi") if "messages" not in fields else None
    return {"model": "scripted/a", **fields,
            **({"conversation_id": conversation_id} if conversation_id is not None else {})}


def turn(streams: Streams, owner: str = OWNER, stream_id: str | None = None,
         **fields: Any) -> list[Event]:
    """One request of the conversation, read to its end."""
    reader = streams.start(streams.parse(body(**fields)), owner=owner, holder=owner,
                           stream_id=stream_id)
    assert isinstance(reader, Reader)
    return read_all(reader)


def kept(streams: Streams, owner: str = OWNER) -> list[dict[str, Any]]:
    return streams.conversation(owner, CONV)


def test_turns_are_kept_and_sent_before_the_new_messages() -> None:
    streams, provider = service(answer("Hello"), answer("Fine"))
    first = turn(streams, prompt="Hi", stream_id="s" * 16)
    assert names(first)[-1] == "done"
    assert kept(streams) == [
        {"role": "user", "content": "Hi", "stream_id": "s" * 16},
        {"role": "assistant", "content": "Hello", "tool_calls": None, "reasoning": None,
         "refusal": None, "provider_data": None, "stream_id": "s" * 16, "status": "done"}]
    turn(streams, messages=[{"role": "user", "content": "How are you?"}])
    assert provider.sent(0) == [("user", "Hi")]
    assert provider.sent(1) == [("user", "Hi"), ("assistant", "Hello"),
                                ("user", "How are you?")]
    assert [t["content"] for t in kept(streams)] == ["Hi", "Hello", "How are you?", "Fine"]


def test_a_request_without_a_conversation_keeps_nothing() -> None:
    streams, provider = service()
    turn(streams, conversation_id=None)
    with pytest.raises(NotFound):
        kept(streams)
    assert provider.sent() == [("user", "hi")]


def test_a_cancelled_answer_is_kept_as_far_as_it_got_and_sent_on() -> None:
    streams, provider = service([TextDelta("Once upon"), HANG], answer("The end"))
    reader = streams.start(streams.parse(body(prompt="Tell a story")), owner=OWNER,
                           holder=HOLDER, stream_id="c" * 16)
    assert isinstance(reader, Reader)
    batches = reader.batches()
    read_until(batches, "token")
    streams.cancel("c" * 16, OWNER)
    assert names(read_all(batches)) == ["cancelled"]
    last = kept(streams)[-1]
    assert (last["content"], last["status"], last["stream_id"]) == ("Once upon", "cancelled",
                                                                    "c" * 16)
    turn(streams, prompt="Go on")
    assert provider.sent() == [("user", "Tell a story"), ("assistant", "Once upon"),
                               ("user", "Go on")]


def test_a_conversation_deleted_while_it_answers_is_not_brought_back_by_the_answer() -> None:
    streams, provider = service([TextDelta("Once upon"), HANG], answer("Hi there"))
    reader = streams.start(streams.parse(body(prompt="Tell a story")), owner=OWNER,
                           holder=HOLDER, stream_id="d" * 16)
    assert isinstance(reader, Reader)
    batches = reader.batches()
    read_until(batches, "token")
    streams.forget_conversation(OWNER, CONV)
    streams.cancel("d" * 16, OWNER)
    assert names(read_all(batches)) == ["cancelled"]
    with pytest.raises(NotFound):  # the answer alone would begin the next history
        kept(streams)
    turn(streams, prompt="Hello")
    assert provider.sent() == [("user", "Hello")]


def test_an_answer_that_failed_before_any_output_is_kept_marked_but_not_sent() -> None:
    streams, provider = service([UpstreamUnavailable("down", provider="scripted")],
                                answer("Back"), retry_max_attempts=1)
    assert names(turn(streams, prompt="Hi"))[-1] == "error"
    assert [(t["role"], t["content"], t.get("status")) for t in kept(streams)] == [
        ("user", "Hi", None), ("assistant", "", "error")]
    turn(streams, prompt="Hi again")
    # An empty assistant message is refused by providers (Anthropic): left out.
    assert provider.sent() == [("user", "Hi"), ("user", "Hi again")]


def test_tool_calls_and_results_across_turns() -> None:
    call = [ToolCallStart(0, "call_1", "get_weather"), ToolCallDelta(0, '{"city":"Paris"}'),
            ToolCallEnd(0), Finished("tool_calls")]
    streams, provider = service(call, answer("Sunny"))
    turn(streams, prompt="Weather in Paris?")
    calls = kept(streams)[-1]["tool_calls"]
    assert calls == [{"id": "call_1", "type": "function",
                      "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    # The tool result answers a call the client did not send again: the kept one.
    turn(streams, messages=[{"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    sent = provider.requests[-1].messages
    assert [m.role for m in sent] == ["user", "assistant", "tool"]
    assert sent[1].tool_calls[0].id == "call_1"
    # One answering no call at all is refused, named as the client sent it.
    with pytest.raises(InvalidRequest) as refused:
        turn(streams, messages=[{"role": "user", "content": "x"},
                                {"role": "tool", "tool_call_id": "call_9", "content": "?"}])
    assert refused.value.param == "messages.1.tool_call_id"
    assert refused.value.message.startswith("messages.1.tool_call_id: 'call_9'")


def test_the_turn_bound_is_checked_before_anything_streams() -> None:
    streams, provider = service(max_conversation_turns=5)
    turn(streams, prompt="1")  # 2 turns
    turn(streams, prompt="2")  # 4 turns
    with pytest.raises(RequestTooLarge) as full:
        turn(streams, prompt="3")  # 5, and its answer: 6
    assert (full.value.status, full.value.code, full.value.param) == (
        413, "payload_too_large", "conversation_id")
    assert "keeps 4 messages" in full.value.message
    assert "more than 5 messages" in full.value.message
    assert "DELETE" in full.value.message and "new conversation" in full.value.message
    assert len(provider.requests) == 2 and streams.active == 0
    assert len(kept(streams)) == 4  # nothing added by the refusal
    # Many messages at once do not get around it either.
    streams2, _ = service(max_conversation_turns=5)
    with pytest.raises(RequestTooLarge):
        turn(streams2, messages=[{"role": "user", "content": str(i)} for i in range(5)])
    with pytest.raises(NotFound):
        kept(streams2)


def test_the_byte_bound_counts_every_turn_small_or_big() -> None:
    streams, provider = service(answer("ok"), max_conversation_bytes=2000)
    for i in range(8):  # many small turns, until the next one no longer fits
        try:
            turn(streams, prompt=f"small {i} " + "x" * 60)
        except RequestTooLarge:
            break
    else:
        raise AssertionError("the byte bound never refused")
    total = sum(len(json.dumps(t, ensure_ascii=False, separators=(",", ":")).encode())
                for t in kept(streams))
    assert total <= 2000
    opened = len(provider.requests)
    # One big message alone does not fit either, even in a fresh conversation.
    with pytest.raises(RequestTooLarge, match="2000 bytes"):
        turn(streams, conversation_id="other", prompt="y" * 2000)
    assert len(provider.requests) == opened


def test_an_answer_too_large_to_keep_is_kept_as_a_marker() -> None:
    streams, provider = service(answer("z" * 3000), answer("short"),
                                max_conversation_bytes=2000)
    turn(streams, prompt="Write a lot", stream_id="b" * 16)
    assert kept(streams)[-1] == {"role": "assistant", "content": "", "stream_id": "b" * 16,
                                 "status": "done", "omitted": "too_large"}
    turn(streams, prompt="Shorter please")
    assert provider.sent() == [("user", "Write a lot"), ("user", "Shorter please")]


def test_a_conversation_expires_its_ttl_after_its_last_turn() -> None:
    clock = FakeClock()
    streams, provider = service(clock=clock, conversation_ttl_s=60)
    turn(streams, prompt="1")
    clock.now += 50
    turn(streams, prompt="2")  # refreshed: 60 s from here
    clock.now += 50
    assert len(kept(streams)) == 4
    clock.now += 10
    with pytest.raises(NotFound):
        kept(streams)
    turn(streams, prompt="3")  # a new conversation under the same id
    assert provider.sent() == [("user", "3")]


def test_owners_are_isolated() -> None:
    streams, provider = service()
    turn(streams, prompt="mine")
    with pytest.raises(NotFound):
        streams.conversation("key_b", CONV)
    with pytest.raises(NotFound):
        streams.forget_conversation("key_b", CONV)
    turn(streams, owner="key_b", prompt="theirs")
    assert provider.sent() == [("user", "theirs")]  # not the other owner's history
    assert [t["content"] for t in kept(streams)] == ["mine", "Hello"]


def test_forget_then_a_new_conversation() -> None:
    streams, provider = service()
    turn(streams, prompt="1")
    streams.forget_conversation(OWNER, CONV)
    for call in (lambda: kept(streams), lambda: streams.forget_conversation(OWNER, CONV),
                 lambda: streams.conversation(OWNER, "bad:id")):
        with pytest.raises(NotFound):
            call()
    turn(streams, prompt="2")
    assert provider.sent() == [("user", "2")]


def test_a_retried_start_that_resumes_adds_nothing() -> None:
    streams, provider = service([TextDelta("a"), HANG])
    parsed = streams.parse(body(prompt="Hi"))
    first = streams.start(parsed, owner=OWNER, holder=HOLDER, stream_id="r" * 16, digest="d")
    again = streams.start(parsed, owner=OWNER, holder=HOLDER, stream_id="r" * 16, digest="d")
    assert isinstance(again, Reader) and not again.started
    assert [t["content"] for t in kept(streams)] == ["Hi"]
    # The broker adds a stream's messages once, also when asked twice.
    key = f"{OWNER}.{'r' * 16}"
    assert not streams.broker.add_turns(OWNER, CONV, [b'{"role":"user","content":"Hi"}'],
                                        once=key, max_turns=10, max_bytes=10_000)
    assert len(kept(streams)) == 1
    streams.drain(0)
    assert isinstance(first, Reader)
    read_all(first)
    again.close()
    assert len(provider.requests) == 1
    assert [t.get("status") for t in kept(streams)] == [None, "cancelled"]


def test_a_detached_stream_keeps_its_turns_too() -> None:
    streams, _ = service()
    started = streams.start(streams.parse(body(prompt="Hi", detach=True)), owner=OWNER,
                            holder=HOLDER)
    assert isinstance(started, Detached)
    read_all(streams.follow(started.stream_id, OWNER, None, HOLDER))
    assert [t["content"] for t in kept(streams)] == ["Hi", "Hello"]


def test_a_bad_conversation_id_is_refused_naming_it() -> None:
    streams, _ = service()
    for bad in ("", "a" * 129, "a:b", "a.b", 7):
        with pytest.raises(InvalidRequest) as refused:
            streams.parse(body(conversation_id=bad))  # type: ignore[arg-type]
        assert refused.value.param == "conversation_id"


def test_a_lost_streams_answer_is_added_from_the_store() -> None:
    streams, _ = service()
    key = f"{OWNER}.{'l' * 16}"
    broker = streams.broker
    assert broker.create(StreamInfo(key, owner=OWNER, model="scripted/a", created=1.0,
                                    conversation_id=CONV))
    question = b'{"role":"user","content":"Q","stream_id":"' + b"l" * 16 + b'"}'
    assert broker.add_turns(OWNER, CONV, [question], once=key, max_turns=10, max_bytes=10_000)
    broker.append(key, Event(0, "start", b"{}"))
    broker.append(key, Event(1, "token", b'{"content":"Half"}'))
    broker.finish(key, Event(2, "error", b'{"code":"stream_lost"}'), "error")
    streams._lost(key)
    FakeClock.settle()
    assert kept(streams)[1:] == [
        {"role": "assistant", "content": "Half", "tool_calls": None, "reasoning": None,
         "refusal": None, "provider_data": None, "stream_id": "l" * 16, "status": "error"}]


def test_the_turn_bound_is_checked_and_fits_the_messages_bound() -> None:
    assert StreamsConfig(max_messages=10, max_conversation_turns=50).conversation_turns == 11
    with pytest.raises(ConfigError, match="MAX_CONVERSATION_TURNS"):
        StreamsConfig(max_conversation_turns=1).check()
    with pytest.raises(ConfigError, match="MAX_CONVERSATION_BYTES"):
        StreamsConfig(max_conversation_bytes=0).check()


def test_the_owners_bound_is_checked_against_one_conversations() -> None:
    assert StreamsConfig().max_conversation_bytes_per_key == 64 << 20
    with pytest.raises(ConfigError) as refused:
        StreamsConfig.from_mapping({"MAX_CONVERSATION_BYTES": "2000",
                                    "MAX_CONVERSATION_BYTES_PER_KEY": "1999"})
    assert str(refused.value) == ("MAX_CONVERSATION_BYTES_PER_KEY must be at least "
                                  "MAX_CONVERSATION_BYTES")
    same = StreamsConfig.from_mapping({"MAX_CONVERSATION_BYTES": "2000",
                                       "MAX_CONVERSATION_BYTES_PER_KEY": "2000"})
    assert broker_options(same).max_conversation_bytes_per_owner == 2000


def test_an_owners_conversations_together_are_bounded_least_recently_added_to_first(
        caplog: pytest.LogCaptureFixture) -> None:
    """Each conversation of one exchange keeps the same bytes: with room for three,
    a fourth forgets the least recently added-to; another owner's stay."""
    probe, _ = service()
    turn(probe, conversation_id="probe", prompt="Hi")
    size = sum(len(t) for t in probe.broker.conversation(OWNER, "probe"))
    each = size + CONVERSATION_OVERHEAD  # what one conversation counts for
    streams, provider = service(max_conversation_bytes=2 * size,
                                max_conversation_bytes_per_key=3 * each + size // 2)
    turn(streams, owner="other-key", conversation_id="theirs", prompt="Hi")
    for name in ("c1", "c2", "c3"):
        turn(streams, conversation_id=name, prompt="Hi")
    caplog.set_level(logging.INFO, logger="sse_gateway.broker.base")
    turn(streams, conversation_id="c4", prompt="Hi")  # c1 goes
    with pytest.raises(NotFound):
        streams.conversation(OWNER, "c1")
    assert [len(streams.conversation(OWNER, c)) for c in ("c2", "c3", "c4")] == [2, 2, 2]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO
            and "forgotten" in r.getMessage()] == [
        f"conversation c1 of key {OWNER!r} ({size} bytes) forgotten: the key's "
        "conversations keep more than their bound"]
    # c2 is added to (its messages, then its answer): c3 is now the least recent.
    turn(streams, conversation_id="c2", prompt="Hi")  # 4 x size + 3 overheads: c3 goes
    assert [t["content"] for t in kept_in(streams, "c2")] == ["Hi", "Hello"] * 2
    with pytest.raises(NotFound):
        streams.conversation(OWNER, "c3")
    assert len(streams.conversation(OWNER, "c4")) == 2
    # A start with a forgotten id begins a new conversation: only its own messages.
    turn(streams, conversation_id="c1", prompt="Again")
    assert provider.sent() == [("user", "Again")]
    assert [t["content"] for t in kept_in(streams, "c1")] == ["Again", "Hello"]
    assert [t["content"] for t in kept_in(streams, "theirs", "other-key")] == ["Hi", "Hello"]


def kept_in(streams: Streams, conversation_id: str, owner: str = OWNER
            ) -> list[dict[str, Any]]:
    return streams.conversation(owner, conversation_id)


def test_the_ai_sdk_and_openai_routes_refuse_a_conversation_id() -> None:
    """useChat sends the whole chat with every request, and OpenAI's body has no such
    field: either would send the history twice, so both refuse it, naming it."""
    from sse_gateway.flask.ai_sdk import chat_request
    from sse_gateway.transports import openai_request
    from sse_gateway.validation import InvalidBody

    use_chat = {"id": "chat", "messages": [{"id": "m1", "role": "user",
                                            "parts": [{"type": "text", "text": "hi"}]}],
                "conversation_id": "c1"}
    with pytest.raises(InvalidRequest) as refused:
        chat_request(use_chat, "demo/echo")
    assert refused.value.param == "conversation_id"
    with pytest.raises(InvalidBody) as unknown:
        openai_request.parse(json.dumps({"model": "demo/echo", "conversation_id": "c1",
                                         "messages": [{"role": "user", "content": "hi"}]}
                                        ).encode())
    assert (unknown.value.param, unknown.value.message) == ("conversation_id",
                                                            "conversation_id: unknown field")


def test_the_answer_is_the_streamed_text_also_when_batched() -> None:
    """Held output is sent before the terminal event: the kept answer is all of it."""
    streams, _ = service([TextDelta("One. Two"), TextDelta(" th"), TextDelta("ree"),
                          Finished("stop")])
    events = turn(streams, prompt="Count", chunking="sentence", coalesce_ms=1000)
    text = "".join(e.payload()["content"] for e in events if e.name == "token")
    assert text == "One. Two three"
    assert kept(streams)[-1]["content"] == text


def test_a_conversation_filled_meanwhile_is_refused_by_the_stores_own_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound holds when another request filled the conversation between this
    one's read and its addition: the addition itself checks, in one step."""
    streams, provider = service(max_conversation_turns=4)
    turn(streams, prompt="1")
    turn(streams, prompt="2")  # 4 turns: full
    broker = streams.broker
    real = broker.conversation
    monkeypatch.setattr(broker, "conversation", lambda owner, cid: [])  # read too early
    with pytest.raises(RequestTooLarge) as full:
        turn(streams, prompt="3")
    assert "keeps 4 messages" in full.value.message
    monkeypatch.setattr(broker, "conversation", real)
    assert [t["content"] for t in kept(streams)] == ["1", "Hello", "2", "Hello"]
    assert len(provider.requests) == 2 and streams.active == 0
    assert broker.slots(HOLDER) == 0  # its slot was given back
