"""The official anthropic SDK parses every recorded Anthropic Messages stream.

The recordings under tests/recordings/anthropic are real streams collected from
public sources (SOURCES.md says where each came from and what was edited). A
loopback HTTP server answers POST /v1/messages with a recording's bytes, and
the SDK (anthropic 2.12.0) must parse every event and assemble the message in
<name>.expected.json, so a fixture the fake provider serves later is one the
SDK really accepts.

Regenerate the expected files (then review the diff) with:
    .venv/bin/python -m tests.test_recordings_anthropic --write
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.replay import ReplayServer, replaying

RECORDINGS = Path(__file__).resolve().parent / "recordings" / "anthropic"
# Any model name the SDK does not warn about; the recording decides what answers.
MODEL = "claude-opus-4-7"
ERROR_RECORDINGS = {"error_midstream_fragment"}
STREAM_RECORDINGS = sorted(
    p.stem for p in RECORDINGS.glob("*.sse") if p.stem not in ERROR_RECORDINGS
)


class _Served:
    """The recording the module's replay server sends next."""

    body = b""


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayServer]:
    """Serve recordings on a free loopback port for the module's tests."""
    with replaying("/v1/messages", lambda _: _Served.body) as server:
        yield server


def _client(server: ReplayServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)


def _events(client: anthropic.Anthropic) -> Any:
    """The raw event stream of one request (``messages.create(stream=True)``)."""
    return client.messages.create(model=MODEL, max_tokens=1024,
                                  messages=[{"role": "user", "content": "Hello"}], stream=True)


def _event_names(raw: bytes) -> list[str]:
    return [
        line.split(b":", 1)[1].strip().decode()
        for line in raw.splitlines()
        if line.startswith(b"event:")
    ]


def _final_message(server: ReplayServer, name: str) -> dict[str, Any]:
    _Served.body = (RECORDINGS / f"{name}.sse").read_bytes()
    with _client(server) as client, client.messages.stream(
        model=MODEL,
        max_tokens=1024,
        messages=[{"role": "user", "content": "Hello"}],
    ) as stream:
        message = stream.get_final_message()
    return message.model_dump(mode="json")


def test_every_recording_has_its_source_and_expected_result() -> None:
    names = sorted(p.stem for p in RECORDINGS.glob("*.sse"))
    assert len(names) >= 6
    sources = (RECORDINGS / "SOURCES.md").read_text()
    for name in names:
        assert f"`{name}.sse`" in sources
        if name not in ERROR_RECORDINGS:
            assert (RECORDINGS / f"{name}.expected.json").is_file()


@pytest.mark.parametrize("name", STREAM_RECORDINGS)
def test_sdk_parses_every_event(replay: ReplayServer, name: str) -> None:
    raw = (RECORDINGS / f"{name}.sse").read_bytes()
    _Served.body = raw
    with _client(replay) as client:
        types = [event.type for event in _events(client)]
    # The SDK skips pings and yields every other event, in order, typed.
    assert types == [n for n in _event_names(raw) if n != "ping"]
    assert types[0] == "message_start"
    assert types[-1] == "message_stop"


@pytest.mark.parametrize("name", STREAM_RECORDINGS)
def test_sdk_assembles_the_expected_message(replay: ReplayServer, name: str) -> None:
    expected = json.loads((RECORDINGS / f"{name}.expected.json").read_text())
    assert _final_message(replay, name) == expected
    path, body = replay.requests[-1]
    assert path == "/v1/messages"
    assert body["stream"] is True


def test_sdk_raises_the_midstream_error(replay: ReplayServer) -> None:
    _Served.body = (RECORDINGS / "error_midstream_fragment.sse").read_bytes()
    seen: list[str] = []
    with _client(replay) as client:
        stream = _events(client)
        with pytest.raises(anthropic.APIStatusError) as raised:
            for event in stream:
                assert event.type == "content_block_delta"
                assert event.delta.type == "text_delta"
                seen.append(event.delta.text)
    assert seen == ["d with a replacement character", " ("]
    error = raised.value
    # The HTTP status is the stream's 200; the error's kind is only in the body.
    assert type(error) is anthropic.APIStatusError
    assert error.status_code == 200
    assert error.body == {
        "type": "error",
        "error": {"details": None, "type": "api_error", "message": "Internal server error"},
    }
    assert error.message == str(error.body)


def _write_expected() -> None:
    with replaying("/v1/messages", lambda _: _Served.body) as server:
        for name in STREAM_RECORDINGS:
            result = _final_message(server, name)
            path = RECORDINGS / f"{name}.expected.json"
            path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
            print(path)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_recordings_anthropic --write")
    _write_expected()
