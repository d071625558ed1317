"""Batching and smoothing (``coalesce_ms``, ``chunking``): the pure state, then the pump.

The state is driven the way the pump drives it: each delta at its arrival
time, the supervisor's ``due_events`` at each due time before that, and what
is still held at the end. Hypothesis checks the rules for any split of any
text into deltas, of any kinds, at any timing; examples pin the sentence
rules. The pump tests run a scripted provider on the fake clock and read the
times at which events were stored.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sse_gateway.config import ConfigError, StreamsConfig
from sse_gateway.errors import InvalidRequest
from sse_gateway.events import Event
from sse_gateway.providers.base import (
    Finished,
    Output,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
)
from sse_gateway.pump.batching import CHUNKINGS, MAX_HELD, Batcher, boundary
from sse_gateway.pump.state import StreamState
from sse_gateway.streams import Streams
from sse_gateway.validation import parse_stream_request
from tests.test_pump import SID, Block, World, down
from tests.test_streams import read_all, service, start

# ---------------------------------------------------------------------- boundaries


@pytest.mark.parametrize(("text", "cut"), [
    ("Hello. World", "Hello. "),
    ("Hi! Are you there? Yes", "Hi! Are you there? "),
    ("It costs 3.14 dollars. Then", "It costs 3.14 dollars. "),  # a decimal is no end
    ("Pi is 3.14", ""),
    ("Use e.g. this, i.e. that. Next", "Use e.g. this, i.e. that. "),  # dotted abbreviations
    ("Ask Dr. Smith and Mr. Jones etc. about it. Ok", "Ask Dr. Smith and Mr. Jones etc. about "
                                                      "it. "),
    ("In the U.S. it rains. Ok", "In the U.S. it rains. "),
    ("Well... I think so. Yes", "Well... I think so. "),  # an ellipsis is no end
    ("Wait\u2026 what", ""),
    ("J. R. R. Tolkien wrote it. Ok", "J. R. R. Tolkien wrote it. "),  # initials
    ("1. First item", ""),  # a list number
    ("Intro:\n2. Second", "Intro:\n"),  # ... at a line start; the line feed is one
    ("He said \"stop.\" Then", "He said \"stop.\" "),  # closing quotes go with it
    ("It ended (finally.) Next", "It ended (finally.) "),
    ("**Bold.** Next", "**Bold.** "),
    ("Done.", ""),  # what follows the dot decides: not yet
    ("你好。我很好", "你好。"),  # an ideographic full stop needs no space
    ("真的吗\uff1f是的\uff01好", "真的吗\uff1f是的\uff01"),  # full-width ? and !
    ("「好。」然后", "「好。」"),
    ("Line one\nline two", "Line one\n"),
])
def test_sentence_boundaries(text: str, cut: str) -> None:
    assert text[:boundary(text, "sentence")] == cut


@pytest.mark.parametrize(("chunking", "text", "cut"), [
    ("word", "Hello wor", "Hello "),
    ("word", "Hello\tworld\n", "Hello\tworld\n"),
    ("word", "nospace", ""),
    ("word", "你好世界", "你好世界"),  # CJK text: every character ends a word
    ("word", "日本語です。ok", "日本語です。"),
    ("line", "a\nb\nc", "a\nb\n"),
    ("line", "a b c", ""),
])
def test_word_and_line_boundaries(chunking: str, text: str, cut: str) -> None:
    assert text[:boundary(text, chunking)] == cut


def test_an_unknown_chunking_is_refused() -> None:
    with pytest.raises(ValueError, match="chunking 'words' is not one of"):
        Batcher(0.0, "words")


# ---------------------------------------------------------------------- the pure state

TEXT = "text"
KINDS = {"token": TEXT, "reasoning": "reasoning", "tool_call_delta": "args"}


def drive(arrivals: list[tuple[float, Output]], coalesce_s: float, chunking: str,
          ends_at: float) -> list[tuple[float, Event]]:
    """Run ``arrivals`` through a batching state as the pump does; (sent at, event)."""
    state = StreamState("p", "demo/echo", "demo", 1.0, coalesce_s=coalesce_s,
                        chunking=chunking, keep_text=True)
    state.next_id = 1
    sent: list[tuple[float, Event]] = []

    def store(events: list[Event], at: float) -> None:
        for event in events:
            assert event.id == state.next_id
            sent.append((at, event))
            state.next_id += 1

    def supervise(until: float) -> None:
        """The supervisor sends held output a window after it fell due, if no output
        came to send it."""
        due = state.flush_due
        while due is not None and due + coalesce_s <= until:
            store(state.due_events(due + coalesce_s), due + coalesce_s)
            assert state.flush_due is None or state.flush_due > due  # it moves on
            due = state.flush_due

    for at, delta in arrivals:
        supervise(at)
        store(state.batched(delta, at), at)
        assert state.flush_due is None or state.flush_due > at
    supervise(ends_at)
    held = state.held_event()
    if held is not None:
        store([held], ends_at)
    return sent


def content(event: Event) -> str:
    data = event.payload()
    return str(data.get("content", data.get("arguments", "")))


def kind(event: Event) -> str:
    return KINDS.get(event.name, event.name)


_ALPHABET = st.sampled_from([*"ab .!?\n3é你。…\"", "e.g. ", "Dr. ", "... ", "1. "])
_TEXTS = st.lists(_ALPHABET, max_size=12).map("".join)


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[list[tuple[float, Output]], dict[str, str]]:
    """Deltas of text, reasoning and one tool call's arguments at increasing times, and
    what each kind's deltas add up to."""
    kinds = draw(st.lists(st.sampled_from([TEXT, TEXT, TEXT, "reasoning", "args"]),
                          min_size=1, max_size=30))
    gaps_ms = draw(st.lists(st.integers(0, 120), min_size=len(kinds), max_size=len(kinds)))
    now, out, whole = 0.0, [], {TEXT: "", "reasoning": "", "args": ""}
    call_started = False
    for what, gap in zip(kinds, gaps_ms, strict=True):
        now += gap / 1000
        text = draw(_TEXTS)
        whole[what] += text
        if what == TEXT:
            out.append((now, TextDelta(text)))
        elif what == "reasoning":
            out.append((now, ReasoningDelta(text)))
        else:
            if not call_started:
                out.append((now, ToolCallStart(0, "call_1", "f")))
                call_started = True
            out.append((now, ToolCallDelta(0, text)))
    if call_started:
        out.append((now, ToolCallEnd(0)))
    return out, whole


