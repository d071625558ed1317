"""gunicorn settings for the gateway: ``gunicorn -c config/gunicorn.conf.py wsgi:app``.

This file runs in the master, before gevent patches anything: it must not
import the app or an SDK (an SSL context built here breaks every TLS call in
the workers). Hooks import what they need lazily, inside the worker.

Environment: BIND (127.0.0.1:8000), WORKERS (1), WORKER_CONNECTIONS (10000),
GRACEFUL_TIMEOUT_S (30), KEEPALIVE_S (75), REDIS_URL.
"""

import os
import resource
import shutil
import sys
import tempfile

bind = os.environ.get("BIND", "127.0.0.1:8000")
# gevent's worker, answering gunicorn's own refusals as JSON (config/worker.py).
worker_class = "config.worker.GatewayWorker"
workers = int(os.environ.get("WORKERS", "1"))
# Each stream holds one client connection; idle keep-alive ones count too.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "10000"))
# For gevent workers `timeout` bounds a blocked event loop, not a stream's length.
timeout = 30
# Streams still running at SIGTERM get this long, less SHUTDOWN_MARGIN_S, to end.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT_S", "30"))
# Above nginx's upstream keepalive_timeout, so nginx never reuses a closed connection.
keepalive = int(os.environ.get("KEEPALIVE_S", "75"))
# Never preload: the app and its SDK clients must be built after gevent patched ssl.
preload_app = False
# Several instances on one host (tests, sidecars) would share one control socket.
control_socket_disable = True
accesslog = os.environ.get("ACCESS_LOG", "-") or None
# gunicorn's logger, scrubbing stream tokens (?token=sst_...) from every line (config/logs.py).
logger_class = "config.logs.GatewayLogger"
# The stream id of every stream request is in its access line (stream=...).
access_log_format = ('%(h)s %(t)s "%(r)s" %(s)s %(b)s %(L)ss pid=%(p)s '
                     'stream=%({x-stream-id}o)s "%(a)s"')

# Prometheus multiprocess mode: every worker writes its samples to files in
# this directory, /metrics merges them. It must be in the environment before a
# worker imports prometheus_client, so it is set here, in the master.
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sse-gateway-metrics-")
errorlog = "-"
# gevent records where each greenlet was spawned (for debugging tools): ~4 KiB
# of every held stream. Workers inherit this before they import gevent.
os.environ.setdefault("GEVENT_TRACK_GREENLET_TREE", "0")
loglevel = os.environ.get("LOG_LEVEL", "info").lower()


def on_starting(server):  # noqa: ANN001, ANN201 - gunicorn hook
    """Refuse to run several workers on the in-process broker; raise the fd limit."""
    if server.cfg.workers > 1 and not os.environ.get("REDIS_URL"):
        sys.stderr.write(
            f"error: {server.cfg.workers} workers were asked for, but REDIS_URL is not set. "
            "Without Redis every stream lives in the process that started it, so a resume, "
            "status or DELETE that reaches another worker would answer 404. "
            "Run one worker (WORKERS=1) or set REDIS_URL.\n")
        sys.exit(1)
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for name in os.listdir(metrics_dir):  # samples of an earlier run would be added in
        if name.endswith(".db"):
            os.unlink(os.path.join(metrics_dir, name))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 2 * server.cfg.worker_connections + 100))
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# The cyclic garbage collector, tuned for a worker holding thousands of streams
# (each a few greenlets whose frames a collection walks): with CPython's
# defaults (700, 10, 10) it took 13% of a busy worker's CPU, with full
# collections stopping every stream for up to 280 ms (400 streams, 2 cores;
# bench/profile.py's workload). gc.freeze() moves everything loaded at start
# (the app, the SDKs: ~230,000 objects) out of the collector's sight, and a
# young generation of 50,000 makes collections rare: the gateway makes few
# reference cycles, so in the same workload none was needed.
GC_THRESHOLDS = (50_000, 20, 100)


def post_worker_init(worker):  # noqa: ANN001, ANN201 - gunicorn hook
    """Tune the garbage collector; on SIGTERM, let streams finish, then end the
    rest with cancelled/shutdown."""
    import gc

    from sse_gateway.flask import gunicorn

    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    gunicorn.post_worker_init(worker)


def worker_exit(server, worker):  # noqa: ANN001, ANN201 - gunicorn hook
    """In the worker, as it ends: completion hooks get their timeout; the stream
    store's connections (and its pub/sub thread) and the SDK pools are closed."""
    from sse_gateway.flask import gunicorn

    gunicorn.worker_exit(server, worker)


def child_exit(server, worker):  # noqa: ANN001, ANN201 - gunicorn hook
    """Drop a dead worker's live gauges (its counters are kept)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # noqa: ANN001, ANN201 - gunicorn hook
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
