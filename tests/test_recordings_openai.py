"""Replay real recorded chat-completions streams to the official openai SDK.

Why: the fake provider's OpenAI-compatible fixtures (issue 13) must be built
from what real servers sent, not from what we believe they send. Each file in
tests/recordings/openai/ is a recorded stream (sources in SOURCES.md); this
test serves its bytes unchanged from a loopback HTTP server, lets
``openai.OpenAI().chat.completions.create(stream=True)`` parse it, and
compares what the SDK yields, accumulated per field, with the reviewed
``<name>.expected.json``.

The accumulation reads the parsed chunk objects only: ``delta.content`` (a
string, or Mistral's list of ``text`` / ``thinking`` parts, which the SDK
passes through unvalidated), ``reasoning_content`` and ``reasoning`` from the
delta's extra fields, ``refusal``, tool calls per index (id, name and
arguments concatenated as the SDK's own ``accumulate_delta`` does), the last
non-null ``finish_reason`` and the last ``usage``. ``extra_fields`` names the
fields the SDK does not model (``chunk.x``, ``choice.x``, ``delta.x``), which
a gateway either relays or must at least count.

``UPDATE_RECORDINGS=1`` rewrites the expected files instead of comparing
(review the diff before committing it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.replay import replaying

RECORDINGS = Path(__file__).resolve().parent / "recordings" / "openai"
NAMES = sorted(p.stem for p in RECORDINGS.glob("*.sse"))


def _recording(body: Any) -> bytes | None:
    """The recording a request names by its model (None: no such recording)."""
    model = body.get("model") if isinstance(body, dict) else None
    return (RECORDINGS / f"{model}.sse").read_bytes() if model in NAMES else None


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """Serve the recordings on a free loopback port for this module."""
    with replaying("/v1/chat/completions", _recording) as server:
        yield server.url + "/v1"


def _append(current: str | None, piece: Any) -> str | None:
    """Concatenate a streamed string piece; None and non-strings leave it as it was."""
    if isinstance(piece, str):
        return (current or "") + piece
    return current


def accumulate(chunks: list[Any]) -> dict[str, Any]:
    """Fold the SDK's parsed chunks into what a client would show for choice 0."""
    out: dict[str, Any] = {
        "chunks": len(chunks),
        "content": None,
        "reasoning_content": None,
        "reasoning": None,
        "thinking": None,
        "refusal": None,
        "tool_calls": {},
        "finish_reason": None,
        "usage": None,
        "extra_fields": set(),
    }
    extra: set[str] = out["extra_fields"]
    for chunk in chunks:
        extra.update(f"chunk.{k}" for k in (chunk.model_extra or {}))
        if chunk.usage is not None:
            out["usage"] = chunk.usage.to_dict()
        for choice in chunk.choices:
            assert choice.index == 0, "every recording has one choice"
            extra.update(f"choice.{k}" for k in (choice.model_extra or {}))
            if choice.finish_reason is not None:
                out["finish_reason"] = choice.finish_reason
            # Azure's content-filter chunk has a choice without any delta.
            delta = getattr(choice, "delta", None)
            if delta is None:
                continue
            delta_extra = delta.model_extra or {}
            extra.update(f"delta.{k}" for k in delta_extra)
            if isinstance(delta.content, list):  # Mistral: [{"type": "text"|"thinking", ...}]
                for part in delta.content:
                    if part.get("type") == "text":
                        out["content"] = _append(out["content"], part.get("text"))
                    elif part.get("type") == "thinking":
                        for sub in part.get("thinking") or []:
                            out["thinking"] = _append(out["thinking"], sub.get("text"))
                    else:
                        raise AssertionError(f"unknown content part {part!r}")
            else:
                out["content"] = _append(out["content"], delta.content)
            out["reasoning_content"] = _append(
                out["reasoning_content"], delta_extra.get("reasoning_content")
            )
            out["reasoning"] = _append(out["reasoning"], delta_extra.get("reasoning"))
            out["refusal"] = _append(out["refusal"], delta.refusal)
            for call in delta.tool_calls or []:
                entry = out["tool_calls"].setdefault(
                    str(call.index), {"id": "", "name": "", "arguments": ""}
                )
                entry["id"] += call.id or ""
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
    out["extra_fields"] = sorted(extra)
    return out


def test_every_recording_has_sources_and_expected() -> None:
    """Each recording is described in SOURCES.md and has its reviewed result."""
    sources = (RECORDINGS / "SOURCES.md").read_text(encoding="utf-8")
    assert len(NAMES) >= 8
    for name in NAMES:
        assert f"`{name}.sse`" in sources, name
        assert (RECORDINGS / f"{name}.expected.json").exists() or os.environ.get(
            "UPDATE_RECORDINGS"
        )
        raw = (RECORDINGS / f"{name}.sse").read_bytes()
        # an event or an SSE comment line (OpenRouter sends ": OPENROUTER PROCESSING")
        assert raw.startswith((b"data: ", b": ")) and raw.endswith(b"\n\n"), name


@pytest.mark.parametrize("name", NAMES)
def test_openai_sdk_parses_recording(base_url: str, name: str) -> None:
    """The official SDK parses every chunk, and the accumulation is the reviewed one."""
    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=10)
    with (
        client,
        client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "replay"}], stream=True
        ) as stream,
    ):
        chunks = list(stream)
    got = accumulate(chunks)
    expected_path = RECORDINGS / f"{name}.expected.json"
    if os.environ.get("UPDATE_RECORDINGS"):
        expected_path.write_text(
            json.dumps(got, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    assert got == json.loads(expected_path.read_text(encoding="utf-8"))
