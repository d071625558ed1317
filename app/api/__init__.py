"""The blueprints, by feature, and the one way they reach the app's objects.

``app.extensions["sse_gateway"].streams`` is the engine (``sse_gateway.Streams``,
bound by the Flask extension from ``SSE_GATEWAY_*`` settings);
``app.extensions["gateway"]`` holds what only the HTTP gateway has: its
settings, API keys and stream tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from app.security import Keys
from app.settings import Settings
from app.tokens import StreamTokens
from sse_gateway.streams import Streams


@dataclass(frozen=True)
class Gateway:
    settings: Settings
    keys: Keys
    tokens: StreamTokens


def current_gateway() -> Gateway:
    """The running app's settings, keys and stream tokens."""
    gateway: Gateway = current_app.extensions["gateway"]
    return gateway


def current_streams() -> Streams:
    """The running app's streams service (the extension's)."""
    streams: Streams = current_app.extensions["sse_gateway"].streams
    return streams
