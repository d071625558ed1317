"""The keyless tool round trip on the demo page, in a real headless Chromium against
the real gunicorn: ``demo/tools`` reasons, calls ``get_time``; the page runs the
call in the browser, shows the result, sends it back and streams the answer.

What is checked: the reasoning streams into a collapsible ``<details>`` that is
open while it streams and closed once the answer starts (its open/close
transitions are recorded in the page by a MutationObserver, in the order the
DOM changed), the call's name and exact arguments, the tool's result, the final
answer quoting the browser-computed time, and that exactly two streams were
POSTed, with the exact bodies, each ``done`` on the gateway. Then the same round
trip with the Python client: its next turn is accepted and answered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Browser, Page, Request

import fake_wire as fw
from sse_gateway_client import (
    Done,
    GatewayClient,
    Message,
    Reasoning,
    Token,
    ToolCall,
    ToolCallDelta,
    ToolCallDone,
    Usage,
)
from tests.fake_provider import FakeProvider
from tests.live.browser import SHOTS, watched_page
from tests.live.conftest import gateway_env
from tests.live.gateway import GatewayServer

TOOLS = [{"type": "function", "function": {
    "name": "get_time",
    "description": "The current date and time, in a time zone (an IANA name such as "
                   "Europe/Paris; default UTC).",
    "parameters": {"type": "object", "properties": {
        "timezone": {"type": "string", "description": "IANA time zone, e.g. UTC"}}}}}]

# Records, in DOM order, what happens to the reasoning panel and its text: "shown",
# "opened", "closed", one "reasoning" per text appended, and "call" when a tool
# call's arguments first change. A MutationObserver's records keep the order of the
# changes even when several land in one task (oldValue tells open from close).
RECORDER = """
window.__panel = [];
new MutationObserver((records) => {
  for (const r of records) {
    const el = r.target.nodeType === Node.TEXT_NODE ? r.target.parentElement : r.target;
    if (r.type === "attributes" && el.matches('[data-testid="message-reasoning"]')) {
      if (r.attributeName === "hidden") window.__panel.push(r.oldValue === null ? "hid" : "shown");
      else window.__panel.push(r.oldValue === null ? "opened" : "closed");
    } else if (r.type === "characterData" && el.matches('[data-testid="reasoning-text"]')) {
      window.__panel.push("reasoning");
    } else if (r.type === "characterData" && el.matches('[data-testid="tool-call-arguments"]')
               && window.__panel.at(-1) !== "call") {
      window.__panel.push("call");
    }
  }
}).observe(document, { subtree: true, attributes: true, attributeOldValue: true,
                      attributeFilter: ["open", "hidden"], characterData: true });
