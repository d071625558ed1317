"""Get a stream's deltas from the first model that answers.

Before the first token, a retryable failure (connection error, timeout, 429,
5xx, 529) is retried with exponential backoff and full jitter; then the
request's fallbacks are tried in order. The whole chain shares one budget, so
one POST has a small, stated worst case of provider requests:

- every candidate (the model, each fallback) gets one first attempt, and all
  of them share ``max_attempts - 1`` retries (the model, failing first, uses
  them first): at most ``max_attempts + len(fallbacks)`` requests;
- no attempt starts later than ``budget_s`` after the first one (waiting
  included);
- no request goes to a provider sooner than the ``Retry-After`` that provider
  last gave in this chain, whichever model it is for. A retry or fallback that
  could only start after the budget is not sent at all (never early): the
  next candidate, on another provider, may still go at once.

After the first token nothing is retried: a failure ends the stream, so no
answer is ever spliced from two attempts. Time to the first token and silence
between tokens are bounded here too, as ``UpstreamTimeout`` (retryable before
the first token).
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass

import gevent

from sse_gateway.clock import REAL, Timer
from sse_gateway.providers.base import (
    ChatRequest,
    Delta,
    Output,
    Provider,
    ProviderError,
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
    """The budget of one candidate chain (see the module docstring)."""

    max_attempts: int = 3  # the model's attempts; each fallback adds its first one
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
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], object] = gevent.sleep,
                  timeout: Callable[[float, BaseException], Timer] = REAL.timeout,
                  ) -> Generator[Item, None, None]:
    """Yield the deltas of the first candidate that answers; raise the last error if none does.

    The rules (one budget for the chain, Retry-After per provider) are in the
    module docstring. ``timeout`` starts the time-to-first-token timer.
    """
    budget_ends = clock() + policy.budget_s
    retries_left = policy.max_attempts - 1
    not_before: dict[str, float] = {}  # provider name -> its Retry-After ends
    error: ProviderError | None = None
    for candidate in candidates:
        name = candidate.provider.name
        backoff = 0.0
        for attempt in itertools.count(1):
            now = clock()
            starts = max(now + backoff, not_before.get(name, now))
            if error is not None and starts > budget_ends:
                log.info("%s: %s skipped, it could start only %.2f s after the retry "
                         "budget ends", candidate.model, "retry" if attempt > 1 else "attempt",
                         starts - budget_ends)
                break
            if attempt > 1:
                assert error is not None
                retries_left -= 1
                yield Retrying(candidate.model, error, starts - now)
            if starts > now:
                sleep(starts - now)
            answered = False
            try:
                for delta in _timed(candidate, policy, timeout):
                    if not answered and isinstance(delta, Output):
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
                if exc.retry_after is not None:
                    not_before[name] = max(not_before.get(name, 0.0), clock() + exc.retry_after)
                if not exc.retryable or retries_left <= 0:
                    break
                backoff = policy.delay(attempt, None)
    assert error is not None
    raise error


def _timed(candidate: Candidate, policy: RetryPolicy,
           start_timer: Callable[[float, BaseException], Timer]) -> Iterator[Delta]:
    """The candidate's deltas, with the time-to-first-token timeout.

    The silence between later outputs is the pump's to watch (one deadline it
    checks anyway), which spares a timer per token on the hot path.
    """
    deltas = candidate.provider.stream(candidate.request)
    name = candidate.provider.name
    timeout = policy.ttft_timeout_s
    timer = start_timer(timeout, UpstreamTimeout(
        f"{name} sent no first token within {timeout:g} s", provider=name))
    try:
        for delta in deltas:
            if isinstance(delta, Output):
                timer.close()
            yield delta
    finally:
        timer.close()
        deltas.close()  # closes the provider's HTTP response, whatever happened
