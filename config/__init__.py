"""Default settings, as classes in the Flask tradition.

Every attribute is an environment variable of the same name; ``app.settings``
reads the class named by ``GATEWAY_CONFIG`` (default ``Default``), then the
environment, then the overrides passed to ``create_app``, and validates the
result once. The engine's settings (streams, providers, broker, timeouts) have
their defaults, documented, in ``sse_gateway/config.py``; a class here may
override any of them by the same name. Keep this module free of imports:
``gunicorn.conf.py`` reads it in the master process, before gevent patches
anything.
"""


class Default:
    """The gateway's own settings: keys, rate limits, CORS, proxies, logs.

    The engine's settings (streams, providers, broker, timeouts) and their
    defaults are the fields of ``sse_gateway.config.StreamsConfig``; a class here
    may set them too (as ``Development`` and ``Production`` below may).
    """

    # Proxies in front whose X-Forwarded-For/-Proto to trust (1 behind nginx.conf).
    TRUSTED_PROXIES = 0
    MAX_CONTENT_LENGTH = 1024 * 1024
    # Seconds a request body has to arrive in full, from the moment the app
    # starts reading it (a total, so a slow drip is bounded too); else 408
    # request_timeout and the connection is closed.
    BODY_TIMEOUT_S = 10.0

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
    # Stream tokens (X-Stream-Token; docs/sidecar.md): the secret they are signed
    # with (at least 32 characters), and how long one is valid, in seconds. Unset,
    # the secret is derived from the API keys (the same keys agree on every
    # worker and host; changing them invalidates every token); an open gateway
    # with no secret signs with a fixed development secret.
    STREAM_TOKEN_SECRET = ""
    STREAM_TOKEN_TTL_S = 3600.0
    LOG_LEVEL = "INFO"
    # "text" for people, "json" (one object a line) for log pipelines.
    LOG_FORMAT = "text"


class Development(Default):
    """Local runs: chattier logs."""

    LOG_LEVEL = "DEBUG"


class Production(Default):
    """Behind nginx with Redis; set REDIS_URL and the provider keys."""
