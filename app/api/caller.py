"""The caller of the current request, for authentication, ownership and limits."""

from __future__ import annotations

from flask import g, request

from app.api import current_gateway
from app.errors import RateLimited, Unauthorized


def key_id() -> str | None:
    """The request's API key id, or None (no key, a wrong key, or the gateway is open)."""
    if "key_id" not in g:
        g.key_id = current_gateway().keys.identify(request.headers.get("Authorization"))
    found: str | None = g.key_id
    return found


def caller() -> str:
    """Whom a request counts for: its key id, else its client address."""
    return key_id() or f"addr:{request.remote_addr or 'unknown'}"


def owner() -> str:
    """The owner recorded on streams this request creates or may see ("" when open)."""
    return key_id() or ""


def authenticate() -> None:
    """Refuse a ``/v1`` request without a valid key, unless the gateway runs open.

    An address that sent too many requests with a missing or wrong key gets 429
    for a while, whatever key it sends then: answering a right key normally
    meanwhile would tell a guesser which guess was right.
    """
    from app.limits import auth_lockout, count_auth_failure

    if not request.path.startswith("/v1/") or request.method == "OPTIONS":
        return
    if current_gateway().keys.open:
        return
    address = request.remote_addr or "unknown"
    wait = auth_lockout(address)
    if wait is not None:
        raise RateLimited("too many requests with a missing or wrong API key from this "
                          "address; wait before trying again", retry_after=wait)
    if key_id() is None:
        count_auth_failure(address)
        raise Unauthorized("a valid API key is required: Authorization: Bearer <key>")