def _carries_output(delta: Output) -> bool:
    """Whether ``delta`` makes an event (an empty fragment makes none)."""
    if isinstance(delta, TextDelta | ReasoningDelta):
        return bool(delta.text)
    if isinstance(delta, ToolCallDelta):
        return bool(delta.arguments)
    return True


def _alone(delta: Output) -> tuple[str, str]:
    """The event ``delta`` makes on its own: its name and content."""
    if isinstance(delta, TextDelta):
        return "token", delta.text
    if isinstance(delta, ReasoningDelta):
        return "reasoning", delta.text
    if isinstance(delta, ToolCallDelta):
        return "tool_call_delta", delta.arguments
    assert isinstance(delta, ToolCallStart)
    return "tool_call", ""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrivals(), st.sampled_from([0.0, 0.03, 0.1]), st.sampled_from(CHUNKINGS))
def test_any_split_at_any_timing_keeps_the_content_exact_and_the_first_immediate(
        given_arrivals: tuple[list[tuple[float, Output]], dict[str, str]], coalesce_s: float,
        chunking: str) -> None:
    assume(coalesce_s > 0 or chunking != "none")  # else there is no batching
    deltas, whole = given_arrivals
    ends_at = deltas[-1][0] + 0.5
    sent = drive(deltas, coalesce_s, chunking, ends_at)
    outputs = [(at, e) for at, e in sent if e.name in KINDS]
    # Exact: each kind's events add up to its deltas, in order; none is empty.
    for what, text in whole.items():
        assert "".join(content(e) for _, e in outputs if kind(e) == what) == text
    assert all(content(e) for _, e in outputs)
    # The first output is sent when it arrives, alone.
    carrying = [(at, d) for at, d in deltas if _carries_output(d)]
    if not carrying:
        assert sent == []
        return
    first_at, first = carrying[0]
    assert sent[0][0] == first_at
    assert (sent[0][1].name, content(sent[0][1])) == _alone(first)
    # A tool call's start and end are never merged or held: each is one event, in place.
    names = [e.name for _, e in sent]
    if "tool_call" in names:
        assert names.count("tool_call") == names.count("tool_call_done") == 1
        start, end = names.index("tool_call"), names.index("tool_call_done")
        assert all(n != "tool_call_delta" for n in names[:start] + names[end:])


