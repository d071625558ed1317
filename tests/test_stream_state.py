"""The stream state on its own: numbering, the output so far, usage, the terminal events."""

from __future__ import annotations

import pytest

from sse_gateway.events import Event
from sse_gateway.providers.base import Finished, Output, TextDelta, Usage
from sse_gateway.pump import StreamState


def state() -> StreamState:
    s = StreamState("public", "openai/a", "openai", created=1.5, keep_text=True)
    assert s.start(100.0) == Event(0, "start", b'{"stream_id": "public", "model": "openai/a", '
                                               b'"created": 1.5}')
    s.next_id = 1  # stored
    return s


def relay(s: StreamState, text: str, now: float) -> Event:
    event = s.output(TextDelta(text), now)
    s.next_id += 1
    return event


def test_outputs_are_numbered_and_assembled() -> None:
    s = state()
    assert relay(s, "Hel", 100.5) == Event(1, "token", b'{"content": "Hel"}')
    assert relay(s, "lo\n\"", 100.75) == Event(2, "token", b'{"content": "lo\\n\\""}')
    assert s.text == 'Hello\n"'
    assert (s.output_deltas, s.first_output_at, s.last_output_at) == (2, 100.5, 100.75)


def test_the_text_is_kept_only_when_asked_for() -> None:
    """A second copy of the answer, as large as it: nobody pays for it unasked."""
    s = StreamState("public", "openai/a", "openai", created=1.5)
    s.start(100.0)
    for i in range(600):  # more than one run of joined deltas
        s.output(TextDelta("ab"), 100.0 + i)
    assert (s.text, s.output_deltas) == ("", 600)
    kept = StreamState("public", "openai/a", "openai", created=1.5, keep_text=True)
    kept.start(100.0)
    for i in range(600):
        kept.output(TextDelta(f"{i % 10}"), 100.0 + i)
    assert kept.text == "".join(f"{i % 10}" for i in range(600))


def test_done_carries_usage_and_metrics() -> None:
    s = state()
    relay(s, "a", 100.2)
    relay(s, "b", 100.7)
    s.add_usage(Usage(input_tokens=7))
    s.add_usage(Usage(output_tokens=4))  # a later report keeps what it does not say
    s.finished(Finished("length", "max_tokens"))
    outcome = s.done(101.2)
    assert (outcome.status, outcome.reason) == ("done", "length")
    assert outcome.data == {
        "finish_reason": "length", "provider_finish_reason": "max_tokens", "model": "openai/a",
        "usage": {"input_tokens": 7, "output_tokens": 4},
        # 4 output tokens over the 0.5 s from the first output to the end
        "metrics": {"ttft_ms": 200.0, "duration_ms": 1200.0, "tokens_per_second": 4.0}}


def test_without_a_usage_report_the_outputs_are_counted() -> None:
    s = state()
    for i in range(5):
        relay(s, "x", 100.0 + i)
    assert s.done(104.0).data["metrics"]["tokens_per_second"] == 1.2  # 5 outputs over 4 s


def test_a_single_output_has_no_rate() -> None:
    s = state()
    relay(s, "x", 100.1)
    assert s.done(100.5).data["metrics"] == {"ttft_ms": 100.0, "duration_ms": 500.0,
                                             "tokens_per_second": None}


def test_errors_name_the_provider_that_answered() -> None:
    s = state()
    s.answered("anthropic/b", "anthropic")
    outcome = s.error("upstream_timeout", "slow", retryable=True)
    assert (outcome.status, outcome.reason) == ("error", "upstream_timeout")
    assert outcome.data == {"code": "upstream_timeout", "message": "slow", "retryable": True,
                            "provider": "anthropic"}
    assert s.done(101.0).data["model"] == "anthropic/b"


def test_the_terminal_event_takes_the_next_id_when_it_is_stored() -> None:
    s = state()
    outcome = s.cancelled("client_disconnected")
    relay(s, "late", 100.3)  # stored after the decision, before the producer stopped
    assert s.terminal(outcome) == Event(2, "cancelled", b'{"reason": "client_disconnected"}')
    assert s.internal_error().data["code"] == "internal_error"


def test_an_output_kind_without_an_event_is_refused() -> None:
    class Reasoning(Output):
        __slots__ = ()

    with pytest.raises(TypeError, match="Reasoning"):
        state().output(Reasoning(), 100.0)
