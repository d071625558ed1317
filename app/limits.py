"""Request rates (flask-limiter) and who they are counted for.

Rates are counted per API key id, or per client address when the gateway runs
open (behind nginx, TRUSTED_PROXIES=1 makes that the client's address, not
nginx's). Storage is the broker's Redis when REDIS_URL is set, so every worker
and host shares one count; otherwise each worker counts for itself. Limits
are read from the settings per request, so each route has its own.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import limits
from flask_limiter import Limiter

from app.api import current_gateway
from app.api.caller import caller
from app.errors import RateLimited
from app.settings import RATE_SETTINGS

# swallow_errors: with Redis down the limiter lets requests through, and the
# broker, which needs Redis too, refuses them with a clear 503.
limiter = Limiter(key_func=caller, headers_enabled=True, retry_after="delta-seconds",
                  key_prefix="sse-rl", swallow_errors=True)


class _WithoutTraceback(logging.Filter):
    """Log a swallowed storage error as one line: an outage is not a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.msg} ({type(record.exc_info[1]).__name__})"
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("flask-limiter").addFilter(_WithoutTraceback())
log = logging.getLogger(__name__)


@limiter.request_filter
def _no_rates() -> bool:
    """With every rate empty, skip flask-limiter's work altogether (~0.3 ms a request)."""
    settings = current_gateway().settings
    return not any(getattr(settings, name) for name in RATE_SETTINGS)


def auth_lockout(address: str) -> float | None:
    """Seconds until ``address`` may present a key again, or None if it may now.

    Failed authentications are counted per address (``RATELIMIT_AUTH_FAILURES``)
    in the limiter's storage, before any key is looked at: flask-limiter's own
    route limits run inside the view, after authentication has answered.
    """
    try:
        for item in _parsed(current_gateway().settings.ratelimit_auth_failures):
            if not limiter.limiter.test(item, *_auth_key(address)):
                reset = limiter.limiter.get_window_stats(item, *_auth_key(address)).reset_time
                return max(1.0, reset - time.time())
    except Exception as exc:  # the storage is down: fail open, as the route limits do
        log.warning("could not check failed authentications (%s)", type(exc).__name__)
    return None


def count_auth_failure(address: str) -> None:
    """Count one request refused for its key against ``address``."""
    try:
        for item in _parsed(current_gateway().settings.ratelimit_auth_failures):
            limiter.limiter.hit(item, *_auth_key(address))
    except Exception as exc:
        log.warning("could not count a failed authentication (%s)", type(exc).__name__)


def hit_route_limit(setting: str, endpoint: str) -> None:
    """Count one action against the rate of the route ``endpoint`` (its setting
    ``setting``), in that route's own bucket; RateLimited when it is over.

    For what another transport does in a route's stead (a WebSocket's start
    frame is a ``POST /v1/streams``): flask-limiter keys a route's limit as
    (prefix, key, endpoint), so hitting that key shares the bucket. Fails open
    when the storage is down, as the route limits do.
    """
    args = ("sse-rl", caller(), endpoint)
    try:
        for item in _parsed(getattr(current_gateway().settings, setting)):
            if not limiter.limiter.hit(item, *args):
                reset = limiter.limiter.get_window_stats(item, *args).reset_time
                raise RateLimited(f"rate limit exceeded ({item}); slow down",
                                  retry_after=max(1.0, reset - time.time()))
    except RateLimited:
        raise
    except Exception as exc:
        log.warning("could not count a rate (%s)", type(exc).__name__)


def _auth_key(address: str) -> tuple[str, str, str]:
    return "sse-rl", "auth-failures", address


@functools.lru_cache(maxsize=8)
def _parsed(value: str) -> list[limits.RateLimitItem]:
    return limits.parse_many(value) if value else []


def rate(setting: str) -> Callable[[], str]:
    """The limit string of one route, from the running app's settings."""

    def value() -> str:
        limit: str = getattr(current_gateway().settings, setting)
        return limit

    return value


def unlimited(setting: str) -> Callable[[], bool]:
    """Exempt a route whose limit setting is empty."""
    return lambda: not rate(setting)()
