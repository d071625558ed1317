"""The caller of the current request, for authentication, ownership and limits."""

from __future__ import annotations

from flask import g, request

from app.api import current_gateway
from app.errors import Unauthorized


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
    """Refuse a ``/v1`` request without a valid key, unless the gateway runs open."""
    if not request.path.startswith("/v1/") or request.method == "OPTIONS":
        return
    if not current_gateway().keys.open and key_id() is None:
        raise Unauthorized("a valid API key is required: Authorization: Bearer <key>")
