"""Keep stream tokens out of every log line.

A browser's ``EventSource`` cannot send headers, so it carries its stream
token in the URL (``?token=sst_...``), and gunicorn's access line and its
"Error handling request <uri>" line print URLs with their query strings.
``ScrubTokens`` rewrites a record before any handler formats it: a
``token=`` query value, and anything shaped like a token (the ``sst_`` prefix
of ``app/tokens.py``), become ``[redacted]``. ``GatewayLogger`` is gunicorn's
logger with the filter on its access and error logs (``logger_class`` in
``gunicorn.conf.py``); the app puts it on its own handlers.

Imported by the master (``logger_class``): only gunicorn and the standard
library here, never the app or an SDK.
"""

import logging
import re
from typing import Any

from gunicorn.glogging import Logger

# A token anywhere (its prefix is app.tokens.PREFIX; tests check they agree), and
# the value of a `token` query parameter, whatever it holds.
_TOKEN = re.compile(r"sst_[A-Za-z0-9_.\-]+|(?<=[?&;]token=)[^&;\s\"']+")
REDACTED = "[redacted]"


def scrub(text: str) -> str:
    """``text`` with every stream token in it replaced."""
    return _TOKEN.sub(REDACTED, text) if ("sst_" in text or "token=" in text) else text


class ScrubTokens(logging.Filter):
    """Rewrite a record's message (and its traceback's text) without stream tokens."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        return True


class GatewayLogger(Logger):  # type: ignore[misc]  # gunicorn has no types
    """gunicorn's logger, scrubbing stream tokens from access and error lines."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            if not any(isinstance(f, ScrubTokens) for f in logger.filters):
                logger.addFilter(ScrubTokens())
