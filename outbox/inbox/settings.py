"""The inbox's settings: one frozen dataclass, validated when built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from outbox.errors import ConfigurationError


@dataclass(frozen=True)
class InboxConfig:
    """How the runner consumes.

    `handler_attempts`: a handler that raises (other than a transient database error) is run
    this many times, `handler_backoff` seconds apart, then its record is parked.
    `batch_size`: records of a partition applied in one transaction (1: one per record;
    more is faster, and a batch in which anything fails is applied again one by one).
    `poll_timeout`: seconds one poll waits for records. `maintenance_interval`: seconds between
    looks at parked rows (requeued, dropped) and the Kafka lag commit. `consumer_settings`:
    extra kafka-python `KafkaConsumer` options (session_timeout_ms, max_poll_interval_ms, ...).
    """

    batch_size: int = 1
    handler_attempts: int = 3
    handler_backoff: float = 0.2
    poll_timeout: float = 0.5
    maintenance_interval: float = 1.0
    retry_initial: float = 0.1
    retry_maximum: float = 5.0
    consumer_settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigurationError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.handler_attempts < 1:
            raise ConfigurationError(
                f"handler_attempts must be at least 1, got {self.handler_attempts}"
            )
        for name in ("handler_backoff", "poll_timeout", "maintenance_interval", "retry_initial"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.retry_maximum < self.retry_initial:
            raise ConfigurationError("retry_maximum must be at least retry_initial")
