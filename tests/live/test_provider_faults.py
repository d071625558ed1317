"""Each provider fault ends the stream with the contract's ``error`` event."""

from __future__ import annotations

import pytest

from tests.fake_provider import FakeProvider
from tests.live.gateway import GatewayServer, tokens_text


def run(gateway: GatewayServer, model: str):
    return gateway.stream("POST", "/v1/streams", {"model": model, "prompt": "x"}).read_all()


@pytest.mark.parametrize(("provider", "status", "code", "retryable"), [
    ("openai", 429, "upstream_rate_limited", True),
    ("openai", 500, "upstream_unavailable", True),
    ("openai", 401, "upstream_auth", False),
    ("openai", 400, "upstream_bad_request", False),
    ("anthropic", 429, "upstream_rate_limited", True),
    ("anthropic", 500, "upstream_unavailable", True),
    ("anthropic", 529, "upstream_unavailable", True),
    ("anthropic", 401, "upstream_auth", False),
    ("anthropic", 400, "upstream_bad_request", False),
])
def test_http_errors_before_the_first_token(gateway: GatewayServer, fake: FakeProvider,
                                            provider: str, status: int, code: str,
                                            retryable: bool) -> None:
    model = fake.scenario(status=status, retry_after=0.2 if status == 429 else None)
    events = run(gateway, f"{provider}/{model}")
    assert [e.event for e in events] == ["start", "error"]  # one of each, whatever the retries
    body = events[-1].json()
    assert body == {"code": code, "message": body["message"], "retryable": retryable,
                    "provider": provider}
    assert f"HTTP {status}" in body["message"]
    assert "sk-" not in body["message"] and "Traceback" not in body["message"]
    calls = fake.calls(model)
    assert len(calls) == (3 if retryable else 1)  # RETRY_MAX_ATTEMPTS; the SDKs' own are off
    if status == 429:  # Retry-After is honoured between attempts
        assert calls[1].opened_at - calls[0].opened_at >= 0.2


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_connection_dropped_after_some_tokens(gateway: GatewayServer, fake: FakeProvider,
                                              provider: str) -> None:
    model = fake.scenario(tokens=["one ", "two ", "three ", "four "], drop_after=2)
    events = run(gateway, f"{provider}/{model}")
    assert tokens_text(events) == "one two "
    assert events[-1].event == "error"
    assert events[-1].json() == {"code": "upstream_unavailable",
                                 "message": f"the connection to {provider} failed",
                                 "retryable": True, "provider": provider}


@pytest.mark.parametrize(("provider", "code"), [("openai", "upstream_unavailable"),  # server_error
                                                ("anthropic", "upstream_unavailable")])  # overloaded
def test_error_event_inside_the_stream(gateway: GatewayServer, fake: FakeProvider,
                                       provider: str, code: str) -> None:
    model = fake.scenario(tokens=["a", "b", "c"], error_event_after=1)
    events = run(gateway, f"{provider}/{model}")
    assert tokens_text(events) == "a"
    assert events[-1].event == "error"
    assert events[-1].json()["code"] == code
    assert events[-1].json()["message"] == f"{provider} reported an error during the stream"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_the_providers_error_type_text_is_not_relayed(gateway: GatewayServer, fake: FakeProvider,
                                                      provider: str) -> None:
    model = fake.scenario(tokens=["a", "b"], error_event_after=1,
                          error_event_type="weird\n<script>alert(1)</script> " + "x" * 5000)
    events = run(gateway, f"{provider}/{model}")
    assert events[-1].json() == {"code": "upstream_error", "retryable": True,
                                 "message": f"{provider} reported an error during the stream",
                                 "provider": provider}


def test_unreachable_provider(fake: FakeProvider) -> None:
    with GatewayServer({"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
                        "MODELS": "openai/*"}) as server:
        events = run(server, "openai/gpt-x")
        assert events[-1].json() == {"code": "upstream_unavailable",
                                     "message": "the connection to openai failed",
                                     "retryable": True, "provider": "openai"}