def held_for(deltas: list[tuple[float, Output]], sent: list[tuple[float, Event]]
             ) -> list[tuple[float, float, float]]:
    """For each output event after the first: (arrival of its first delta, of its last
    delta, when it was sent), for a stream of one kind (text)."""
    arrived: list[float] = []  # the arrival time of each character, in order
    for at, delta in deltas:
        arrived.extend([at] * len(delta.text))  # type: ignore[attr-defined]
    spans, offset = [], 0
    for at, event in sent:
        size = len(content(event))
        spans.append((arrived[offset], arrived[offset + size - 1], at))
        offset += size
    return spans[1:]


_TEXT_ARRIVALS = st.lists(st.tuples(st.integers(0, 120), _TEXTS.filter(bool)),
                          min_size=1, max_size=40)


def text_arrivals(draw: list[tuple[int, str]]) -> list[tuple[float, Output]]:
    now, out = 0.0, []
    for gap, text in draw:
        now += gap / 1000
        out.append((now, TextDelta(text)))
    return out


@settings(max_examples=300, deadline=None)
@given(_TEXT_ARRIVALS, st.sampled_from([0.02, 0.05, 0.1]))
def test_coalescing_merges_only_what_arrives_within_one_window_and_holds_it_no_longer(
        drawn: list[tuple[int, str]], coalesce_s: float) -> None:
    deltas = text_arrivals(drawn)
    ends_at = deltas[-1][0] + 1.0
    sent = drive(deltas, coalesce_s, "none", ends_at)
    for first, last, at in held_for(deltas, sent):
        assert last - first < coalesce_s + 1e-9  # arrived within one window
        # Sent after that window closed: by the next output, else a window later.
        assert first + coalesce_s - 1e-9 <= at <= first + 2 * coalesce_s + 1e-9


@settings(max_examples=300, deadline=None)
@given(_TEXT_ARRIVALS, st.sampled_from(["word", "line", "sentence"]),
       st.sampled_from([0.0, 0.05]))
def test_chunked_events_end_on_a_boundary(drawn: list[tuple[int, str]], chunking: str,
                                          coalesce_s: float) -> None:
    deltas = text_arrivals(drawn)
    ends_at = deltas[-1][0] + 1.0
    sent = drive(deltas, coalesce_s, chunking, ends_at)
    assert "".join(content(e) for _, e in sent) == "".join(
        d.text for _, d in deltas)  # type: ignore[attr-defined]
    if coalesce_s == 0:
        # Between the first event and what the end flushes, every event ends on a
        # boundary, or on whitespace or at the size bound when none came in time.
        for _, event in sent[1:-1]:
            text = content(event)
            assert (boundary(text, chunking) == len(text) or text[-1].isspace()
                    or len(text) >= MAX_HELD), text
    else:
        # With a window, text waits for a window (two at most, when no output comes
        # to send it), and what follows its last boundary that long again.
        for first, _, at in held_for(deltas, sent):
            assert at - first <= 4 * coalesce_s + 1e-9


def test_text_without_any_boundary_still_flows_at_the_size_bound() -> None:
    deltas: list[tuple[float, Output]] = [(i / 100, TextDelta("字")) for i in range(600)]
    sent = drive(deltas, 0.0, "sentence", 10.0)
    sizes = [len(content(e)) for _, e in sent]
    assert sizes == [1, MAX_HELD, MAX_HELD, 600 - 1 - 2 * MAX_HELD]


def test_a_sentence_stream_sends_whole_sentences() -> None:
    text = ("Dr. Smith paid $3.50, e.g. for tea... Then he left. Did he? Yes! "
            "1. One\n2. Two\n")
    deltas: list[tuple[float, Output]] = [(i / 100, TextDelta(c)) for i, c in enumerate(text)]
    sent = drive(deltas, 0.0, "sentence", 10.0)
    assert [content(e) for _, e in sent] == [
        "D", "r. Smith paid $3.50, e.g. for tea... Then he left. ", "Did he? ", "Yes! ",
        "1. One\n", "2. Two\n"]


