"""gunicorn settings for the chat app: the gevent worker, and the streaming hooks.

    gunicorn -c examples/chat_app/gunicorn.conf.py examples.chat_app.wsgi:app

Streams (and their resume, status and cancel) live in the worker that started
them unless FLASK_SSE_GATEWAY_REDIS_URL is set: then any number of workers.
Environment: BIND (127.0.0.1:8000), WORKERS (1), GRACEFUL_TIMEOUT_S (30).
"""

import os
import sys
from typing import Any

# On SIGTERM, let running streams finish (then end them with cancelled/shutdown);
# as a worker exits, give completion hooks their time and close connections.
from sse_gateway.flask.gunicorn import post_worker_init, worker_exit  # noqa: F401

bind = os.environ.get("BIND", "127.0.0.1:8000")
worker_class = "gevent"  # one greenlet per request: a held stream costs little
workers = int(os.environ.get("WORKERS", "1"))
worker_connections = 1000
timeout = 30  # bounds a blocked event loop, not a stream's length
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT_S", "30"))
keepalive = 75
control_socket_disable = True  # several gunicorns on one host would share its path


def on_starting(server: Any) -> None:
    """Refuse several workers when streams live in each worker's memory."""
    if server.cfg.workers > 1 and not os.environ.get("FLASK_SSE_GATEWAY_REDIS_URL"):
        sys.stderr.write("error: several workers need FLASK_SSE_GATEWAY_REDIS_URL (a stream "
                         "followed or stopped through another worker would be unknown there)\n")
        sys.exit(1)
