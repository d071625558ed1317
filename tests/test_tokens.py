"""Stream tokens (app/tokens.py): signing, expiry, tampering, the secret rules, and
that no log line keeps one (config/logs.py). No server: a clock is injected."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re

import pytest

from app.security import Keys
from app.settings import Settings, SettingsError
from app.tokens import (
    DEVELOPMENT_SECRET,
    PREFIX,
    StreamToken,
    StreamTokens,
    TokenExpired,
    TokenInvalid,
    derive_secret,
    secret,
)
from config.logs import REDACTED, ScrubTokens, scrub

SECRET = b"s" * 32
NOW = 1_800_000_000.25


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tokens(clock: Clock | None = None, ttl: float = 3600, key: bytes = SECRET) -> StreamTokens:
    return StreamTokens(key, ttl, clock or Clock())


def payload(token: str) -> object:
    body = token[len(PREFIX):].split(".")[0]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def test_a_token_names_its_owner_and_stream_and_expires_after_the_ttl() -> None:
    issued = tokens().issue("key_0123456789abcdef", "stream-0123456789abcdef")
    assert issued.startswith(PREFIX)
    assert re.fullmatch(r"sst_[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+", issued), issued
    assert len(issued) < 160  # fits a URL and a header with room
    expires = 1_800_003_601  # ceil(NOW + 3600): whole seconds, never shorter than the TTL
    assert payload(issued) == ["key_0123456789abcdef", "stream-0123456789abcdef", expires]
    assert tokens().verify(issued) == StreamToken("key_0123456789abcdef",
                                                  "stream-0123456789abcdef", expires)
    # The same signer, another process: the same token (nothing random, nothing local).
    assert tokens().issue("key_0123456789abcdef", "stream-0123456789abcdef") == issued


def test_an_open_gateways_token_has_an_empty_owner() -> None:
    issued = tokens().issue("", "stream-0123456789abcdef")
    assert tokens().verify(issued).owner == ""


def test_expiry_by_the_injected_clock() -> None:
    clock = Clock()
    signer = tokens(clock, ttl=10)
    issued = signer.issue("key_a", "stream-a")
    clock.now = NOW + 10.5  # before ceil(NOW + 10) = NOW + 10.75
    assert signer.verify(issued).stream_id == "stream-a"
    clock.now = NOW + 10.75
    with pytest.raises(TokenExpired, match=r"^the stream token has expired"):
        signer.verify(issued)
    clock.now = NOW + 86_400
    with pytest.raises(TokenExpired):
        signer.verify(issued)
    # A token from a clock a little ahead (another host) is not "from the future": no
    # negative-age refusal, only the expiry counts.
    ahead = tokens(Clock(NOW + 5), ttl=10).issue("key_a", "stream-a")
    clock.now = NOW
    assert signer.verify(ahead).stream_id == "stream-a"


def test_the_ttl_is_fixed_when_the_token_is_issued() -> None:
    """Changing STREAM_TOKEN_TTL_S later neither lengthens nor shortens tokens out there."""
    clock = Clock()
    issued = tokens(clock, ttl=60).issue("key_a", "stream-a")
    clock.now = NOW + 120
    with pytest.raises(TokenExpired):
        tokens(clock, ttl=3600).verify(issued)
    clock.now = NOW + 30
    assert tokens(clock, ttl=1).verify(issued).stream_id == "stream-a"


def flip(text: str, index: int) -> str:
    """``text`` with the character at ``index`` replaced by another of the alphabet."""
    char = text[index]
    return text[:index] + ("A" if char != "A" else "B") + text[index + 1:]


def test_any_altered_character_is_refused() -> None:
    signer = tokens()
    issued = signer.issue("key_0123456789abcdef", "stream-0123456789abcdef")
    for index in range(len(PREFIX), len(issued)):
        altered = flip(issued, index)
        if altered == issued:
            continue
        with pytest.raises(TokenInvalid):
            signer.verify(altered)
    for broken in (issued[:-1], issued + "A", issued.replace(".", ""), PREFIX, "",
                   issued[len(PREFIX):], "Bearer " + issued, "sst_..", "sst_a.b.c"):
        with pytest.raises(TokenInvalid):
            signer.verify(broken)


def test_a_payload_for_another_stream_under_the_old_signature_is_refused() -> None:
    signer = tokens()
    issued = signer.issue("key_a", "stream-a")
    _, signature = issued[len(PREFIX):].split(".")
    forged_body = base64.urlsafe_b64encode(json.dumps(
        ["key_a", "stream-b", 1_900_000_000], separators=(",", ":")).encode()).decode()
    with pytest.raises(TokenInvalid, match="not valid"):
        signer.verify(f"{PREFIX}{forged_body.rstrip('=')}.{signature}")
    longer = base64.urlsafe_b64encode(json.dumps(
        ["key_a", "stream-a", 1_900_000_000], separators=(",", ":")).encode()).decode()
    with pytest.raises(TokenInvalid):  # a later expiry is an alteration, not a renewal
        signer.verify(f"{PREFIX}{longer.rstrip('=')}.{signature}")


def test_another_secret_or_another_signers_payload_is_refused() -> None:
    issued = tokens().issue("key_a", "stream-a")
    with pytest.raises(TokenInvalid):
        tokens(key=b"t" * 32).verify(issued)
    from itsdangerous import URLSafeSerializer

    # The same secret through itsdangerous' defaults (another salt, SHA-1): not ours.
    other = PREFIX + URLSafeSerializer(SECRET).dumps(["key_a", "stream-a", 1_900_000_000])
    with pytest.raises(TokenInvalid):
        tokens().verify(other)


def test_a_signed_payload_of_another_shape_is_refused() -> None:
    signer = tokens()
    serializer = signer._serializer
    for value in (["key_a", "stream-a"], ["key_a", "stream-a", True], ["key_a", 1, 1_900_000_000],
                  {"owner": "key_a"}, ["key_a", "stream-a", 1.9e9], "stream-a"):
        with pytest.raises(TokenInvalid, match="unknown format"):
            signer.verify(PREFIX + serializer.dumps(value))


def test_the_secret_rules() -> None:
    digests = Keys(["sk-one", "sk-two"]).digests
    assert digests == tuple(hashlib.sha256(k.encode()).digest() for k in ("sk-one", "sk-two"))
    derived = secret("", digests)
    # The same keys in another order, on another host: the same secret.
    assert derived == secret("", Keys(["sk-two", "sk-one"]).digests) == derive_secret(digests)
    assert len(derived) == 32
    assert derived not in (b"".join(digests), digests[0], digests[1])
    assert secret("", Keys(["sk-one"]).digests) != derived  # a key less: another secret
    assert secret("", Keys(["sk-one", "sk-three"]).digests) != derived
    configured = "c" * 40
    assert secret(configured, digests) == configured.encode()  # the setting wins
    assert secret("", ()) == DEVELOPMENT_SECRET  # open, no secret
    assert secret(configured, ()) == configured.encode()
    # Rotating the keys invalidates every token signed with the derived secret.
    issued = tokens(key=derived).issue("key_a", "stream-a")
    with pytest.raises(TokenInvalid):
        tokens(key=secret("", Keys(["sk-one", "sk-three"]).digests)).verify(issued)
    assert tokens(key=secret("", Keys(["sk-two", "sk-one"]).digests)).verify(issued)


def test_settings_check_the_secret_and_the_ttl() -> None:
    settings = Settings.load({})
    assert settings.stream_token_secret == ""
    assert settings.stream_token_ttl_s == 3600.0
    assert "c" * 40 not in repr(Settings.load({"STREAM_TOKEN_SECRET": "c" * 40}))
    with pytest.raises(SettingsError, match=r"STREAM_TOKEN_SECRET must be at least 32 "
                                            r"characters .*got 8"):
        Settings.load({"STREAM_TOKEN_SECRET": "too-weak"})
    with pytest.raises(SettingsError, match="STREAM_TOKEN_TTL_S must be > 0"):
        Settings.load({"STREAM_TOKEN_TTL_S": "0"})
    with pytest.raises(SettingsError, match="STREAM_TOKEN_TTL_S"):
        Settings.load({"STREAM_TOKEN_TTL_S": "an hour"})
    assert Settings.load({"STREAM_TOKEN_TTL_S": "60"}).stream_token_ttl_s == 60.0


def test_log_lines_never_keep_a_token() -> None:
    issued = tokens().issue("key_0123456789abcdef", "stream-0123456789abcdef")
    line = (f'127.0.0.1 "GET /v1/streams/s/events?last_event_id=3&token={issued} HTTP/1.1" '
            f'200 - "Mozilla"')
    assert scrub(line) == ('127.0.0.1 "GET /v1/streams/s/events?last_event_id=3&token='
                           f'{REDACTED} HTTP/1.1" 200 - "Mozilla"')
    assert scrub(f"/v1/streams/s?token={issued}&include=message") == \
        f"/v1/streams/s?token={REDACTED}&include=message"
    assert scrub(f"Authorization: Bearer {issued}") == f"Authorization: Bearer {REDACTED}"
    assert scrub("?token=not-even-ours") == f"?token={REDACTED}"  # whatever it holds
    assert scrub("GET /v1/streams/s/events?last_event_id=3") == \
        "GET /v1/streams/s/events?last_event_id=3"

    record = logging.LogRecord("gunicorn.error", logging.ERROR, __file__, 1,
                               "Error handling request %s", (f"/x?token={issued}",), None)
    try:
        raise ValueError(f"bad {issued}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert ScrubTokens().filter(record)
    formatted = logging.Formatter("%(message)s").format(record)
    assert issued not in formatted
    assert formatted.startswith(f"Error handling request /x?token={REDACTED}\n")
    assert f"ValueError: bad {REDACTED}" in formatted

    # gunicorn's access lines are a format with a dict of atoms.
    access = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, '"%(r)s" %(s)s',
                               ({"r": f"GET /e?token={issued} HTTP/1.1", "s": "200"},), None)
    ScrubTokens().filter(access)
    assert access.getMessage() == f'"GET /e?token={REDACTED} HTTP/1.1" 200'