def test_a_change_of_kind_sends_what_is_held_first() -> None:
    deltas: list[tuple[float, Output]] = [
        (0.0, ReasoningDelta("think")), (0.001, ReasoningDelta("ing")),
        (0.002, TextDelta("Hel")), (0.003, TextDelta("lo"))]
    sent = drive(deltas, 1.0, "none", 5.0)
    assert [(at, e.name, content(e)) for at, e in sent] == [
        (0.0, "reasoning", "think"), (0.002, "reasoning", "ing"), (2.002, "token", "Hello")]


# ---------------------------------------------------------------------- the pump


class Timed(World):
    """A world whose broker remembers when each event was stored."""

    def __init__(self) -> None:
        super().__init__()
        self.started = self.clock.now  # the pump starts at once
        self.stored_at: dict[int, float] = {}
        append, finish = self.broker.append, self.broker.finish

        def timed_append(stream_id: str, event: Event) -> None:
            append(stream_id, event)
            assert event.id is not None
            self.stored_at[event.id] = self.clock.now - self.started

        def timed_finish(stream_id: str, event: Event, status: str,
                         usage: dict[str, Any] | None = None) -> None:
            finish(stream_id, event, status, usage)
            assert event.id is not None
            self.stored_at[event.id] = self.clock.now - self.started

        self.broker.append = timed_append  # type: ignore[method-assign]
        self.broker.finish = timed_finish  # type: ignore[method-assign]

    def timeline(self) -> list[tuple[float, str, Any]]:
        events = self.broker.read(SID, -1, 0).events
        return [(round(self.stored_at.get(e.id, 0.0), 6), e.name,  # type: ignore[arg-type]
                 e.payload().get("content", e.payload().get("arguments")))
                for e in events[1:]]


def test_held_output_is_sent_when_its_window_closes_though_the_provider_is_silent() -> None:
    world = Timed()
    openai = world.provider("openai", [TextDelta("A"), 0.01, TextDelta("b"), 0.01,
                                       TextDelta("c"), 1.0, TextDelta("d"), Finished("stop")])
    pump = world.pump(("openai/a", openai), coalesce_s=0.05)
    world.run(pump)
    assert world.timeline()[:-1] == [
        (0.0, "token", "A"),  # the first: at once
        (0.11, "token", "bc"),  # a window after its window closed, as nothing followed
        (1.02, "token", "d"),  # the end sends what is held, and is not delayed
    ]
    assert world.timeline()[-1][:2] == (1.02, "done")
    assert pump.state.text == "Abcd"


@pytest.mark.parametrize("ending", ["cancel", "error", "grace"])
def test_a_cancel_a_drop_or_an_error_sends_what_is_held_first(ending: str) -> None:
    world = Timed()
    block = Block()
    script: list[Any] = [TextDelta("A"), TextDelta("b"), TextDelta("c")]
    script.append(down("openai") if ending == "error" else block)
    openai = world.provider("openai", script)
    pump = world.pump(("openai/a", openai), coalesce_s=1.0, grace_s=0.5)
    world.clock.advance(0.1)
    if ending == "cancel":
        world.broker.cancel(SID, "deleted")
    elif ending == "grace":
        assert world.lease is not None
        world.broker.release_reader(SID, world.lease)
    world.run(pump)
    timeline = world.timeline()
    assert [(name, text) for _, name, text in timeline[:-1]] == [("token", "A"),
                                                                 ("token", "bc")]
    assert timeline[-1][1] == {"cancel": "cancelled", "grace": "cancelled",
                               "error": "error"}[ending]
    assert openai.closed_while == ["running"]  # the provider was closed before the end


def test_tool_call_arguments_coalesce_and_its_start_and_end_are_never_held() -> None:
    world = Timed()
    openai = world.provider("openai", [
        TextDelta("Let me check."), 0.001, ToolCallStart(0, "call_1", "weather"), 0.001,
        ToolCallDelta(0, '{"ci'), 0.001, ToolCallDelta(0, 'ty": '), 0.001,
        ToolCallDelta(0, '"Paris"}'), 0.001, ToolCallEnd(0), Finished("tool_calls")])
    world.run(world.pump(("openai/a", openai), coalesce_s=0.05))
    timeline = world.timeline()
    assert [(name, text) for _, name, text in timeline] == [
        ("token", "Let me check."), ("tool_call", None), ("tool_call_delta", '{"city": "Paris"}'),
        ("tool_call_done", '{"city": "Paris"}'), ("done", None)]
    assert [at for at, _, _ in timeline] == [0.0, 0.001, 0.005, 0.005, 0.005]


