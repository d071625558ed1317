"""gunicorn hooks for an app that streams: drain on SIGTERM, close at exit.

In the host's ``gunicorn.conf.py``::

    from sse_gateway.flask.gunicorn import post_worker_init, worker_exit  # noqa: F401

On SIGTERM a worker refuses new streams, lets running ones finish until
``SHUTDOWN_MARGIN_S`` before gunicorn's graceful timeout, then ends the rest
with ``cancelled``/``shutdown``; as it exits, completion hooks still running
get their timeout and the store's and providers' connections are closed.
"""

from __future__ import annotations

import signal
from typing import Any

from sse_gateway.streams import Streams


def streams_of(worker: Any) -> Streams | None:
    """The streams service of the worker's app (None: not a Flask app using them)."""
    state = getattr(worker.wsgi, "extensions", {}).get("sse_gateway")
    return None if state is None else state.streams


def post_worker_init(worker: Any) -> None:
    """Drain the worker's streams on SIGTERM, then let gunicorn stop it as usual."""
    streams = streams_of(worker)
    if streams is None:
        return
    default_handler = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        streams.drain(worker.cfg.graceful_timeout)
        if callable(default_handler):
            default_handler(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    signal.siginterrupt(signal.SIGTERM, False)


def worker_exit(server: Any, worker: Any) -> None:
    """Close the worker's streams service as it ends."""
    streams = streams_of(worker)
    if streams is not None:
        streams.close()
