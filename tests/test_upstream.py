"""The candidate chain's budget, in process: scripted providers, a fake clock and sleep.

Each provider here is a real object with the adapter's shape (a ``name`` and
``stream(request)`` yielding deltas or raising ``ProviderError``s); time is a
number the fake ``sleep`` advances, so a test takes milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from sse_gateway.providers.base import (
    ChatRequest,
    Delta,
    Finished,
    Message,
    ProviderError,
    TextDelta,
    UpstreamAuth,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sse_gateway.upstream import Answering, Candidate, Item, Retrying, RetryPolicy, stream_deltas
from sse_gateway.validation import InvalidBody, StreamRequest, parse_stream_request


class Clock:
    """Time that passes only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Sent:
    provider: str
    model: str
    at: float


Step = ProviderError | list[Delta] | Callable[[], Iterator[Delta]]


@dataclass
class Scripted:
    """A provider answering each request with the next step of its script (the last repeats).

    A step is an exception (raised before any delta), a list of deltas, or a
    function returning the deltas. Every request is logged in the shared ``sent``.
    """

    name: str
    clock: Clock
    sent: list[Sent]
    script: list[Step] = field(default_factory=list)
    available: bool = True
    requests: int = 0

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        self.sent.append(Sent(self.name, request.model, self.clock()))
        step = self.script[min(self.requests, len(self.script) - 1)]
        self.requests += 1
        return self._run(step)

    @staticmethod
    def _run(step: Step) -> Iterator[Delta]:
        if isinstance(step, ProviderError):
            raise step
        yield from (step() if callable(step) else step)


ANSWER: list[Delta] = [TextDelta("hi"), Finished("stop")]


def rate_limited(provider: str, retry_after: float | None = None) -> UpstreamRateLimited:
    return UpstreamRateLimited("slow down", provider=provider, status_code=429,
                               retry_after=retry_after)


def down(provider: str) -> UpstreamUnavailable:
    return UpstreamUnavailable("down", provider=provider, status_code=503)


