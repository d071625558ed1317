"""Stream tokens: a signed, expiring grant to read and cancel one stream.

The sidecar mode: a team's backend, holding an API key, creates a stream and
hands its browser the stream's token; the browser follows, looks up and
cancels that one stream with it (``Authorization: Bearer <token>`` or, for a
native ``EventSource`` that cannot send headers, ``?token=<token>``), and can
do nothing else. A token is

    sst_<itsdangerous URLSafeSerializer of [owner, stream_id, expires]>

signed with HMAC-SHA256 (itsdangerous' ``hmac`` key derivation, a salt of its
own): ``owner`` is the API key id that created the stream ("" on an open
gateway), ``expires`` whole Unix seconds. The payload is signed, not
encrypted: anyone holding a token can read the key id and the stream id in
it, as they can read them in logs. The ``sst_`` prefix makes a token
recognisable: a Bearer value with it is a token, not a key, and log lines are
scrubbed of it (``config/logs.py``).

The secret is ``STREAM_TOKEN_SECRET`` when set. Unset, it is derived from the
configured API keys (an HMAC of their digests under a fixed label), so every
worker and host configured with the same keys accepts the others' tokens;
changing the keys (or the secret) invalidates every token out there. An open
gateway with no secret signs with a fixed development secret, which its
start-up warning says.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from itsdangerous import BadSignature, URLSafeSerializer, base64_encode
from itsdangerous.serializer import Serializer

PREFIX = "sst_"
_SALT = b"sse-gateway.stream-token.v1"
_DERIVATION_LABEL = b"sse-gateway stream-token secret v1"
# Open gateway, no STREAM_TOKEN_SECRET: tokens still work, but anyone can forge them.
DEVELOPMENT_SECRET = b"sse-gateway development stream-token secret (open gateway only)"
MIN_SECRET_LENGTH = 32


class StreamToken(NamedTuple):
    """What a valid token grants: the stream ``stream_id`` of ``owner``, until ``expires``."""

    owner: str
    stream_id: str
    expires: int


class TokenError(Exception):
    """A presented token grants nothing; the message says why, for the client."""


class TokenExpired(TokenError):
    """The token was ours but its time is up."""


class TokenInvalid(TokenError):
    """Not a token we signed: altered, malformed, or signed with another secret."""


def derive_secret(key_digests: Iterable[bytes]) -> bytes:
    """The secret of a gateway with API keys and no STREAM_TOKEN_SECRET.

    An HMAC keyed with the keys' SHA-256 digests (sorted: the order keys are
    listed in does not matter) over a fixed label: the same keys give the same
    secret on every worker and host, and it cannot be computed without all of
    them.
    """
    material = b"".join(sorted(key_digests))
    return hmac.new(material, _DERIVATION_LABEL, hashlib.sha256).digest()


def secret(configured: str, key_digests: Iterable[bytes]) -> bytes:
    """The signing secret: STREAM_TOKEN_SECRET, else derived from the API keys, else
    (an open gateway) the development secret."""
    if configured:
        return configured.encode("utf-8")
    digests = list(key_digests)
    return derive_secret(digests) if digests else DEVELOPMENT_SECRET


class _Serializer(URLSafeSerializer):
    """itsdangerous' URL-safe serializer, never compressing: a token's payload is
    always plain base64url JSON, its length predictable."""

    def dump_payload(self, obj: object) -> bytes:
        return base64_encode(Serializer.dump_payload(self, obj))


class StreamTokens:
    """Issue and verify stream tokens with one secret; ``clock`` is injectable for tests."""

    def __init__(self, secret: bytes, ttl_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("a stream token secret must not be empty")
        self.ttl_s = ttl_s
        self._clock = clock
        self._serializer = _Serializer(
            secret, salt=_SALT,
            signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha256})

    def issue(self, owner: str, stream_id: str) -> str:
        """A token for ``owner``'s stream ``stream_id``, valid for ``ttl_s`` from now."""
        expires = math.ceil(self._clock() + self.ttl_s)
        return PREFIX + self._serializer.dumps([owner, stream_id, expires])

    def verify(self, token: str) -> StreamToken:
        """What ``token`` grants; TokenInvalid or TokenExpired if nothing.

        The signature is checked first: an expiry that was altered is invalid,
        not expired.
        """
        if not token.startswith(PREFIX):
            raise TokenInvalid(f"not a stream token (stream tokens begin with {PREFIX})")
        try:
            payload = self._serializer.loads(token[len(PREFIX):])
        except BadSignature:
            raise TokenInvalid("the stream token is not valid (altered, truncated, or "
                               "signed with another secret)") from None
        if not (isinstance(payload, list) and len(payload) == 3
                and isinstance(payload[0], str) and isinstance(payload[1], str)
                and isinstance(payload[2], int) and not isinstance(payload[2], bool)):
            raise TokenInvalid("the stream token is not valid (unknown format)")
        granted = StreamToken(*payload)
        if self._clock() >= granted.expires:
            raise TokenExpired("the stream token has expired; ask the stream's creator "
                               "for a new one")
        return granted
