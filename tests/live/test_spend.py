"""Provider spend per POST: a bounded list of fallbacks, one budget for the chain, Retry-After.

Against one real gunicorn (gevent worker) and the fake provider, whose records
say how many requests reached it and when (``Call.opened_at``: the request was
read; ``Call.closed_at``: the error answer was sent).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from sse_gateway.transports.sse import ServerSentEvent
from tests.conftest import record
from tests.fake_provider import Behaviour, Call, FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer, tokens_text

MAX_ATTEMPTS = 3  # RETRY_MAX_ATTEMPTS of the server under test
MAX_FALLBACKS = 3  # MAX_FALLBACKS (the default)
RETRY_AFTER = 1.0  # seconds, sent by the fake with its 429s
OK = Behaviour(tokens=["fine ", "answer"])


@pytest.fixture(scope="module")
def server(fake: FakeProvider) -> Iterator[GatewayServer]:
    env = gateway_env(fake, RETRY_MAX_ATTEMPTS=str(MAX_ATTEMPTS), RETRY_BUDGET_S="10",
                      RETRY_BASE_DELAY_S="0.01", RETRY_MAX_DELAY_S="0.05",
                      MAX_FALLBACKS=str(MAX_FALLBACKS))
    with GatewayServer(env, label="spend") as gateway:
        yield gateway


def run(server: GatewayServer, body: dict[str, object]) -> list[ServerSentEvent]:
    stream = server.stream("POST", "/v1/streams", {"prompt": "x", **body})
    assert stream.status == 200
    return stream.read_all()


def all_calls(fake: FakeProvider, models: list[str]) -> list[Call]:
    return sorted((c for m in models for c in fake.calls(m)), key=lambda c: c.opened_at)


def test_a_long_list_of_fallbacks_is_refused_before_any_provider_request(
        server: GatewayServer, fake: FakeProvider) -> None:
    models = [fake.scenario(status=429) for _ in range(41)]
    reply = server.request("POST", "/v1/streams", {
        "model": f"openai/{models[0]}", "prompt": "x",
        "fallbacks": [f"openai/{m}" for m in models[1:]]})
    assert reply.status == 400
    assert reply.json() == {"error": {
        "code": "invalid_request", "param": "fallbacks",
        "message": f"fallbacks: at most {MAX_FALLBACKS} are accepted"}}
    assert all_calls(fake, models) == []


@pytest.mark.parametrize(("fallbacks", "param"), [
    (["{a}"], "fallbacks.0"),  # the model itself
    (["{b}", "{b}"], "fallbacks.1"),  # twice the same fallback
    (["{b}", "{a}"], "fallbacks.1"),
])
def test_repeated_models_are_refused(server: GatewayServer, fake: FakeProvider,
                                     fallbacks: list[str], param: str) -> None:
    a, b = (f"openai/{fake.scenario(status=429)}" for _ in range(2))
    reply = server.request("POST", "/v1/streams", {
        "model": a, "prompt": "x", "fallbacks": [f.format(a=a, b=b) for f in fallbacks]})
    assert reply.status == 400
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request", param)
    assert error["message"].startswith(f"{param}: ")
    assert all_calls(fake, [a.partition("/")[2], b.partition("/")[2]]) == []


def test_the_whole_chain_costs_at_most_the_stated_worst_case(
        server: GatewayServer, fake: FakeProvider) -> None:
    """Model and MAX_FALLBACKS fallbacks, all rate limited: RETRY_MAX_ATTEMPTS + fallbacks
    requests, never one to a provider sooner than the Retry-After it gave."""
    limited = Behaviour(status=429, retry_after=RETRY_AFTER)
    a, b, d = (fake.scenario(limited) for _ in range(3))
    c = fake.scenario(status=429)  # anthropic, no Retry-After: it may go at once
    chain = [f"openai/{a}", f"openai/{b}", f"anthropic/{c}", f"openai/{d}"]
    events = run(server, {"model": chain[0], "fallbacks": chain[1:]})
    error = events[-1].json()
    assert (events[-1].event, error["code"], error["retryable"]) == (
        "error", "upstream_rate_limited", True)
    calls = all_calls(fake, [a, b, c, d])
    record("spend.requests_per_post_max_fallbacks_all_429", len(calls))
    assert len(calls) == MAX_ATTEMPTS + MAX_FALLBACKS
    assert [call.model for call in calls] == [a, a, a, b, c, d]  # the retries went to the model
    openai = [call for call in calls if call.model != c]
    for previous, following in itertools.pairwise(openai):
        assert previous.closed_at is not None
        gap = following.opened_at - previous.closed_at
        record("spend.openai_gap_after_retry_after_s", gap)
        assert gap >= RETRY_AFTER  # also from b (one model) to d (another model)
    anthropic = calls[4]
    record("spend.other_provider_wait_s", anthropic.opened_at - (calls[3].closed_at or 0))
    assert anthropic.opened_at - (calls[3].closed_at or 0) < RETRY_AFTER  # went at once


def test_a_retry_after_past_the_budget_ends_the_stream_without_sending_early(
        server: GatewayServer, fake: FakeProvider) -> None:
    limited = fake.scenario(status=429, retry_after=60)
    same_provider = fake.scenario(OK)
    events = run(server, {"model": f"openai/{limited}", "fallbacks": [f"openai/{same_provider}"]})
    assert events[-1].event == "error"
    error = events[-1].json()
    assert (error["code"], error["retryable"], error["provider"]) == (
        "upstream_rate_limited", True, "openai")
    assert len(fake.calls(limited)) == 1
    assert fake.calls(same_provider) == []  # openai asked for 60 s: nothing went to it


def test_a_fallback_on_another_provider_goes_at_once(
        server: GatewayServer, fake: FakeProvider) -> None:
    limited = fake.scenario(status=429, retry_after=60)
    skipped = fake.scenario(OK)
    other = fake.scenario(OK)
    events = run(server, {"model": f"openai/{limited}",
                          "fallbacks": [f"openai/{skipped}", f"anthropic/{other}"]})
    assert events[-1].event == "done"
    assert events[-1].json()["model"] == f"anthropic/{other}"
    assert tokens_text(events) == "fine answer"
    assert fake.calls(skipped) == []  # could not go within the budget: skipped, not sent early
    first, answered = fake.calls(limited)[0], fake.calls(other)[0]
    assert answered.opened_at - (first.closed_at or 0) < 1
