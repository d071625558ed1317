"""The machine's Redis for the tests, and whether it answers.

A test that needs it carries the ``redis`` marker (a module's ``pytestmark``, or
``pytest.param(REDIS_URL, marks=pytest.mark.redis)`` for one parameter). When no
Redis answers at ``TEST_REDIS_URL``, conftest skips those tests with the reason,
so ``make unit`` runs anywhere; ``make test`` sets ``REQUIRE_REDIS=1``, and there
a missing Redis fails them instead of hiding them.
"""

from __future__ import annotations

import functools
import os

import redis

# The machine's Redis, a database of its own; the tests use random stream ids.
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRED = os.environ.get("REQUIRE_REDIS") == "1"


@functools.cache
def unreachable() -> str | None:
    """Why the Redis at ``REDIS_URL`` cannot be used, or None when it answers PING.

    Asked once per session: a Redis that goes away mid-run fails the tests that
    use it, as it should.
    """
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    except ValueError as exc:
        return f"TEST_REDIS_URL {REDIS_URL!r} is not a Redis URL: {exc}"
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"no Redis answers at {REDIS_URL} ({type(exc).__name__}: {exc})"
    finally:
        client.close()
    return None
