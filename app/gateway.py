"""The per-app objects every view needs, kept in ``app.extensions["gateway"]``."""

from __future__ import annotations

from dataclasses import dataclass

from app.security import Keys
from app.settings import Settings
from sse_gateway.broker import Broker
from sse_gateway.providers import Catalog
from sse_gateway.pump import PumpGroup
from sse_gateway.upstream import RetryPolicy


@dataclass
class Gateway:
    settings: Settings
    broker: Broker
    catalog: Catalog
    pumps: PumpGroup
    keys: Keys
    retry_policy: RetryPolicy

    def drain(self, graceful_timeout: float) -> None:
        """Start shutting down: refuse new streams, end the rest before the timeout."""
        self.pumps.drain(max(0.0, graceful_timeout - self.settings.streams.shutdown_margin_s))