"""


@pytest.fixture(scope="module")
def server(fake: FakeProvider) -> Iterator[GatewayServer]:
    env = gateway_env(fake, MODELS="demo/echo,demo/tools,openai/*", DEMO_TTFT_S="0.05",
                      DEMO_TOKEN_DELAY_S="0.02")
    gateway = GatewayServer(env, label="demo-tools")
    try:
        yield gateway.start()
    finally:
        gateway.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with watched_page(browser, viewport={"width": 1100, "height": 900}) as opened:
        opened.add_init_script(RECORDER)
        yield opened


class Posts:
    """The page's ``POST /v1/streams`` requests: bodies, and the stream ids answered."""

    def __init__(self, page: Page) -> None:
        self.requests: list[Request] = []
        page.on("request", self._seen)

    def _seen(self, request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/v1/streams"):
            self.requests.append(request)

    @property
    def bodies(self) -> list[Any]:
        return [json.loads(r.post_data or "null") for r in self.requests]

    def stream_ids(self) -> list[str]:
        ids = []
        for request in self.requests:
            response = request.response()
            assert response is not None and response.status == 200, response
            ids.append(response.headers["x-stream-id"])
        return ids


def round_trip(page: Page, url: str, prompt: str) -> Posts:
    """Ask ``demo/tools``; wait until the page is idle again with two answers done."""
    posts = Posts(page)
    page.goto(url + "/")
    page.wait_for_selector('[data-testid="app"][data-ready="true"]')
    page.select_option('[data-testid="model-select"]', value="demo/tools")
    page.fill('[data-testid="prompt"]', prompt)
    page.click('[data-testid="send"]')
    page.wait_for_function("""() => document.querySelector('.app').dataset.busy === "false"
        && document.querySelector('[data-testid="message"][data-role="assistant"]'
            + ':is([data-state="done"], [data-state="error"], [data-state="cancelled"])')""")
    ended = page.eval_on_selector_all(
        '[data-testid="message"][data-role="assistant"]',
        "n => n.map(e => [e.dataset.state, e.querySelector('[data-testid=message-note]')"
        ".textContent])")
    assert [state for state, _ in ended] == ["done", "done"], ended
    return posts


def text_of(page: Page, selector: str) -> list[str]:
    return [str(t) for t in page.eval_on_selector_all(selector, "n => n.map(e => e.textContent)")]


def check_round_trip(page: Page, server: GatewayServer, posts: Posts, prompt: str,
                     arguments: str, thought: str, ran: bool = True) -> tuple[str, str]:
    """The checks the tests share; returns the call id and the tool's result (``ran``:
    the tool succeeded, else its error is the result sent back)."""
    answers = page.locator('[data-testid="message"][data-role="assistant"]')
    first, second = answers.nth(0), answers.nth(1)
    # The reasoning: shown and opened before its first text, closed once the call began.
    panel = first.get_by_test_id("message-reasoning")
    assert panel.evaluate("e => e.tagName") == "DETAILS"
    assert panel.get_by_test_id("reasoning-text").text_content() == thought
    recorded = page.evaluate("window.__panel")
    words = len(re.findall(r"\S+\s*", thought))
    assert recorded == ["shown", "opened", *["reasoning"] * words, "closed", "call"], recorded
    assert panel.evaluate("e => e.open") is False
    panel.locator("summary").click()  # collapsible: the reader can open it again
    assert panel.evaluate("e => e.open") is True
    assert second.get_by_test_id("message-reasoning").is_hidden()  # the answer had none
    # The call, its exact arguments, and the result the browser computed.
    calls = first.get_by_test_id("tool-call")
    assert calls.count() == 1
    call_id = str(calls.get_by_test_id("tool-call-id").text_content())
    assert re.fullmatch(r"call_[0-9a-f]{24}", call_id)
    assert calls.get_by_test_id("tool-call-name").text_content() == "get_time"
    assert calls.get_by_test_id("tool-call-arguments").text_content() == arguments
    assert calls.get_attribute("data-state") == ("ran" if ran else "failed")
    assert calls.get_by_test_id("tool-result-label").text_content() == (
        "Result" if ran else "Failed")
    result = str(calls.get_by_test_id("tool-result-text").text_content())
    # The answer quotes it, and nothing else streamed into either message.
    assert first.get_by_test_id("message-text").text_content() == ""
    assert second.get_by_test_id("message-text").text_content() == f"It is {result} right now."
    assert second.get_by_test_id("tool-calls").is_hidden()
    assert "finish: tool_calls" in str(first.get_by_test_id("message-note").text_content())
    assert "finish: stop" in str(second.get_by_test_id("message-note").text_content())
    # Exactly two streams, with these bodies.
    question = {"role": "user", "content": prompt}
    assert posts.bodies == [
        {"model": "demo/tools", "messages": [question], "tools": TOOLS},
        {"model": "demo/tools", "tools": TOOLS, "messages": [
            question,
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": call_id, "type": "function",
                "function": {"name": "get_time", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": call_id, "content": result}]},
    ]
    # And on the gateway: both done, the call and the answer assembled as the page saw them.
    asked, answered = (server.request("GET", f"/v1/streams/{i}?include=message").json()
                       for i in posts.stream_ids())
    assert (asked["status"], answered["status"]) == ("done", "done")
    assert asked["message"]["reasoning"] == thought
    assert asked["message"]["tool_calls"] == posts.bodies[1]["messages"][1]["tool_calls"]
    assert answered["message"]["content"] == f"It is {result} right now."
    return call_id, result


def test_the_page_runs_get_time_and_streams_the_answer(page: Page,
                                                       server: GatewayServer) -> None:
    before = datetime.now(UTC)
    posts = round_trip(page, server.url, "What time is it?")
    after = datetime.now(UTC)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "demo-tools.png"), full_page=True)
    _, result = check_round_trip(page, server, posts, "What time is it?",
                                 '{"timezone": "UTC"}',
                                 "The user wants the time; I will call get_time.")
    # new Date().toISOString(), taken in the browser during the round trip.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", result)
    taken = datetime.fromisoformat(result)
    assert before - timedelta(seconds=1) <= taken <= after + timedelta(seconds=1)


def test_a_time_zone_named_in_the_prompt(page: Page, server: GatewayServer) -> None:
    prompt = "What time is it in Asia/Tokyo?"
    zone = ZoneInfo("Asia/Tokyo")
    before = datetime.now(zone)
    posts = round_trip(page, server.url, prompt)
    after = datetime.now(zone)
    _, result = check_round_trip(page, server, posts, prompt, '{"timezone": "Asia/Tokyo"}',
                                 "The user wants the time in Asia/Tokyo; I will call get_time.")
    # toLocaleString("en-GB", {timeZone, dateStyle: "medium", timeStyle: "long"}).
    shown = re.fullmatch(r"(\d{1,2} \w{3} \d{4}), (\d\d:\d\d):\d\d (\S+)", result)
    assert shown is not None, result
    assert shown[1] in {f"{t.day} {t:%b %Y}" for t in (before, after)}
    assert shown[2] in {f"{t:%H:%M}" for t in (before, after)}
    assert shown[3] in {"GMT+9", "JST"}


def test_a_tool_that_fails_sends_its_error_back(page: Page, server: GatewayServer) -> None:
    """An unknown zone: the browser's RangeError is the tool's result, shown as a
    failure and sent back (the model must get an answer to every call)."""
    prompt = "What time is it in Mars/Olympus_Mons?"
    posts = round_trip(page, server.url, prompt)
    _, result = check_round_trip(
        page, server, posts, prompt, '{"timezone": "Mars/Olympus_Mons"}',
        "The user wants the time in Mars/Olympus_Mons; I will call get_time.", ran=False)
    assert result.startswith("error: ") and "Mars/Olympus_Mons" in result, result


def test_the_python_client_makes_the_same_round_trip(server: GatewayServer) -> None:
    """The typed events, the assembled message and assistant_message() against the real
    gateway: the next turn it builds is accepted and answered."""
    question: Message = {"role": "user", "content": "What time is it in Europe/Paris?"}
    with GatewayClient(server.url, timeout=10) as client:
        with client.stream(messages=[question], model="demo/tools", tools=TOOLS) as asked:
            events = list(asked)
        done = events[-1]
        assert isinstance(done, Done) and done.finish_reason == "tool_calls"
        assert done.provider_finish_reason == "tool_calls"
        assert done.usage == Usage(6, 14, reasoning_tokens=11)
        kinds = [type(e) for e in events[1:-1]]
        assert kinds == [Reasoning] * 11 + [ToolCall, *[ToolCallDelta] * 3, ToolCallDone]
        assert asked.reasoning == ("The user wants the time in Europe/Paris; "
                                   "I will call get_time.")
        call = asked.message["tool_calls"][0]
        assert call["function"] == {"name": "get_time", "arguments": '{"timezone": "Europe/Paris"}'}
        assert events[-2] == ToolCallDone(events[-2].id, 0, call["id"], "get_time",
                                          '{"timezone": "Europe/Paris"}')
        messages: list[Message] = [question, asked.assistant_message(),
                                   {"role": "tool", "tool_call_id": call["id"],
                                    "content": "12:00"}]
        assert messages[1] == {"role": "assistant", "content": None, "tool_calls": [call]}
        with client.stream(messages=messages, model="demo/tools", tools=TOOLS) as answered:
            tokens = [e.text for e in answered if isinstance(e, Token)]
        assert tokens == ["It ", "is ", "12:00 ", "right ", "now."]
        assert answered.message == {"role": "assistant", "content": "It is 12:00 right now.",
                                    "tool_calls": None, "reasoning": None, "refusal": None,
                                    "provider_data": None}
        assert client.status(answered.stream_id)["status"] == "done"


def test_a_refusal_is_marked_and_its_reasoning_folds(page: Page, server: GatewayServer,
                                                     fake: FakeProvider) -> None:
    """An OpenAI-style refusal (``delta.refusal``) after reasoning, through the fake
    provider: the page shows it under a "Refused" label, apart from the answer's text."""
    model = fake.scenario(tokens=[fw.Reasoning("This asks for "), fw.Reasoning("harm."),
                                  fw.Refusal("I can't help "), fw.Refusal("with that.")],
                          delay=0.01)
    page.goto(server.url + "/")
    page.wait_for_selector('[data-testid="app"][data-ready="true"]')
    page.select_option('[data-testid="model-select"]', value="__custom__")
    page.fill("#model-custom", f"openai/{model}")
    page.fill('[data-testid="prompt"]', "Something harmful")
    page.click('[data-testid="send"]')
    answer = page.locator('[data-testid="message"][data-role="assistant"]')
    page.wait_for_function("""() => document.querySelector('.app').dataset.busy === "false"
        && document.querySelector('[data-testid="message"][data-role="assistant"]'
            + '[data-state="done"]')""")
    assert answer.get_attribute("data-refused") == "true"
    assert answer.get_by_test_id("message-refusal").is_visible()
    assert answer.get_by_test_id("refusal-label").text_content() == "Refused"
    assert answer.get_by_test_id("refusal-text").text_content() == "I can't help with that."
    assert answer.get_by_test_id("message-text").text_content() == ""
    panel = answer.get_by_test_id("message-reasoning")
    assert panel.get_by_test_id("reasoning-text").text_content() == "This asks for harm."
    assert panel.evaluate("e => e.open") is False  # folded once the refusal began
    assert "finish: refusal" in str(answer.get_by_test_id("message-note").text_content())
    assert len(fake.calls(model)) == 1
