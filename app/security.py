"""Who is calling: API keys, compared in constant time, and the id that owns streams.

Keys are kept only as SHA-256 digests and compared digest to digest with
``hmac.compare_digest`` against every configured key, so neither the time
taken nor a log line tells anything about a key. The caller's *key id* (a
prefix of the digest) is what streams are owned by and what logs and limits
name; it cannot be turned back into the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


class Keys:
    """The configured API keys; none means the gateway runs open."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(key) for key in keys]

    @property
    def open(self) -> bool:
        return not self._digests

    @property
    def digests(self) -> tuple[bytes, ...]:
        """The keys' SHA-256 digests (what the stream token secret is derived from)."""
        return tuple(self._digests)

    def identify(self, authorization: str | None) -> str | None:
        """The caller's key id from an ``Authorization`` header, or None if it holds no key."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        digest = _digest(token)
        matched = False
        for known in self._digests:  # no early exit: the same work for every key
            matched |= hmac.compare_digest(known, digest)
        return key_id(digest) if matched else None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def key_id(digest: bytes) -> str:
    return "key_" + digest.hex()[:16]
