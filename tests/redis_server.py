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
from urllib.parse import urlsplit

import redis

# The machine's Redis, a database of its own; the tests use random stream ids.
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRED = os.environ.get("REQUIRE_REDIS") == "1"


def _other_database(url: str) -> str:
    """``url`` with another database number (14, or 13 when it is 14)."""
    parts = urlsplit(url)
    db = 13 if parts.path.strip("/") == "14" else 14
    return parts._replace(path=f"/{db}").geturl()


# The sweep tests' own database. A sweep ends as lost every stream of its
# database whose producer went silent (``sse:running`` is one key per database):
# in the shared one it would race a live test's gateway for that test's own
# SIGKILLed producer, and that gateway's sweeper could declare this process's
# streams, whose ``on_lost`` these tests count. Same server, so reachable alike.
SWEEP_REDIS_URL = os.environ.get("TEST_REDIS_SWEEP_URL") or _other_database(REDIS_URL)
# For the same reason, the live tests that SIGKILL a producer and count which
# instance declares its stream lost keep their instances on a database of their
# own: no other server of the suite sweeps it.
CLUSTER_REDIS_URL = (os.environ.get("TEST_REDIS_CLUSTER_URL")
                     or urlsplit(REDIS_URL)._replace(path="/12").geturl())


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
