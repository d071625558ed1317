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

import limits

import config
from app.tokens import MIN_SECRET_LENGTH
from sse_gateway.config import ConfigError, StreamsConfig, parse_value

# The per-route request rates, flask-limiter's notation; empty means no limit.
RATE_SETTINGS = ("ratelimit_create", "ratelimit_events", "ratelimit_status",
                 "ratelimit_cancel", "ratelimit_models", "ratelimit_auth_failures")


class SettingsError(ConfigError):
    """A setting is missing, malformed or out of range; the message names it."""


@dataclass(frozen=True)
class Settings:
    """The validated settings of one gateway process (field = lower-case variable).

    The engine's own settings are ``streams`` (``sse_gateway.StreamsConfig``),
    read from the same environment by the same rules.
    """

    streams: StreamsConfig
    trusted_proxies: int
    max_content_length: int
    body_timeout_s: float
    api_keys: tuple[str, ...] = dataclasses.field(repr=False)
    api_keys_file: str
    ratelimit_create: str
    ratelimit_events: str
    ratelimit_status: str
    ratelimit_cancel: str
    ratelimit_models: str
    ratelimit_auth_failures: str
    cors_origins: tuple[str, ...]
    stream_token_secret: str = dataclasses.field(repr=False)
    stream_token_ttl_s: float
    log_level: str
    log_format: str

    def all_api_keys(self) -> tuple[str, ...]:
        """Keys from API_KEYS and API_KEYS_FILE (blank lines and # comments skipped)."""
        return self.api_keys + (self.file_api_keys() if self.api_keys_file else ())

    def file_api_keys(self) -> tuple[str, ...]:
        with open(self.api_keys_file, encoding="utf-8") as lines:
            return tuple(line.strip() for line in lines
                         if line.strip() and not line.lstrip().startswith("#"))

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

        def value(name: str, kind: Any, default: Any) -> Any:
            if name in overrides:
                raw: Any = overrides[name]
            elif name in environ:
                raw = environ[name]
            else:
                raw = getattr(base, name, default)
            return _parse(name, raw, kind)

        engine = {f.name: value(f.name.upper(), f.type, f.default)
                  for f in dataclasses.fields(StreamsConfig)}
        values: dict[str, Any] = {f.name: value(f.name.upper(), f.type, "")
                                  for f in dataclasses.fields(cls) if f.name != "streams"}
        known = {f.name.upper() for f in (*dataclasses.fields(cls),
                                          *dataclasses.fields(StreamsConfig))}
        unknown = set(overrides) - known
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        try:
            streams = StreamsConfig(**engine).check()
        except ConfigError as exc:
            raise SettingsError(str(exc)) from None
        settings = cls(streams=streams, **values)
        settings._check()
        return settings

    def _check(self) -> None:
        for name in ("max_content_length", "body_timeout_s", "stream_token_ttl_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name.upper()} must be > 0, got {getattr(self, name)!r}")
        if self.trusted_proxies < 0:
            raise SettingsError(f"TRUSTED_PROXIES must be >= 0, got {self.trusted_proxies!r}")
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
        if self.stream_token_secret and len(self.stream_token_secret) < MIN_SECRET_LENGTH:
            raise SettingsError(
                f"STREAM_TOKEN_SECRET must be at least {MIN_SECRET_LENGTH} characters (a random "
                "one: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'), got "
                f"{len(self.stream_token_secret)}")
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"LOG_FORMAT {self.log_format!r} is not 'text' or 'json'")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise SettingsError(f"LOG_LEVEL {self.log_level!r} is not a logging level")


def _parse(name: str, raw: Any, kind: Any) -> Any:
    try:
        return parse_value(name, raw, kind)
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None