def test_chunking_by_word_in_the_pump() -> None:
    world = Timed()
    words = ["Hel", "lo", " wo", "rld", ", how", " are", " you?"]
    openai = world.provider("openai", [step for w in words
                                       for step in (TextDelta(w), 0.01)] + [Finished("stop")])
    pump = world.pump(("openai/a", openai), chunking="word")
    world.run(pump)
    assert [(at, text) for at, _, text in world.timeline()[:-1]] == [
        (0.0, "Hel"), (0.02, "lo "), (0.04, "world, "), (0.05, "how "), (0.06, "are "),
        (0.07, "you?")]


def test_without_batching_every_delta_is_an_event() -> None:
    world = Timed()
    openai = world.provider("openai", [TextDelta("a"), TextDelta("b"), Finished("stop")])
    pump = world.pump(("openai/a", openai))
    world.run(pump)
    assert pump.state.batcher is None
    assert [text for _, _, text in world.timeline()[:-1]] == ["a", "b"]


def test_ids_stay_consecutive_when_a_flush_and_a_new_kind_come_together() -> None:
    world = Timed()
    openai = world.provider("openai", [*itertools.chain.from_iterable(
        (ReasoningDelta(f"r{i}"), TextDelta(f"t{i}")) for i in range(5)), Finished("stop")])
    pump = world.pump(("openai/a", openai), coalesce_s=10.0)
    events = world.run(pump)  # World.events checks the ids are 0, 1, 2, ...
    assert [(name, data.get("content")) for name, data in events[1:-1]] == [
        ("reasoning", "r0"), ("token", "t0"), ("reasoning", "r1"), ("token", "t1"),
        ("reasoning", "r2"), ("token", "t2"), ("reasoning", "r3"), ("token", "t3"),
        ("reasoning", "r4"), ("token", "t4")]


# ---------------------------------------------------------------------- the request


@pytest.mark.parametrize(("field", "value", "message"), [
    ("coalesce_ms", -1, "coalesce_ms: Input should be greater than or equal to 0"),
    ("coalesce_ms", 1001, "coalesce_ms: Input should be less than or equal to 1000"),
    ("coalesce_ms", "50", "coalesce_ms: Input should be a valid number"),
    ("coalesce_ms", True, "coalesce_ms: Input should be a valid number"),
    ("chunking", "words", "chunking: Input should be 'none', 'word', 'line' or 'sentence'"),
    ("chunking", None, None),
])
def test_batching_fields_are_checked(field: str, value: Any, message: str | None) -> None:
    streams = Streams(StreamsConfig())
    body = {"model": "demo/echo", "prompt": "hi", field: value}
    if message is None:
        assert getattr(streams.parse(body), field) is None  # null: the configured default
        return
    with pytest.raises(InvalidRequest) as refused:
        streams.parse(body)
    assert (refused.value.message, refused.value.param) == (message, field)


@pytest.mark.parametrize(("settings", "message"), [
    ({"COALESCE_MS": "-5"}, "COALESCE_MS must be 0..1000, got -5.0"),
    ({"COALESCE_MS": "1500"}, "COALESCE_MS must be 0..1000, got 1500.0"),
    ({"CHUNKING": "paragraph"}, "CHUNKING must be none, word, line or sentence, got 'paragraph'"),
])
def test_batching_settings_are_checked(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        StreamsConfig.from_mapping(settings)


def test_a_request_without_batching_fields_takes_the_configured_defaults() -> None:
    script = [TextDelta("one"), TextDelta(" two"), TextDelta(" three"), Finished("stop")]
    streams, _ = service(script, coalesce_ms=40, chunking="word")
    events = read_all(start(streams))
    assert [(e.name, e.payload().get("content")) for e in events[1:]] == [
        ("token", "one"), ("token", " two three"), ("done", None)]
    asked = parse_stream_request(b'{"model": "scripted/a", "prompt": "hi", "coalesce_ms": 0, '
                                 b'"chunking": "none"}',
                                 max_tokens_limit=100, max_messages=10, max_resume_grace_s=60,
                                 max_fallbacks=0)
    events = read_all(streams.start(asked, owner="o", holder="h"))  # type: ignore[arg-type]
    assert [e.payload().get("content") for e in events[1:-1]] == ["one", " two", " three"]
    streams.close()
