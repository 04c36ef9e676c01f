"""The Prometheus side shared by every observer that exports metrics (relay, inbox).

prometheus-client is an optional extra (``sqlalchemy-outbox[metrics]``) and is imported here
only. Each observer owns a registry (not the process-global one), so that several relays or
consumers in one process, and tests, never collide.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from outbox.errors import ConfigurationError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class Exposition:
    """One observer's registry and its text exposition for ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        try:
            import prometheus_client
        except ImportError:
            raise ConfigurationError(
                "metrics need prometheus-client: install sqlalchemy-outbox[metrics]"
            ) from None
        #: The prometheus_client module, for the observer's metric families.
        self.prom: ModuleType = prometheus_client
        self.registry: CollectorRegistry = (
            prometheus_client.CollectorRegistry() if registry is None else registry
        )

    def render(self) -> tuple[bytes, str]:
        """The text exposition of the registry and its content type."""
        prom = self.prom
        return prom.generate_latest(self.registry), str(prom.CONTENT_TYPE_LATEST)


__all__ = ["Exposition"]