class World:
    """Providers sharing one clock and one log of requests."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.sent: list[Sent] = []

    def model(self, name: str, *script: Step) -> Candidate:
        """``provider/model`` answering with ``script`` (one script per model)."""
        provider_name, _, model = name.partition("/")
        provider = Scripted(provider_name, self.clock, self.sent, list(script))
        return Candidate(name, provider, ChatRequest(model, (Message("user", "x"),)))

    def run(self, candidates: list[Candidate], *, max_attempts: int = 3, budget_s: float = 30.0,
            base_delay_s: float = 0.0, max_delay_s: float = 0.0,
            clock: Callable[[], float] | None = None) -> tuple[list[Item], ProviderError | None]:
        policy = RetryPolicy(max_attempts, budget_s, base_delay_s, max_delay_s)
        items: list[Item] = []
        try:
            for item in stream_deltas(candidates, policy, clock=clock or self.clock,
                                      sleep=self.clock.sleep):
                items.append(item)
        except ProviderError as exc:
            return items, exc
        return items, None

    def order(self) -> list[str]:
        return [f"{s.provider}/{s.model}" for s in self.sent]


def test_the_retries_are_shared_by_the_whole_chain() -> None:
    world = World()
    chain = [world.model("openai/a", down("openai")), world.model("openai/b", down("openai")),
             world.model("anthropic/c", down("anthropic")), world.model("openai/d", down("openai"))]
    items, error = world.run(chain)
    assert isinstance(error, UpstreamUnavailable)
    # 3 attempts of the model, then one first attempt per fallback: 3 + 3 in all.
    assert world.order() == ["openai/a"] * 3 + ["openai/b", "anthropic/c", "openai/d"]
    assert [i.model for i in items if isinstance(i, Retrying)] == ["openai/a", "openai/a"]


def test_retries_left_by_the_model_go_to_a_fallback() -> None:
    world = World()
    chain = [world.model("openai/a", UpstreamAuth("no", provider="openai", status_code=401)),
             world.model("anthropic/b", down("anthropic"), down("anthropic"), ANSWER)]
    items, error = world.run(chain)
    assert error is None
    assert world.order() == ["openai/a", "anthropic/b", "anthropic/b", "anthropic/b"]
    assert Answering("anthropic/b") in items


@pytest.mark.parametrize("attempts", [1, 2, 5])
def test_the_worst_case_is_max_attempts_plus_the_fallbacks(attempts: int) -> None:
    world = World()
    chain = [world.model(f"p{i % 2}/m{i}", down(f"p{i % 2}")) for i in range(4)]
    world.run(chain, max_attempts=attempts)
    assert len(world.sent) == attempts + 3


def test_no_attempt_starts_after_the_budget_waiting_and_attempts_included() -> None:
    world = World()

    def times_out() -> Iterator[Delta]:
        world.clock.now += 8.0  # as a time-to-first-token timeout of 8 s would
        raise UpstreamTimeout("no first token", provider="openai")
        yield  # a generator, like an adapter

    chain = [world.model("openai/a", times_out), world.model("anthropic/b", ANSWER)]
    _, error = world.run(chain, max_attempts=5, budget_s=10.0)
    assert isinstance(error, UpstreamTimeout)
    # a at 0 s, a again at 8 s (within the 10 s budget), then nothing: at 16 s
    # the budget is spent, for the fallback's first attempt too.
    assert world.order() == ["openai/a", "openai/a"]
    assert [s.at - 1000.0 for s in world.sent] == [0.0, 8.0]


def test_a_budget_of_zero_allows_only_the_first_attempt() -> None:
    world = World()
    chain = [world.model("openai/a", down("openai"), ANSWER),
             world.model("anthropic/b", ANSWER)]

    def tick() -> float:
        world.clock.now += 0.001  # every look at the clock costs a millisecond
        return world.clock.now

    _, error = world.run(chain, budget_s=0.0, clock=tick)
    assert isinstance(error, UpstreamUnavailable)
    assert world.order() == ["openai/a"]


def test_retry_after_is_honoured_per_provider_whichever_model() -> None:
    world = World()
    chain = [world.model("openai/a", rate_limited("openai", 5.0)),
             world.model("openai/b", rate_limited("openai", 7.0)),
             world.model("openai/c", ANSWER)]
    items, error = world.run(chain, max_attempts=1)
    assert error is None
    assert world.order() == ["openai/a", "openai/b", "openai/c"]
    at = [s.at for s in world.sent]
    assert at[1] - at[0] >= 5.0  # the fallback, another model on the same provider, waited
    assert at[2] - at[1] >= 7.0
    assert Answering("openai/c") in items


def test_retry_after_holds_a_retry_back_beyond_the_backoff() -> None:
    world = World()
    chain = [world.model("openai/a", rate_limited("openai", 3.0), ANSWER)]
    items, error = world.run(chain, max_delay_s=0.5, base_delay_s=0.5)
    assert error is None
    assert world.sent[1].at - world.sent[0].at >= 3.0
    retry = next(i for i in items if isinstance(i, Retrying))
    assert retry.delay >= 3.0


def test_a_fallback_on_another_provider_goes_at_once() -> None:
    world = World()
    chain = [world.model("openai/a", rate_limited("openai", 20.0)),
             world.model("anthropic/b", ANSWER)]
    _items, error = world.run(chain, max_attempts=1)
    assert error is None
    assert world.sent[1].at == world.sent[0].at  # no wait at all
    assert world.clock.sleeps == []


def test_a_retry_after_past_the_budget_is_never_sent_early() -> None:
    world = World()
    chain = [world.model("openai/a", rate_limited("openai", 60.0)),
             world.model("openai/b", ANSWER)]
    _items, error = world.run(chain, budget_s=30.0)
    assert isinstance(error, UpstreamRateLimited)
    assert (error.code, error.retryable, error.provider) == ("upstream_rate_limited", True,
                                                             "openai")
    assert world.order() == ["openai/a"]  # neither a retry nor the fallback went early
    assert world.clock.sleeps == []  # and nothing waited for it in vain


def test_a_skipped_fallback_lets_one_on_another_provider_go() -> None:
    world = World()
    chain = [world.model("openai/a", rate_limited("openai", 60.0)),
             world.model("openai/b", ANSWER),
             world.model("anthropic/c", ANSWER)]
    items, error = world.run(chain)
    assert error is None
    assert world.order() == ["openai/a", "anthropic/c"]
    assert Answering("anthropic/c") in items


def test_nothing_is_retried_after_the_first_token() -> None:
    world = World()

    def half() -> Iterator[Delta]:
        yield TextDelta("par")
        raise down("openai")

    items, error = world.run([world.model("openai/a", half),
                              world.model("anthropic/b", ANSWER)])
    assert isinstance(error, UpstreamUnavailable)
    assert world.order() == ["openai/a"]
    assert items == [Answering("openai/a"), TextDelta("par")]


# --- the list of fallbacks itself ------------------------------------------------------------

def parse(model: str, fallbacks: list[str], max_fallbacks: int = 3) -> StreamRequest:
    raw = json.dumps({"model": model, "prompt": "x", "fallbacks": fallbacks}).encode()
    return parse_stream_request(raw, max_tokens_limit=100, max_messages=10,
                                max_resume_grace_s=10, max_fallbacks=max_fallbacks)


@pytest.mark.parametrize(("model", "fallbacks", "max_fallbacks", "param", "message"), [
    ("openai/a", ["openai/b"] * 40, 3, "fallbacks", "fallbacks: at most 3 are accepted"),
    ("openai/a", ["openai/b", "openai/c", "openai/d", "openai/e"], 3, "fallbacks",
     "fallbacks: at most 3 are accepted"),
    ("openai/a", ["openai/b"], 0, "fallbacks", "fallbacks: are not accepted here"),
    ("openai/a", ["openai/a"], 3, "fallbacks.0", "fallbacks.0: 'openai/a' repeats the model"),
    ("openai/a", ["openai/b", "openai/b"], 3, "fallbacks.1",
     "fallbacks.1: 'openai/b' repeats an earlier fallback"),
    ("openai/a", ["openai/b", "anthropic/c", "openai/a"], 3, "fallbacks.2",
     "fallbacks.2: 'openai/a' repeats the model"),
])
def test_too_many_or_repeated_fallbacks_are_refused(model: str, fallbacks: list[str],
                                                    max_fallbacks: int, param: str,
                                                    message: str) -> None:
    with pytest.raises(InvalidBody) as refused:
        parse(model, fallbacks, max_fallbacks)
    assert (refused.value.param, refused.value.message) == (param, message)


def test_up_to_max_fallbacks_distinct_models_are_accepted() -> None:
    request = parse("openai/a", ["openai/b", "anthropic/a", "openai/c"])
    assert request.fallbacks == ("openai/b", "anthropic/a", "openai/c")
    assert parse("openai/a", [], max_fallbacks=0).fallbacks == ()
