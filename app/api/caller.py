"""The caller of the current request, for authentication, ownership and limits.

A request is authorised by an API key (``Authorization: Bearer <key>``) or by
a stream token (``Authorization: Bearer sst_...`` or ``?token=sst_...``):
keys are tried first. A token acts for the key that created its stream, so
ownership, rate limits and reader caps count a token's requests for that key,
but it opens only the routes of its one stream (``TOKEN_ENDPOINTS``): another
stream's answers 404 as an unknown one, any other route 401.
"""

from __future__ import annotations

from flask import g, request

from app.api import current_gateway
from app.errors import RateLimited, Unauthorized
from app.tokens import PREFIX, StreamToken, TokenError, TokenExpired
from sse_gateway.errors import NotFound

# The routes a stream token opens (follow, status, cancel; a WebSocket that may
# only resume and cancel its stream): blueprint.view names.
WEBSOCKET_ENDPOINT = "ws.websocket"
TOKEN_ENDPOINTS = frozenset({"streams.stream_events", "streams.stream_status",
                             "streams.cancel_stream", WEBSOCKET_ENDPOINT})


def key_id() -> str | None:
    """The request's API key id, or None (no key, a wrong key, or the gateway is open)."""
    if "key_id" not in g:
        g.key_id = current_gateway().keys.identify(request.headers.get("Authorization"))
    found: str | None = g.key_id
    return found


def stream_token() -> StreamToken | None:
    """The stream token that authorised this request, if one did."""
    found: StreamToken | None = g.get("stream_token")
    return found


def caller() -> str:
    """Whom a request counts for: its key id (a token's: its stream's key), else its
    client address."""
    return owner() or f"addr:{request.remote_addr or 'unknown'}"


def owner() -> str:
    """The owner recorded on streams this request creates or may see ("" when open)."""
    token = stream_token()
    return key_id() or (token.owner if token is not None else "")


def authenticate() -> None:
    """Refuse a ``/v1`` request without a valid key or stream token, unless the gateway
    runs open (a token presented to an open gateway still binds its request).

    An address that sent too many requests with a missing or wrong key (or a
    token that is not ours) gets 429 for a while, whatever it sends then:
    answering a right key normally meanwhile would tell a guesser which guess
    was right.
    """
    from app.limits import auth_lockout, count_auth_failure

    if not request.path.startswith("/v1/") or request.method == "OPTIONS":
        return
    gateway = current_gateway()
    presented = _presented_token()
    if gateway.keys.open and presented is None:
        return
    address = request.remote_addr or "unknown"
    if not gateway.keys.open:
        wait = auth_lockout(address)
        if wait is not None:
            raise RateLimited("too many requests with a missing or wrong API key from this "
                              "address; wait before trying again", retry_after=wait)
        if key_id() is not None:
            return  # keys first: a key's request is the key's, whatever else it carries
    if presented is None:
        count_auth_failure(address)
        raise Unauthorized("a valid API key is required: Authorization: Bearer <key>")
    try:
        token = gateway.tokens.verify(presented)
    except TokenError as exc:
        if not isinstance(exc, TokenExpired) and not gateway.keys.open:
            count_auth_failure(address)  # a guess; an expired token of ours is not
        raise Unauthorized(str(exc)) from None
    if request.endpoint not in TOKEN_ENDPOINTS:
        raise Unauthorized("a stream token opens only its own stream's events, status and "
                           "DELETE; this route needs an API key")
    stream_id = (request.view_args or {}).get("stream_id")
    if request.endpoint != WEBSOCKET_ENDPOINT and stream_id != token.stream_id:
        # Exactly what an unknown stream answers: nothing is revealed.
        raise NotFound(f"no stream {stream_id!r}")
    g.stream_token = token


def _presented_token() -> str | None:
    """The stream token the request carries: a Bearer value with the token prefix,
    else ``?token=``; None when it carries none."""
    scheme, _, value = (request.headers.get("Authorization") or "").partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value.startswith(PREFIX):
        return value
    return request.args.get("token")
