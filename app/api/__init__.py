"""The blueprints, by feature, and the one way they reach the app's objects."""

from __future__ import annotations

from flask import current_app

from app.gateway import Gateway


def current_gateway() -> Gateway:
    """The running app's Gateway (settings, broker, catalog, pumps, keys, policy)."""
    gateway: Gateway = current_app.extensions["gateway"]
    return gateway
