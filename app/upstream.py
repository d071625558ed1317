"""Get a stream's deltas from the first model that answers.

Before the first token, a retryable failure (connection error, timeout, 429,
5xx, 529) is retried with exponential backoff and full jitter, waiting at least
what ``Retry-After`` asks, within a budget of attempts per model and of time in
all; then the request's fallbacks are tried in order. After the first token
nothing is retried: a failure ends the stream, so no answer is ever spliced
from two attempts. Time to the first token and silence between tokens are
bounded here too, as ``UpstreamTimeout`` (retryable before the first token).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass

import gevent

from app.providers.base import (
    ChatRequest,
    Delta,
    Provider,
    ProviderError,
    TextDelta,
    UpstreamTimeout,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One model to ask: the requested one, then each fallback."""

    model: str  # as the client named it, "provider/model"
    provider: Provider
    request: ChatRequest


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    budget_s: float = 30.0
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    ttft_timeout_s: float = 60.0
    token_timeout_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Backoff before attempt ``attempt + 1``: full jitter, at least Retry-After."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return max(random.uniform(0, ceiling), retry_after or 0.0)


@dataclass(frozen=True)
class Answering:
    """The first token came from this candidate: the one ``done`` names."""

    model: str


@dataclass(frozen=True)
class Retrying:
    """An attempt failed before its first token and another follows."""

    model: str
    error: ProviderError
    delay: float


Item = Delta | Answering | Retrying


def stream_deltas(candidates: Sequence[Candidate], policy: RetryPolicy,
                  clock: Callable[[], float] = time.monotonic) -> Generator[Item, None, None]:
    """Yield the deltas of the first candidate that answers; raise the last error if none does.

    The time budget bounds the waiting between retries; every fallback still
    gets its first attempt.
    """
    budget_ends = clock() + policy.budget_s
    error: ProviderError | None = None
    for candidate in candidates:
        for attempt in range(1, policy.max_attempts + 1):
            answered = False
            try:
                for delta in _timed(candidate, policy):
                    if not answered and isinstance(delta, TextDelta):
                        answered = True
                        yield Answering(candidate.model)
                    yield delta
                if not answered:
                    yield Answering(candidate.model)  # an empty answer is an answer
                return
            except ProviderError as exc:
                if answered:
                    raise
                error = exc
                if not exc.retryable or attempt == policy.max_attempts:
                    break
                delay = policy.delay(attempt, exc.retry_after)
                if clock() + delay > budget_ends:
                    break
                yield Retrying(candidate.model, exc, delay)
                gevent.sleep(delay)
    assert error is not None
    raise error


def _timed(candidate: Candidate, policy: RetryPolicy) -> Iterator[Delta]:
    """The candidate's deltas, with the time-to-first-token timeout.

    The silence between later tokens is the pump's to watch (one deadline it
    checks anyway), which spares a timer per token on the hot path.
    """
    deltas = candidate.provider.stream(candidate.request)
    name = candidate.provider.name
    timeout = policy.ttft_timeout_s
    timer = gevent.Timeout(timeout, UpstreamTimeout(
        f"{name} sent no first token within {timeout:g} s", provider=name))
    timer.start()
    try:
        for delta in deltas:
            if isinstance(delta, TextDelta):
                timer.close()
            yield delta
    finally:
        timer.close()
        deltas.close()  # closes the provider's HTTP response, whatever happened
