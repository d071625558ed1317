"""Default settings, as classes in the Flask tradition.

Every attribute is an environment variable of the same name; ``app.settings``
reads the class named by ``GATEWAY_CONFIG`` (default ``Default``), then the
environment, then the overrides passed to ``create_app``, and validates the
result once. Keep this module free of imports: ``gunicorn.conf.py`` reads it in
the master process, before gevent patches anything.
"""


class Default:
    """Safe defaults: in-process broker, demo provider, no keys."""

    # Where streams live: unset means in this process (one worker only);
    # redis://host:port/db shares them between workers and hosts.
    REDIS_URL = ""
    # Models clients may ask for: provider/model, or provider/* for any model
    # of that provider (an OpenAI-compatible server, say). Comma-separated.
    MODELS = (
        "demo/echo,demo/lorem,openai/gpt-4o-mini,openai/gpt-4.1,"
        "anthropic/claude-sonnet-4-5,anthropic/claude-haiku-4-5"
    )
    # Seconds of silence after which a ': ping' comment is sent.
    HEARTBEAT_S = 15.0
    # Milliseconds a client waits before reconnecting (the 'retry:' field).
    RETRY_MS = 2000
    # Seconds generation goes on after the last reader dropped, waiting for a
    # resume; a request may ask for less or more, up to MAX_RESUME_GRACE_S.
    RESUME_GRACE_S = 10.0
    MAX_RESUME_GRACE_S = 300.0
    # Seconds an ended stream stays replayable.
    STREAM_TTL_S = 600.0
    # Events kept per stream; a resume from an older position answers 410.
    MAX_EVENTS_PER_STREAM = 50000
    # Bytes of events kept per stream for replay (each event counts its frame
    # plus 48 bytes of bookkeeping); older events are dropped, as above.
    MAX_STREAM_BYTES = 4 * 1024 * 1024
    # Bytes one owner (API key; the whole gateway when open) may keep in ended
    # streams; over it, its oldest ended streams are forgotten (404 as expired).
    # Must be at least MAX_STREAM_BYTES.
    MAX_STORED_BYTES_PER_KEY = 64 * 1024 * 1024
    # A producer not heard of for this long (and half as long again while Redis
    # answers) is dead: its readers get stream_lost. Also how long a running
    # stream rides through a Redis outage before it ends with internal_error.
    PRODUCER_TIMEOUT_S = 5.0
    # Connections to Redis per worker process.
    REDIS_MAX_CONNECTIONS = 64
    # Proxies in front whose X-Forwarded-For/-Proto to trust (1 behind nginx.conf).
    TRUSTED_PROXIES = 0
    # Bounds on a request.
    MAX_TOKENS_LIMIT = 32768
    # max_tokens sent to providers that require one when the request gives none.
    DEFAULT_MAX_TOKENS = 4096
    MAX_CONTENT_LENGTH = 1024 * 1024
    # Seconds a request body has to arrive in full, from the moment the app
    # starts reading it (a total, so a slow drip is bounded too); else 408
    # request_timeout and the connection is closed.
    BODY_TIMEOUT_S = 10.0
    MAX_MESSAGES = 1000
    # Running streams one worker accepts; also sizes each SDK's connection pool.
    MAX_ACTIVE_STREAMS = 1000
    # Running streams one API key (or, when open, one client address) may hold,
    # counted across every worker and host when REDIS_URL is set; 0 = no limit.
    MAX_STREAMS_PER_KEY = 20
    # Readers (open SSE responses: the POST's own, and each GET .../events) of
    # one stream, and of one key (per client address when open) on all its
    # streams at once; then 429 too_many_readers. 0 = no limit.
    MAX_READERS_PER_STREAM = 10
    MAX_READERS_PER_KEY = 50

    # API keys clients send as "Authorization: Bearer <key>": comma-separated,
    # and/or a file with one key a line. None configured = open (development).
    API_KEYS = ""
    API_KEYS_FILE = ""
    # Request rates per key (per client address when open), per route, in
    # flask-limiter's notation ("60/minute;5/second"); empty = no limit. Counted
    # in Redis when REDIS_URL is set, else per worker.
    RATELIMIT_CREATE = "60/minute"
    RATELIMIT_EVENTS = "120/minute"
    RATELIMIT_STATUS = "600/minute"
    RATELIMIT_CANCEL = "120/minute"
    RATELIMIT_MODELS = "120/minute"
    # Requests refused for a missing or wrong API key, per client address; past
    # it, every request from that address (whatever its key) answers 429 until
    # the window passes, so keys cannot be guessed quickly. Empty = no limit.
    RATELIMIT_AUTH_FAILURES = "20/minute"
    # Browser origins allowed to call the API (comma-separated); none by default.
    CORS_ORIGINS = ""

    # Fallback models one request may name (0 = none accepted); each must
    # differ from the model and from the others, else 400.
    MAX_FALLBACKS = 3
    # Before the first token, retryable provider failures are retried with
    # exponential backoff and jitter, then the fallbacks are tried in order,
    # all within one budget per stream: every candidate (the model, each
    # fallback) gets one first attempt and they share RETRY_MAX_ATTEMPTS - 1
    # retries, so one POST costs at most RETRY_MAX_ATTEMPTS + its fallbacks
    # provider requests (6 with these defaults); no attempt starts later than
    # RETRY_BUDGET_S after the first one (waiting included), and none goes to
    # a provider before the Retry-After it gave ends (if that is past the
    # budget, the attempt is not made).
    RETRY_MAX_ATTEMPTS = 3
    RETRY_BUDGET_S = 30.0
    RETRY_BASE_DELAY_S = 0.5
    RETRY_MAX_DELAY_S = 8.0
    # Provider timeouts: to the first token, between tokens, for the whole stream.
    TTFT_TIMEOUT_S = 60.0
    TOKEN_TIMEOUT_S = 60.0
    STREAM_TIMEOUT_S = 1800.0
    # A client that accepts no bytes for this long is dropped.
    WRITE_TIMEOUT_S = 30.0
    # Connecting to a provider. Silence on its connection is bounded by
    # TTFT_TIMEOUT_S and TOKEN_TIMEOUT_S, not by a socket read timeout.
    PROVIDER_CONNECT_TIMEOUT_S = 5.0
    # Seconds before the graceful timeout at which streams still running on a
    # stopping worker are ended with 'cancelled'/'shutdown'.
    SHUTDOWN_MARGIN_S = 3.0
    # The demo provider's cadence: time to first token and between tokens.
    DEMO_TTFT_S = 0.2
    DEMO_TOKEN_DELAY_S = 0.05
    LOG_LEVEL = "INFO"
    # "text" for people, "json" (one object a line) for log pipelines.
    LOG_FORMAT = "text"


class Development(Default):
    """Local runs: chattier logs."""

    LOG_LEVEL = "DEBUG"


class Production(Default):
    """Behind nginx with Redis; set REDIS_URL and the provider keys."""
