"""Prometheus metrics, correct across gunicorn workers.

gunicorn's config sets ``PROMETHEUS_MULTIPROC_DIR`` in the master, before any
worker imports this module: each worker then writes its samples to files
there, ``/metrics`` merges them (``MultiProcessCollector``), and the master
marks a dead worker's files (``child_exit``), so a scrape sees every worker
and a killed worker's in-flight gauge drops out. Without the variable (a
plain ``create_app()``), the default single-process registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)

STREAMS_STARTED = Counter("sse_streams_started_total", "Streams started.", ["provider"])
STREAMS_ENDED = Counter(
    "sse_streams_ended_total",
    "Streams ended, by outcome (done, error, cancelled) and reason (error code or cancel reason).",
    ["provider", "outcome", "reason"])
STREAMS_ACTIVE = Gauge("sse_streams_active", "Streams being produced.",
                       multiprocess_mode="livesum")
TIME_TO_FIRST_TOKEN = Histogram("sse_time_to_first_token_seconds",
                                "From the stream's start to its first token.", ["provider"],
                                buckets=_SECONDS)
STREAM_DURATION = Histogram("sse_stream_duration_seconds", "From start to end.",
                            ["provider", "outcome"], buckets=_SECONDS)
TOKENS = Counter("sse_tokens_relayed_total", "Provider text deltas relayed.", ["provider"])
PROVIDER_ERRORS = Counter("sse_provider_errors_total",
                          "Provider failures, retried or not.", ["provider", "code"])
RETRIES = Counter("sse_retries_total", "Attempts retried before the first token.", ["provider"])
FALLBACKS = Counter("sse_fallbacks_total", "Streams answered by a fallback model.", ["provider"])
CANCEL_TO_CLOSED = Histogram(
    "sse_cancel_to_provider_closed_seconds",
    "From noticing a cancel, disconnect or shutdown to the provider connection closed.",
    ["reason"], buckets=_LATENCY)
REJECTIONS = Counter("sse_rejections_total", "Requests refused by a limit.", ["reason"])
WEBSOCKETS_OPEN = Gauge("sse_websockets_open", "WebSockets open (GET /v1/ws).",
                        multiprocess_mode="livesum")
WEBSOCKET_FRAMES_REFUSED = Counter("sse_websocket_frames_refused_total",
                                   "Client WebSocket frames answered with an error frame.",
                                   ["code"])
HEARTBEATS = Counter("sse_heartbeats_total", "': ping' comments sent.")
END_HOOKS = Counter("sse_end_hooks_total",
                    "Completion hook calls, by outcome (ok, error, timeout).", ["outcome"])
END_HOOK_DELAY = Histogram("sse_end_hook_delay_seconds",
                           "From a stream's terminal event stored to its hooks starting.",
                           buckets=_LATENCY)
END_HOOK_DURATION = Histogram("sse_end_hook_duration_seconds", "How long a hook call ran.",
                              ["outcome"], buckets=_SECONDS)


def render() -> tuple[bytes, str]:
    """The exposition of every worker (or of this process when not under gunicorn)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
