"""A keyless, deterministic local provider, so the gateway runs with no keys.

``demo/echo`` answers with the last user message, word by word; ``demo/lorem``
with ``max_tokens`` words of lorem ipsum (default 48). ``demo/tools`` shows a
tool round trip with no key: asked anything, it reasons briefly and calls
``get_time`` (arguments ``{"timezone": "UTC"}``, or the ``Area/City`` zone the
last user message names), ending ``tool_calls``; given the tool's result (a
last message of role ``tool``), it answers "It is <result> right now." All
keep a realistic cadence (a time to first token, then a delay between tokens)
so streaming, heartbeats, cancel and resume can be tried by hand.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Generator, Iterator

from sse_gateway.providers.base import (
    ChatRequest,
    Delta,
    Finished,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    UpstreamBadRequest,
    Usage,
)

LOREM = (
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed",
    "do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna",
    "aliqua", "ut", "enim", "ad", "minim", "veniam", "quis", "nostrud", "exercitation",
    "ullamco", "laboris", "nisi", "ut", "aliquip", "ex", "ea", "commodo", "consequat",
)

_WORDS = re.compile(r"\s*\S+\s*|\s+")
# A time zone named in a prompt: an IANA Area/City name (Europe/Paris,
# America/Argentina/Buenos_Aires), else UTC.
_ZONE = re.compile(r"\b[A-Z][A-Za-z_]+(?:/[A-Z][A-Za-z_+-]+){1,2}\b")


def split_words(text: str) -> list[str]:
    """Split into word tokens whose concatenation is ``text`` exactly."""
    return _WORDS.findall(text)


def iter_words(text: str) -> Iterator[str]:
    """The tokens of ``split_words``, one at a time: no list of a whole prompt's words."""
    return (match.group() for match in _WORDS.finditer(text))


def count_words(text: str) -> int:
    """How many tokens ``split_words`` would make, in O(1) memory."""
    return sum(1 for _ in _WORDS.finditer(text))


class DemoProvider:
    """The ``demo/<name>`` provider: always available, no network."""

    name = "demo"
    models = ("echo", "lorem", "tools")
    available = True

    def __init__(self, *, ttft_s: float, token_delay_s: float) -> None:
        self._ttft_s = ttft_s
        self._token_delay_s = token_delay_s

    def check(self, request: ChatRequest) -> None:
        """The demo models take any request (they ignore what they cannot use)."""

    def stream(self, request: ChatRequest) -> Generator[Delta, None, None]:
        if request.model == "tools":
            yield from self._tools(request)
            return
        # Lazily: a 1 MiB prompt of one-letter words is ~500k tokens, and a list
        # of them would cost ~30 MiB for the whole stream.
        if request.model == "echo":
            last_user = [m.text for m in request.messages if m.role == "user"]
            tokens = iter_words(last_user[-1] if last_user else "")
            limit = request.max_tokens
        elif request.model == "lorem":
            limit = request.max_tokens or 48
            tokens = ((" " if i else "") + LOREM[i % len(LOREM)] for i in range(limit))
        else:
            raise UpstreamBadRequest(f"demo has no model {request.model!r}", provider=self.name)
        time.sleep(self._ttft_s)
        yield from self._answer(tokens, limit, request)

    def _answer(self, tokens: Iterator[str], limit: int | None,
                request: ChatRequest) -> Generator[Delta, None, None]:
        """Text tokens at the demo's cadence, at most ``limit`` of them, then the usage
        and the finish ("length" when the limit cut the answer)."""
        finish = "stop"
        sent = 0
        for token in tokens:
            if limit is not None and sent == limit:
                finish = "length"
                break
            if sent:
                time.sleep(self._token_delay_s)
            yield TextDelta(token)
            sent += 1
        yield Usage(_input_tokens(request), sent)
        yield Finished(finish, finish)

    def _tools(self, request: ChatRequest) -> Generator[Delta, None, None]:
        """``demo/tools``: call ``get_time``, or answer with its result."""
        last = request.messages[-1] if request.messages else None
        time.sleep(self._ttft_s)
        if last is not None and last.role == "tool":
            yield from self._answer(iter_words(f"It is {last.text} right now."),
                                    request.max_tokens, request)
            return
        zone = _ZONE.search(last.text if last is not None else "")
        timezone = zone.group() if zone else "UTC"
        where = "" if timezone == "UTC" else f" in {timezone}"
        thought = split_words(f"The user wants the time{where}; I will call get_time.")
        arguments = json.dumps({"timezone": timezone})
        third = len(arguments) // 3
        fragments = (arguments[:third], arguments[third:2 * third], arguments[2 * third:])
        outputs: list[Delta] = [*map(ReasoningDelta, thought),
                                ToolCallStart(0, f"call_{secrets.token_hex(12)}", "get_time"),
                                *(ToolCallDelta(0, f) for f in fragments), ToolCallEnd(0)]
        for i, delta in enumerate(outputs):
            if i:
                time.sleep(self._token_delay_s)
            yield delta
        yield Usage(_input_tokens(request), len(thought) + len(fragments),
                    reasoning_tokens=len(thought))
        yield Finished("tool_calls", "tool_calls")

    def close(self) -> None:
        """Nothing to release."""


def _input_tokens(request: ChatRequest) -> int:
    """The demo's count of the prompt: its words."""
    return sum(count_words(m.text) for m in request.messages)
