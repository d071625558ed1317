"""The fake provider, driven by the real openai / anthropic SDKs (sync clients).

What each SDK raises (openai 3.54.0, anthropic 2.12.0, on httpx2):

* ``drop_after`` (connection closed mid-body, no last chunk):
  openai: ``openai.APIConnectionError``, its ``__cause__`` an
  ``httpx2.RemoteProtocolError`` ("peer closed connection without sending
  complete message body (incomplete chunked read)"); anthropic: that
  ``httpx2.RemoteProtocolError`` itself, unwrapped.
* the in-stream error event: openai: ``openai.APIError`` (not an
  ``APIStatusError``: no status code); anthropic: ``anthropic.APIStatusError``
  with ``status_code == 200`` (the stream's HTTP status), the
  ``overloaded_error`` only in its ``body``.
"""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import anthropic
import httpx2
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionStreamOptionsParam

from tests.fake_provider import Behaviour, Call, FakeProvider

REPO = Path(__file__).resolve().parent.parent

HOSTILE = [
    "Hé",
    "llo 🙂 👩‍👩‍👧",
    "\n",
    "data: x\n",
    "\r\n",
    "line\r",
    '"quoted" \\ back\\slash \\n',
    "event: error\n\ndata: [DONE]\n\n",
    ": comment",
    "\u2028\u2029\u0085",
    "\x00\t",
    "",
    "漢字 ✓",
]

OAI_MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
ANT_MESSAGES: list[MessageParam] = [{"role": "user", "content": "hi"}]


class SdkStream(Protocol):
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> None: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __next__(self) -> Any: ...
    def close(self) -> None: ...


@dataclass
class Sdk:
    """One SDK, seen the same way: open a stream, tell its text deltas apart."""

    name: str
    open: Callable[[str], SdkStream]  # model -> the SDK's stream
    text_of: Callable[[Any], str | None]  # an event -> its text delta, else None
    client: openai.OpenAI | anthropic.Anthropic

    def texts(self, stream: SdkStream) -> list[str]:
        return [text for event in stream if (text := self.text_of(event)) is not None]


def openai_text(chunk: Any) -> str | None:
    if not chunk.choices or chunk.choices[0].delta.role is not None:
        return None  # the usage chunk, the role chunk
    content: str | None = chunk.choices[0].delta.content
    return content


