"""The engine's settings: one frozen dataclass, every field with its default.

``StreamsConfig()`` is a working configuration (in-process broker, the keyless
demo provider). The gateway (``app/``) fills it from the environment, where
every field is the variable of the same name in capitals (``HEARTBEAT_S``); a
Flask host can fill it from ``app.config``. ``StreamsConfig.check`` names the
first bad value, so a typo fails at start-up, not in the middle of a stream.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

BROKER_SCHEMES = ("memory", "redis", "rediss")


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range; the message names it."""


@dataclass(frozen=True)
class StreamsConfig:
    """How streams are produced, kept and delivered (field = lower-case variable)."""

    # Where streams live: unset means in this process (one worker only);
    # redis://host:port/db shares them between workers and hosts.
    redis_url: str = ""
    # Models clients may ask for: provider/model, or provider/* for any model
    # of that provider (an OpenAI-compatible server, say). Comma-separated.
    models: tuple[str, ...] = ("demo/echo", "demo/lorem", "demo/tools", "openai/gpt-4o-mini",
                               "openai/gpt-4.1", "anthropic/claude-sonnet-4-5",
                               "anthropic/claude-haiku-4-5")
    # The model of a request that names none (the AI SDK's useChat sends no
    # model): empty means the first of MODELS that is not a provider/* pattern.
    default_model: str = ""
    # Batching, the default of a request that names none: outputs of one kind
    # arriving within COALESCE_MS milliseconds are one event (0..1000; 0 = every
    # delta is its own event); CHUNKING (none, word, line or sentence) ends text
    # events on such boundaries. The first output and the end are never delayed.
    coalesce_ms: float = 0.0
    chunking: str = "none"
    # Seconds of silence after which a ': ping' comment is sent.
    heartbeat_s: float = 15.0
    # Milliseconds a client waits before reconnecting (the 'retry:' field).
    retry_ms: int = 2000
    # Seconds generation goes on after the last reader dropped, waiting for a
    # resume; a request may ask for less or more, up to MAX_RESUME_GRACE_S.
    resume_grace_s: float = 10.0
    max_resume_grace_s: float = 300.0
    # Seconds an ended stream stays replayable.
    stream_ttl_s: float = 600.0
    # Events kept per stream; a resume from an older position answers 410.
    max_events_per_stream: int = 50000
    # Bytes of events kept per stream for replay (each event counts its payload
    # plus 48 bytes of bookkeeping); older events are dropped, as above.
    max_stream_bytes: int = 4 * 1024 * 1024
    # Bytes one owner (API key; the whole gateway when open) may keep in ended
    # streams; over it, its oldest ended streams are forgotten (404 as expired).
    # Must be at least MAX_STREAM_BYTES.
    max_stored_bytes_per_key: int = 64 * 1024 * 1024
    # Conversations kept by the gateway (a request's conversation_id): a
    # conversation is forgotten CONVERSATION_TTL_S after its last turn was
    # added (a day by default: a chat left overnight goes on in the morning,
    # while abandoned ones do not pile up; each is bounded below, and all of
    # an owner's together by MAX_CONVERSATION_BYTES_PER_KEY).
    conversation_ttl_s: float = 86400.0
    # Messages one conversation keeps (the clients' messages and the answers);
    # a start whose kept turns, new messages and answer would exceed it
    # answers 413 payload_too_large. At least 2; MAX_MESSAGES + 1 is the most
    # that takes effect (every kept turn is sent with the next request).
    max_conversation_turns: int = 200
    # Bytes of one conversation's turns (each stored as compact UTF-8 JSON);
    # a start whose new messages would exceed it answers 413 as above. An
    # answer that does not fit is kept as a marker without its content.
    max_conversation_bytes: int = 1024 * 1024
    # Bytes of all of one owner's conversations together (API key; the whole
    # gateway when open; each conversation counts its turns' bytes plus 640
    # for its keeping): when adding turns would take the owner over it, its
    # least recently added-to other conversations are forgotten first (404 as
    # expired; a start with such an id begins a new conversation). The
    # conversation added to is never forgotten so. Must be at least
    # MAX_CONVERSATION_BYTES.
    max_conversation_bytes_per_key: int = 64 * 1024 * 1024
    # A producer not heard of for this long (and half as long again while Redis
    # answers) is dead: its readers get stream_lost. Also how long a running
    # stream rides through a Redis outage before it ends with internal_error.
    producer_timeout_s: float = 5.0
    # Connections to Redis per worker process.
    redis_max_connections: int = 64
    # Bounds on a request.
    max_tokens_limit: int = 32768
    # max_tokens sent to providers that require one when the request gives none.
    default_max_tokens: int = 4096
    max_messages: int = 1000
    # Tools one request may declare (0 = none accepted; over it, 400), and the
    # size of its tools list as compact UTF-8 JSON (over it, 413
    # payload_too_large naming "tools").
    max_tools: int = 128
    max_tools_bytes: int = 65536
    # Decoded bytes of one data-URL image of a message (over it, 413 naming the
    # part). A body is bounded by MAX_CONTENT_LENGTH first: base64 takes 4/3 of
    # the image's size.
    max_image_bytes: int = 5 * 1024 * 1024
    # Running streams one worker accepts; also sizes each SDK's connection pool.
    max_active_streams: int = 1000
    # Running streams one API key (or, when open, one client address) may hold,
    # counted across every worker and host when REDIS_URL is set; 0 = no limit.
    max_streams_per_key: int = 20
    # Readers (open SSE responses: the POST's own, and each GET .../events) of
    # one stream, and of one key (per client address when open) on all its
    # streams at once; then 429 too_many_readers. 0 = no limit.
    max_readers_per_stream: int = 10
    max_readers_per_key: int = 50
    # Fallback models one request may name (0 = none accepted); each must
    # differ from the model and from the others, else 400.
    max_fallbacks: int = 3
    # Before the first token, retryable provider failures are retried with
    # exponential backoff and jitter, then the fallbacks are tried in order,
    # all within one budget per stream: every candidate (the model, each
    # fallback) gets one first attempt and they share RETRY_MAX_ATTEMPTS - 1
    # retries, so one POST costs at most RETRY_MAX_ATTEMPTS + its fallbacks
    # provider requests (6 with these defaults); no attempt starts later than
    # RETRY_BUDGET_S after the first one (waiting included), and none goes to
    # a provider before the Retry-After it gave ends (if that is past the
    # budget, the attempt is not made).
    retry_max_attempts: int = 3
    retry_budget_s: float = 30.0
    retry_base_delay_s: float = 0.5
    retry_max_delay_s: float = 8.0
    # Provider timeouts: to the first token, between tokens, for the whole stream.
    ttft_timeout_s: float = 60.0
    token_timeout_s: float = 60.0
    stream_timeout_s: float = 1800.0
    # A client that accepts no bytes for this long is dropped.
    write_timeout_s: float = 30.0
    # Connecting to a provider. Silence on its connection is bounded by
    # TTFT_TIMEOUT_S and TOKEN_TIMEOUT_S, not by a socket read timeout.
    provider_connect_timeout_s: float = 5.0
    # Seconds before the graceful timeout at which streams still running on a
    # stopping worker are ended with 'cancelled'/'shutdown'.
    shutdown_margin_s: float = 3.0
    # Seconds a completion hook may run before it is stopped (and counted).
    end_hook_timeout_s: float = 30.0
    # The demo provider's cadence: time to first token and between tokens.
    demo_ttft_s: float = 0.2
    demo_token_delay_s: float = 0.05

    # Provider credentials and endpoints (a base URL points the openai adapter
    # at any OpenAI-compatible server, such as vLLM or Ollama).
    openai_api_key: str = dataclasses.field(default="", repr=False)
    openai_base_url: str = ""
    anthropic_api_key: str = dataclasses.field(default="", repr=False)
    anthropic_base_url: str = ""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], prefix: str = "",
                     others: Collection[str] = ()) -> StreamsConfig:
        """Build and check a config from ``values`` (``app.config``, the environment):
        the field ``heartbeat_s`` is ``<prefix>HEARTBEAT_S``; a string is parsed
        ("15", "a,b"), a Python value taken as is; unset keys keep their default.
        Keys with the prefix that name no field are refused (a typo fails loudly),
        except ``others`` (the caller's own settings, e.g. ``CORS_ORIGINS``).
        Errors name the key as given (``<prefix>HEARTBEAT_S``).
        """
        fields = {f.name.upper(): f for f in dataclasses.fields(cls)}
        known: dict[str, Any] = {}
        for key, raw in values.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            if name not in fields:
                if prefix and name not in others:
                    raise ConfigError(f"{key} is not a setting (known: {prefix}"
                                      f"{f', {prefix}'.join(sorted({*fields, *others}))})")
                continue
            known[fields[name].name] = parse_value(key, raw, fields[name].type)
        return cls(**known).check(prefix)

    @property
    def broker_url(self) -> str:
        """The broker backend: Redis when configured, else this process's memory."""
        return self.redis_url or "memory://"

    @property
    def conversation_turns(self) -> int:
        """The turns a conversation keeps at most: all but the newest answer are
        sent with the next request, so MAX_MESSAGES + 1 at most."""
        return min(self.max_conversation_turns, self.max_messages + 1)

    @property
    def reader_lease_ttl_s(self) -> float:
        """How long a reader lease lives unrenewed: a feed renews it at each
        heartbeat, but not while a write to a slow client blocks."""
        return max(3 * self.heartbeat_s, self.write_timeout_s + 2 * self.heartbeat_s)

    def check(self, prefix: str = "") -> StreamsConfig:
        """Return self, or raise ConfigError naming the first bad value (as
        ``<prefix>NAME``: the key it was read from)."""
        positive = ("heartbeat_s", "stream_ttl_s", "max_tokens_limit", "default_max_tokens",
                    "max_messages", "max_tools_bytes", "max_image_bytes",
                    "max_events_per_stream", "max_stream_bytes",
                    "max_stored_bytes_per_key", "producer_timeout_s", "redis_max_connections",
                    "max_active_streams", "provider_connect_timeout_s", "retry_ms",
                    "retry_max_attempts", "ttft_timeout_s", "token_timeout_s",
                    "stream_timeout_s", "write_timeout_s", "end_hook_timeout_s",
                    "conversation_ttl_s", "max_conversation_bytes")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{prefix}{name.upper()} must be > 0, "
                                  f"got {getattr(self, name)!r}")
        non_negative = ("max_tools", "max_streams_per_key", "max_readers_per_stream", "max_readers_per_key",
                        "max_fallbacks", "retry_budget_s", "retry_base_delay_s",
                        "retry_max_delay_s", "resume_grace_s", "max_resume_grace_s",
                        "shutdown_margin_s", "demo_ttft_s", "demo_token_delay_s")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{prefix}{name.upper()} must be >= 0, "
                                  f"got {getattr(self, name)!r}")
        if not 0 <= self.coalesce_ms <= 1000:
            raise ConfigError(f"{prefix}COALESCE_MS must be 0..1000, got {self.coalesce_ms!r}")
        if self.chunking not in ("none", "word", "line", "sentence"):
            raise ConfigError(f"{prefix}CHUNKING must be none, word, line or sentence, got "
                              f"{self.chunking!r}")
        if self.max_stored_bytes_per_key < self.max_stream_bytes:
            raise ConfigError(f"{prefix}MAX_STORED_BYTES_PER_KEY must be at least "
                              f"{prefix}MAX_STREAM_BYTES")
        if self.max_conversation_bytes_per_key < self.max_conversation_bytes:
            raise ConfigError(f"{prefix}MAX_CONVERSATION_BYTES_PER_KEY must be at least "
                              f"{prefix}MAX_CONVERSATION_BYTES")
        if self.max_conversation_turns < 2:  # room for one message and its answer
            raise ConfigError(f"{prefix}MAX_CONVERSATION_TURNS must be >= 2, "
                              f"got {self.max_conversation_turns!r}")
        if self.resume_grace_s > self.max_resume_grace_s:
            raise ConfigError(f"{prefix}RESUME_GRACE_S must not exceed "
                              f"{prefix}MAX_RESUME_GRACE_S")
        scheme = urlsplit(self.broker_url).scheme
        if scheme not in BROKER_SCHEMES:
            raise ConfigError(f"{prefix}REDIS_URL {self.redis_url!r} has an unknown scheme "
                              f"{scheme!r}")
        for model in self.models:
            provider, _, name = model.partition("/")
            if not provider or not name:
                raise ConfigError(f"{prefix}MODELS entry {model!r} is not 'provider/model'")
        if self.default_model and "/" not in self.default_model.strip("/"):
            raise ConfigError(f"{prefix}DEFAULT_MODEL {self.default_model!r} is not "
                              "'provider/model'")
        return self

    @property
    def the_default_model(self) -> str:
        """DEFAULT_MODEL, else the first of MODELS that names one model ("" if none does)."""
        if self.default_model:
            return self.default_model
        return next((m for m in self.models if not m.endswith("/*")), "")


def parse_value(name: str, raw: Any, kind: Any) -> Any:
    """One setting's value as ``kind`` (a field's annotation): a string from the
    environment is parsed, a Python value checked; ConfigError names ``name``."""
    try:
        if kind in ("float", float):
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
            if not math.isfinite(value):  # nan passes every range check
                raise ValueError
            return value
        if kind in ("int", int):
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(raw)
        if kind in ("tuple[str, ...]",):
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise TypeError
            return tuple(item.strip() for item in items if item.strip())
        return "" if raw is None else str(raw).strip()
    except (TypeError, ValueError):
        expected = ("a number" if kind in ("float", float) else "an integer"
                    if kind in ("int", int) else "a comma-separated string or a list of strings")
        raise ConfigError(f"{name} must be {expected}, got {raw!r}") from None
