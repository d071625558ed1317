"""Load the gateway's settings: defaults, then the environment, then overrides.

The defaults are the classes in ``config``; every setting is an environment
variable of the same name. Values are parsed and checked once, at start-up, so
a typo fails loudly with the variable's name instead of surfacing as a strange
error in the middle of a stream.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import limits

import config

BROKER_SCHEMES = ("memory", "redis", "rediss")
# The per-route request rates, flask-limiter's notation; empty means no limit.
RATE_SETTINGS = ("ratelimit_create", "ratelimit_events", "ratelimit_status",
                 "ratelimit_cancel", "ratelimit_models", "ratelimit_auth_failures")


class SettingsError(ValueError):
    """A setting is missing, malformed or out of range; the message names it."""


@dataclass(frozen=True)
class Settings:
    """The validated settings of one gateway process (field = lower-case variable)."""

    redis_url: str
    models: tuple[str, ...]
    heartbeat_s: float
    retry_ms: int
    resume_grace_s: float
    max_resume_grace_s: float
    stream_ttl_s: float
    max_events_per_stream: int
    max_stream_bytes: int
    max_stored_bytes_per_key: int
    producer_timeout_s: float
    redis_max_connections: int
    trusted_proxies: int
    max_tokens_limit: int
    default_max_tokens: int
    max_content_length: int
    body_timeout_s: float
    max_messages: int
    max_active_streams: int
    max_streams_per_key: int
    max_readers_per_stream: int
    max_readers_per_key: int
    api_keys: tuple[str, ...] = dataclasses.field(repr=False)
    api_keys_file: str
    ratelimit_create: str
    ratelimit_events: str
    ratelimit_status: str
    ratelimit_cancel: str
    ratelimit_models: str
    ratelimit_auth_failures: str
    cors_origins: tuple[str, ...]
    max_fallbacks: int
    retry_max_attempts: int
    retry_budget_s: float
    retry_base_delay_s: float
    retry_max_delay_s: float
    ttft_timeout_s: float
    token_timeout_s: float
    stream_timeout_s: float
    write_timeout_s: float
    provider_connect_timeout_s: float
    shutdown_margin_s: float
    demo_ttft_s: float
    demo_token_delay_s: float
    log_level: str
    log_format: str
    openai_api_key: str = dataclasses.field(repr=False)
    openai_base_url: str
    anthropic_api_key: str = dataclasses.field(repr=False)
    anthropic_base_url: str

    def all_api_keys(self) -> tuple[str, ...]:
        """Keys from API_KEYS and API_KEYS_FILE (blank lines and # comments skipped)."""
        return self.api_keys + (self.file_api_keys() if self.api_keys_file else ())

    def file_api_keys(self) -> tuple[str, ...]:
        with open(self.api_keys_file, encoding="utf-8") as lines:
            return tuple(line.strip() for line in lines
                         if line.strip() and not line.lstrip().startswith("#"))

    @property
    def broker_url(self) -> str:
        """The broker backend: Redis when configured, else this process's memory."""
        return self.redis_url or "memory://"

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Build and validate settings; raise SettingsError naming the bad variable."""
        environ = os.environ if environ is None else environ
        base_name = environ.get("GATEWAY_CONFIG", "Default")
        base = getattr(config, base_name, None)
        if not isinstance(base, type):
            raise SettingsError(f"GATEWAY_CONFIG {base_name!r} is not a class in config/")
        overrides = {k.upper(): v for k, v in (overrides or {}).items()}
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = field.name.upper()
            if name in overrides:
                raw: Any = overrides[name]
            elif name in environ:
                raw = environ[name]
            else:
                raw = getattr(base, name, "")
            values[field.name] = _parse(name, raw, field.type)
        unknown = set(overrides) - {f.name.upper() for f in dataclasses.fields(cls)}
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        settings = cls(**values)
        settings._check()
        return settings

    def _check(self) -> None:
        positive = ("heartbeat_s", "stream_ttl_s", "max_tokens_limit", "default_max_tokens",
                    "max_content_length", "max_messages", "max_events_per_stream",
                    "max_stream_bytes", "max_stored_bytes_per_key",
                    "producer_timeout_s", "redis_max_connections", "max_active_streams",
                    "provider_connect_timeout_s", "retry_ms",
                    "retry_max_attempts", "ttft_timeout_s", "token_timeout_s",
                    "stream_timeout_s", "write_timeout_s", "body_timeout_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name.upper()} must be > 0, got {getattr(self, name)!r}")
        non_negative = ("trusted_proxies", "max_streams_per_key", "max_readers_per_stream",
                        "max_readers_per_key", "max_fallbacks", "retry_budget_s",
                        "retry_base_delay_s", "retry_max_delay_s", "resume_grace_s", "max_resume_grace_s",
                        "shutdown_margin_s", "demo_ttft_s", "demo_token_delay_s")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise SettingsError(f"{name.upper()} must be >= 0, got {getattr(self, name)!r}")
        if self.max_stored_bytes_per_key < self.max_stream_bytes:
            raise SettingsError("MAX_STORED_BYTES_PER_KEY must be at least MAX_STREAM_BYTES")
        if self.resume_grace_s > self.max_resume_grace_s:
            raise SettingsError("RESUME_GRACE_S must not exceed MAX_RESUME_GRACE_S")
        scheme = urlsplit(self.broker_url).scheme
        if scheme not in BROKER_SCHEMES:
            raise SettingsError(f"REDIS_URL {self.redis_url!r} has an unknown scheme {scheme!r}")
        for model in self.models:
            provider, _, name = model.partition("/")
            if not provider or not name:
                raise SettingsError(f"MODELS entry {model!r} is not 'provider/model'")
        for name in RATE_SETTINGS:
            value = getattr(self, name)
            try:
                if value:
                    limits.parse_many(value)
            except ValueError:
                raise SettingsError(f"{name.upper()} {value!r} is not a rate limit "
                                    "such as '60/minute' or '10/second;100/hour'") from None
        if self.api_keys_file:
            try:
                self.file_api_keys()
            except OSError as exc:
                raise SettingsError(f"API_KEYS_FILE {self.api_keys_file!r} cannot be read: "
                                    f"{exc.strerror}") from None
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"LOG_FORMAT {self.log_format!r} is not 'text' or 'json'")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise SettingsError(f"LOG_LEVEL {self.log_level!r} is not a logging level")


def _parse(name: str, raw: Any, kind: Any) -> Any:
    """Turn one raw value (string from the environment, or a Python value) into ``kind``."""
    try:
        if kind in ("float", float):
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if kind in ("int", int):
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(raw)
        if kind in ("tuple[str, ...]",):
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(item.strip() for item in items if item.strip())
        return "" if raw is None else str(raw).strip()
    except (TypeError, ValueError):
        expected = "a number" if kind in ("float", float) else "an integer"
        raise SettingsError(f"{name} must be {expected}, got {raw!r}") from None
