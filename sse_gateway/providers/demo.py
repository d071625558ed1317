"""A keyless, deterministic local provider, so the gateway runs with no keys.

``demo/echo`` answers with the last user message, word by word; ``demo/lorem``
with ``max_tokens`` words of lorem ipsum (default 48). Both keep a realistic
cadence (a time to first token, then a delay between tokens) so streaming,
heartbeats, cancel and resume can be tried by hand.
"""

from __future__ import annotations

import re
import time
from collections.abc import Generator, Iterator

from sse_gateway.providers.base import (
    ChatRequest,
    Delta,
    Finished,
    TextDelta,
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
    models = ("echo", "lorem")
    available = True

    def __init__(self, *, ttft_s: float, token_delay_s: float) -> None:
        self._ttft_s = ttft_s
        self._token_delay_s = token_delay_s

    def check(self, request: ChatRequest) -> None:
        """The demo models take any request (they ignore what they cannot use)."""

    def stream(self, request: ChatRequest) -> Generator[Delta, None, None]:
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
        finish = "stop"
        time.sleep(self._ttft_s)
        sent = 0
        for token in tokens:
            if limit is not None and sent == limit:
                finish = "length"
                break
            if sent:
                time.sleep(self._token_delay_s)
            yield TextDelta(token)
            sent += 1
        input_tokens = sum(count_words(m.text) for m in request.messages)
        yield Usage(input_tokens, sent)
        yield Finished(finish, finish)

    def close(self) -> None:
        """Nothing to release."""
