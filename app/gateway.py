"""The per-app objects every view needs, kept in ``app.extensions["gateway"]``."""

from __future__ import annotations

from dataclasses import dataclass

from app.broker import Broker
from app.providers import Catalog
from app.pump import PumpGroup
from app.security import Keys
from app.settings import Settings
from app.upstream import RetryPolicy


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
        self.pumps.drain(max(0.0, graceful_timeout - self.settings.shutdown_margin_s))