def anthropic_text(event: Any) -> str | None:
    if event.type == "content_block_delta" and event.delta.type == "text_delta":
        text: str = event.delta.text
        return text
    return None


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def oai(fake: FakeProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="test", base_url=f"{fake.url}/v1", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def ant(fake: FakeProvider) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(api_key="test", base_url=fake.url, max_retries=0) as client:
        yield client


@pytest.fixture(params=["openai", "anthropic"])
def sdk(request: pytest.FixtureRequest, oai: openai.OpenAI, ant: anthropic.Anthropic) -> Sdk:
    if request.param == "openai":
        return Sdk(
            "openai",
            lambda model: oai.chat.completions.create(
                model=model, messages=OAI_MESSAGES, stream=True
            ),
            openai_text,
            oai,
        )
    return Sdk(
        "anthropic",
        lambda model: ant.messages.create(
            model=model, max_tokens=64, messages=ANT_MESSAGES, stream=True
        ),
        anthropic_text,
        ant,
    )


# --------------------------------------------------------------------------- content


def test_hostile_text_arrives_exactly_one_event_per_token(sdk: Sdk, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=HOSTILE)
    with sdk.open(model) as stream:
        texts = sdk.texts(stream)
    assert texts == HOSTILE
    assert "".join(texts) == "".join(HOSTILE)
    call = fake.wait_closed(model)
    assert (call.outcome, call.tokens_sent) == ("complete", len(HOSTILE))
    assert call.body["model"] == model
    assert call.path == ("/v1/chat/completions" if sdk.name == "openai" else "/v1/messages")


@pytest.mark.parametrize(
    ("behaviour", "stream_options", "usage"),
    [
        (Behaviour(), {"include_usage": True}, (7, 4, 11)),
        (
            Behaviour(input_tokens=100, output_tokens=42),
            {"include_usage": True},
            (100, 42, 142),
        ),
        (Behaviour(), None, None),  # not asked for
        (Behaviour(include_usage=False), {"include_usage": True}, None),
    ],
)
def test_openai_usage_and_finish_reason(
    fake: FakeProvider,
    oai: openai.OpenAI,
    behaviour: Behaviour,
    stream_options: ChatCompletionStreamOptionsParam | None,
    usage: tuple[int, int, int] | None,
) -> None:
    model = fake.scenario(behaviour, finish_reason="length")
    chunks = list(
        oai.chat.completions.create(
            model=model,
            messages=OAI_MESSAGES,
            stream=True,
            stream_options=stream_options or openai.omit,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["length"]
    usages = [c.usage for c in chunks if c.usage is not None]
    if usage is None:
        assert usages == []
    else:
        assert chunks[-1].choices == [] and usages == [chunks[-1].usage]
        got = usages[0]
        assert (got.prompt_tokens, got.completion_tokens, got.total_tokens) == usage


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"), [("stop", "end_turn"), ("length", "max_tokens")]
)
def test_anthropic_stream_helper_usage_and_stop_reason(
    fake: FakeProvider, ant: anthropic.Anthropic, finish_reason: str, stop_reason: str
) -> None:
    model = fake.scenario(tokens=["a", "b", "c"], finish_reason=finish_reason, input_tokens=11)
    with ant.messages.stream(model=model, max_tokens=64, messages=ANT_MESSAGES) as stream:
        assert "".join(stream.text_stream) == "abc"
        message = stream.get_final_message()
    assert message.stop_reason == stop_reason
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 3)


def test_non_streaming_requests_get_whole_answers(
    fake: FakeProvider, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    model = fake.scenario(tokens=["one", " two"])
    completion = oai.chat.completions.create(model=model, messages=OAI_MESSAGES)
    assert completion.choices[0].message.content == "one two"
    message = ant.messages.create(model=model, max_tokens=64, messages=ANT_MESSAGES)
    assert message.content[0].type == "text" and message.content[0].text == "one two"


# --------------------------------------------------------------------------- errors

OPENAI_STATUS_ERRORS = [
    (429, openai.RateLimitError),
    (500, openai.InternalServerError),
    (401, openai.AuthenticationError),
    (400, openai.BadRequestError),
]
ANTHROPIC_STATUS_ERRORS = [
    (429, anthropic.RateLimitError),
    (500, anthropic.InternalServerError),
    (401, anthropic.AuthenticationError),
    (400, anthropic.BadRequestError),
    (529, anthropic.OverloadedError),
]


@pytest.mark.parametrize(("status", "error"), OPENAI_STATUS_ERRORS)
def test_openai_status_errors(
    fake: FakeProvider,
    oai: openai.OpenAI,
    status: int,
    error: type[openai.APIStatusError],
) -> None:
    model = fake.scenario(status=status, retry_after=3)
    with pytest.raises(error) as caught:
        oai.chat.completions.create(model=model, messages=OAI_MESSAGES, stream=True)
    assert type(caught.value) is error and caught.value.status_code == status
    assert caught.value.response.headers["retry-after"] == "3"
    assert isinstance(caught.value.body, dict) and caught.value.body["message"]
    assert fake.wait_closed(model).outcome == "error_status"


@pytest.mark.parametrize(("status", "error"), ANTHROPIC_STATUS_ERRORS)
def test_anthropic_status_errors(
    fake: FakeProvider,
    ant: anthropic.Anthropic,
    status: int,
    error: type[anthropic.APIStatusError],
) -> None:
    model = fake.scenario(status=status, retry_after=1.5)
    with pytest.raises(error) as caught:
        ant.messages.create(model=model, max_tokens=64, messages=ANT_MESSAGES, stream=True)
    assert type(caught.value) is error and caught.value.status_code == status
    assert caught.value.response.headers["retry-after"] == "1.5"
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "error"
    assert fake.wait_closed(model).outcome == "error_status"


def test_unknown_model_is_not_found(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="no-such-model", messages=OAI_MESSAGES, stream=True)
    with pytest.raises(anthropic.NotFoundError):
        ant.messages.create(
            model="no-such-model", max_tokens=64, messages=ANT_MESSAGES, stream=True
        )


def test_drop_after_breaks_the_sdk_iteration(sdk: Sdk, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["a", "b", "c", "d"], drop_after=2)
    received: list[str] = []
    # openai wraps the transport error, anthropic lets it through (see the module docstring).
    expected = openai.APIConnectionError if sdk.name == "openai" else httpx2.RemoteProtocolError
    with pytest.raises(expected) as caught:
        for event in sdk.open(model):
            if (text := sdk.text_of(event)) is not None:
                received.append(text)
    transport_error = caught.value if sdk.name == "anthropic" else caught.value.__cause__
    assert isinstance(transport_error, httpx2.RemoteProtocolError)
    assert received == ["a", "b"]
    call = fake.wait_closed(model)
    assert (call.outcome, call.tokens_sent) == ("dropped", 2)


def test_in_stream_error_event(sdk: Sdk, fake: FakeProvider) -> None:
    model = fake.scenario(tokens=["a", "b", "c"], error_event_after=1)
    received: list[str] = []
    with pytest.raises((openai.APIError, anthropic.APIStatusError)) as caught:
        for event in sdk.open(model):
            if (text := sdk.text_of(event)) is not None:
                received.append(text)
    error = caught.value
    if sdk.name == "openai":
        assert type(error) is openai.APIError
        assert isinstance(error.body, dict) and error.body["type"] == "server_error"
    else:
        assert type(error) is anthropic.APIStatusError and error.status_code == 200
        assert isinstance(error.body, dict) and error.body["error"]["type"] == "overloaded_error"
    assert received == ["a"]
    call = fake.wait_closed(model)
    assert (call.outcome, call.tokens_sent) == ("error_event", 1)


def test_scenario_seq_and_records(fake: FakeProvider, oai: openai.OpenAI) -> None:
    model = fake.scenario_seq([Behaviour(status=500), Behaviour(tokens=["ok"])])
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model=model, messages=OAI_MESSAGES, stream=True)
    for _ in range(2):  # the last behaviour repeats
        chunks = oai.chat.completions.create(model=model, messages=OAI_MESSAGES, stream=True)
        assert [t for c in chunks if (t := openai_text(c)) is not None] == ["ok"]
    calls = [fake.wait_closed(model, i) for i in range(3)]
    assert [c.outcome for c in calls] == ["error_status", "complete", "complete"]
    assert calls == fake.calls(model)
    assert calls[0].headers["authorization"] == "Bearer test"
    assert calls[0].body["messages"] == OAI_MESSAGES and calls[0].body["stream"] is True
    assert calls[0].opened_at <= calls[0].closed_at <= calls[1].opened_at  # type: ignore[operator]
    with pytest.raises(AssertionError, match="no request #3"):
        fake.wait_call(model, 3, timeout=0.01)


# --------------------------------------------------------------------------- the peer closing


@pytest.mark.parametrize("phase", ["streaming", "stall", "ttft"])
def test_close_is_seen_at_once(sdk: Sdk, fake: FakeProvider, phase: str) -> None:
    """stream.close() while the fake streams, stalls, or waits for its first token."""
    behaviour = {
        "streaming": Behaviour(tokens=["x"] * 1000, delay=0.01),
        "stall": Behaviour(tokens=["x"] * 10, stall_after=2, stall_s=30),
        "ttft": Behaviour(ttft=30),
    }[phase]
    model = fake.scenario(behaviour)
    stream = sdk.open(model)
    wanted = 0 if phase == "ttft" else 2
    seen = 0
    while seen < wanted:
        if sdk.text_of(next(stream)) is not None:
            seen += 1
    if phase == "ttft":
        next(stream)  # the first preamble event: the fake is now in its ttft
    started = time.monotonic()
    stream.close()
    call = fake.wait_closed(model, timeout=2)
    assert call.outcome == "peer_closed"
    assert call.closed_at is not None and 0 <= call.closed_at - started < 0.05
    if phase != "streaming":
        assert call.tokens_sent == wanted


def test_client_timeout_during_header_delay_is_seen(fake: FakeProvider, oai: openai.OpenAI) -> None:
    model = fake.scenario(header_delay=30)
    with pytest.raises(openai.APITimeoutError):
        oai.with_options(timeout=0.2).chat.completions.create(
            model=model, messages=OAI_MESSAGES, stream=True
        )
    gave_up = time.monotonic()
    call = fake.wait_closed(model, timeout=2)
    assert call.outcome == "peer_closed" and call.tokens_sent == 0
    assert call.closed_at is not None and abs(call.closed_at - gave_up) < 0.05


# --------------------------------------------------------------------------- timing


def test_header_delay_ttft_and_delay_are_honoured(sdk: Sdk, fake: FakeProvider) -> None:
    header_delay, ttft, delay = 0.1, 0.15, 0.05
    model = fake.scenario(
        tokens=["a", "b", "c", "d"], header_delay=header_delay, ttft=ttft, delay=delay
    )
    asked = time.monotonic()
    stream = sdk.open(model)
    headers_at = time.monotonic()
    arrivals: list[tuple[float, str | None]] = [
        (time.monotonic(), sdk.text_of(event)) for event in stream
    ]
    call = fake.wait_closed(model)

    assert headers_at - asked >= header_delay
    first_event_at = arrivals[0][0]
    token_arrivals = [at for at, text in arrivals if text is not None]
    assert len(token_arrivals) == 4
    # Client side: a little slack for scheduling; server side: exact lower bounds.
    assert token_arrivals[0] - first_event_at >= ttft - 0.01
    assert all(b - a >= delay - 0.01 for a, b in itertools.pairwise(token_arrivals))
    sent = call.token_times
    assert sent[0] - call.opened_at >= header_delay + ttft
    assert all(delay <= b - a < delay + 0.04 for a, b in itertools.pairwise(sent))
    # Incremental: each token reached the client before the fake sent the next one.
    assert all(
        arrived < next_sent
        for arrived, next_sent in zip(token_arrivals[:-1], sent[1:], strict=True)
    )


# --------------------------------------------------------------------------- the wire


def read_chunked_response(reader: Any) -> tuple[str, dict[str, str], list[bytes]]:
    """Status line, headers and the body's chunks (the last, empty one left out)."""
    status = reader.readline().decode().strip()
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    chunks: list[bytes] = []
    while size := int(reader.readline().strip(), 16):
        chunks.append(reader.read(size))
        assert reader.read(2) == b"\r\n"
    assert reader.read(2) == b"\r\n"
    return status, headers, chunks


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_wire_one_event_per_chunk_and_keep_alive(fake: FakeProvider, path: str) -> None:
    model = fake.scenario(tokens=["a\n\nb", "ü"])
    body = json.dumps({"model": model, "stream": True, "messages": OAI_MESSAGES}).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: fake\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    host, port = fake.url.removeprefix("http://").split(":")
    with (
        socket.create_connection((host, int(port))) as sock,
        sock.makefile("rb") as reader,
    ):
        for _ in range(2):  # the second request reuses the connection
            sock.sendall(request)
            status, headers, chunks = read_chunked_response(reader)
            assert status == "HTTP/1.1 200 OK"
            assert headers["content-type"].startswith("text/event-stream")
            assert headers["transfer-encoding"] == "chunked"
            for chunk in chunks:
                assert chunk.endswith(b"\n\n") and b"\n\n" not in chunk[:-2]
    if path == "/v1/chat/completions":
        assert chunks[-1] == b"data: [DONE]\n\n"
        assert len(chunks) == 1 + 2 + 1 + 1  # role, tokens, finish, [DONE]
    else:
        names = [chunk.split(b"\n")[0].removeprefix(b"event: ").decode() for chunk in chunks]
        assert names == [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    assert [fake.wait_closed(model, i).outcome for i in range(2)] == [
        "complete",
        "complete",
    ]


def test_standalone_main() -> None:
    command = [sys.executable, "-m", "tests.fake_provider", "--port", "0", "--tokens", "5"]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            with openai.OpenAI(api_key="test", base_url=f"{url}/v1", max_retries=0) as client:
                chunks = client.chat.completions.create(
                    model="any-model", messages=OAI_MESSAGES, stream=True
                )
                texts = [t for c in chunks if (t := openai_text(c)) is not None]
            assert texts == ["lorem", " ipsum", " dolor", " sit", " amet"]
        finally:
            process.terminate()
            assert process.wait(timeout=5) == 0


def test_wait_closed_fails_while_open_and_a_raw_close_is_seen(
    fake: FakeProvider,
) -> None:
    model = fake.scenario(ttft=30)
    host, port = fake.url.removeprefix("http://").split(":")
    body = json.dumps({"model": model, "stream": True}).encode()
    with socket.create_connection((host, int(port))) as sock:
        head = f"POST /v1/messages HTTP/1.1\r\nHost: fake\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)
        call: Call = fake.wait_call(model)
        with pytest.raises(AssertionError, match="still open"):
            fake.wait_closed(model, timeout=0.05)
        assert call.outcome is None and call.closed_at is None and not call.done.is_set()
    assert fake.wait_closed(model).outcome == "peer_closed"
