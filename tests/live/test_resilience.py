"""Provider faults: retries before the first token, fallbacks, timeouts, failures after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_provider import Behaviour, FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import ROOT, GatewayServer, tokens_text

OK = Behaviour(tokens=["fine ", "answer"])


@pytest.fixture(scope="module")
def server(fake: FakeProvider) -> Iterator[GatewayServer]:
    with GatewayServer(gateway_env(fake, RETRY_BASE_DELAY_S="0.05", RETRY_MAX_DELAY_S="0.2",
                                   RETRY_BUDGET_S="3", TTFT_TIMEOUT_S="1",
                                   TOKEN_TIMEOUT_S="1", STREAM_TIMEOUT_S="4")) as gateway:
        yield gateway


def run(server: GatewayServer, body: dict[str, object]) -> list:  # type: ignore[type-arg]
    stream = server.stream("POST", "/v1/streams", {"prompt": "x", **body})
    assert stream.status == 200
    events = stream.read_all()
    names = [e.event for e in events]
    assert names.count("start") == 1 and names[0] == "start"
    assert sum(names.count(n) for n in ("done", "error", "cancelled")) == 1
    return events


def test_retryable_failures_are_retried_with_backoff_honouring_retry_after(
        server: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario_seq([Behaviour(status=500), Behaviour(status=429, retry_after=0.4),
                               OK])
    events = run(server, {"model": f"openai/{model}"})
    assert events[-1].event == "done"
    assert tokens_text(events) == "fine answer"
    assert events[-1].json()["model"] == f"openai/{model}"
    calls = fake.calls(model)
    assert len(calls) == 3
    assert calls[2].opened_at - calls[1].opened_at >= 0.4  # Retry-After, not the 0.2 s cap
    assert all(call.outcome for call in calls)


def test_a_dropped_connection_before_the_first_token_is_retried(
        server: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario_seq([Behaviour(tokens=["x"], drop_after=0), OK])
    events = run(server, {"model": f"anthropic/{model}"})
    assert tokens_text(events) == "fine answer"
    assert [c.outcome for c in fake.calls(model)] == ["dropped", "complete"]


def test_fallbacks_in_order_after_the_retries(server: GatewayServer, fake: FakeProvider) -> None:
    broken = fake.scenario(status=503)
    refused = fake.scenario(status=401)
    working = fake.scenario(OK)
    events = run(server, {"model": f"openai/{broken}",
                          "fallbacks": [f"anthropic/{refused}", f"openai/{working}"]})
    assert events[-1].event == "done"
    assert events[-1].json()["model"] == f"openai/{working}"  # the model that answered
    assert tokens_text(events) == "fine answer"
    assert len(fake.calls(broken)) == 3  # retried: 503 is retryable
    assert len(fake.calls(refused)) == 1  # not retried: 401 is not
    assert len(fake.calls(working)) == 1


def test_when_everything_fails_the_last_error_is_reported(
        server: GatewayServer, fake: FakeProvider) -> None:
    first, second = fake.scenario(status=500), fake.scenario(status=400)
    events = run(server, {"model": f"openai/{first}", "fallbacks": [f"anthropic/{second}"]})
    assert events[-1].json() == {"code": "upstream_bad_request",
                                 "message": "anthropic rejected the request as invalid (HTTP 400)",
                                 "retryable": False, "provider": "anthropic"}


def test_retry_after_beyond_the_budget_moves_on_to_another_provider_at_once(
        server: GatewayServer, fake: FakeProvider) -> None:
    # (A fallback on the same provider is not asked before its Retry-After: test_spend.py.)
    limited = fake.scenario(status=429, retry_after=60)
    working = fake.scenario(OK)
    events = run(server, {"model": f"openai/{limited}", "fallbacks": [f"anthropic/{working}"]})
    assert events[-1].event == "done"
    assert len(fake.calls(limited)) == 1
    assert fake.calls(working)[0].opened_at - fake.calls(limited)[0].opened_at < 1


def test_fallbacks_must_be_known_models(server: GatewayServer, fake: FakeProvider) -> None:
    reply = server.request("POST", "/v1/streams", {"model": "demo/echo", "prompt": "x",
                                                   "fallbacks": ["demo/lorem", "nope/x"]})
    assert reply.status == 400
    assert reply.json()["error"]["code"] == "unknown_model"
    assert reply.json()["error"]["param"] == "fallbacks.1"


def test_time_to_first_token_timeout(server: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["late"], ttft=30)
    events = run(server, {"model": f"openai/{model}"})
    assert events[-1].event == "error"
    body = events[-1].json()
    assert (body["code"], body["retryable"]) == ("upstream_timeout", True)
    assert body["message"] == "openai sent no first token within 1 s"
    calls = [fake.wait_closed(model, index=i) for i in range(3)]  # retried: it is retryable
    assert {c.outcome for c in calls} == {"peer_closed"}


def test_silence_between_tokens_times_out_and_keeps_what_was_sent(
        server: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["one ", "two ", "three"], stall_after=2, stall_s=30)
    stream = server.stream("POST", "/v1/streams", {"model": f"anthropic/{model}",
                                                   "prompt": "x"})
    stream_id = stream.header("X-Stream-ID")
    events = stream.read_all()
    assert tokens_text(events) == "one two "
    assert events[-1].json()["message"] == "anthropic sent no token within 1 s"
    assert fake.wait_closed(model).outcome == "peer_closed"
    assert len(fake.calls(model)) == 1  # never retried after the first token
    replay = server.stream("GET", f"/v1/streams/{stream_id}/events").read_all()
    assert [e.event for e in replay] == [e.event for e in events]  # still replayable
    assert tokens_text(replay) == "one two "


def test_whole_stream_timeout(server: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=[f"t{i} " for i in range(200)], delay=0.05)
    events = run(server, {"model": f"openai/{model}"})
    assert events[-1].json() == {"code": "upstream_timeout",
                                 "message": "the stream ran longer than 4 s",
                                 "retryable": True, "provider": "openai"}
    assert fake.wait_closed(model).outcome == "peer_closed"


def test_failure_after_the_first_token_is_not_spliced(
        server: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario_seq([Behaviour(tokens=["a ", "b ", "c "], drop_after=2), OK])
    stream = server.stream("POST", "/v1/streams", {"model": f"openai/{model}", "prompt": "x"})
    stream_id = stream.header("X-Stream-ID")
    events = stream.read_all()
    assert tokens_text(events) == "a b "
    assert events[-1].json()["code"] == "upstream_unavailable"
    assert len(fake.calls(model)) == 1  # no second attempt glued on
    resumed = server.stream("GET", f"/v1/streams/{stream_id}/events",
                            headers={"Last-Event-ID": "1"}).read_all()
    assert tokens_text(events[:2]) + tokens_text(resumed) == "a b "


def test_provider_error_bodies_never_reach_the_client(
        server: GatewayServer, fake: FakeProvider) -> None:
    model = fake.scenario(status=401)
    events = run(server, {"model": f"openai/{model}"})
    text = events[-1].data
    for leak in ("sk-", "Incorrect", "Traceback", str(ROOT), "api_key", "error code"):
        assert leak not in text
    assert "Traceback" not in server.log()
    assert "sk-test-openai" not in server.log()
