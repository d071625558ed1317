"""Request rates (flask-limiter) and who they are counted for.

Rates are counted per API key id, or per client address when the gateway runs
open (behind nginx, TRUSTED_PROXIES=1 makes that the client's address, not
nginx's). Storage is the broker's Redis when REDIS_URL is set, so every worker
and host shares one count; otherwise each worker counts for itself. Limits
are read from the settings per request, so each route has its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask_limiter import Limiter

from app.api import current_gateway
from app.api.caller import caller
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


@limiter.request_filter
def _no_rates() -> bool:
    """With every rate empty, skip flask-limiter's work altogether (~0.3 ms a request)."""
    settings = current_gateway().settings
    return not any(getattr(settings, name) for name in RATE_SETTINGS)


def rate(setting: str) -> Callable[[], str]:
    """The limit string of one route, from the running app's settings."""

    def value() -> str:
        limit: str = getattr(current_gateway().settings, setting)
        return limit

    return value


def unlimited(setting: str) -> Callable[[], bool]:
    """Exempt a route whose limit setting is empty."""
    return lambda: not rate(setting)()
