"""The value `Outbox.emit` returns: one event, exactly as it will be stored."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Event:
    """An event written (or about to be written) to the outbox table in the caller's transaction.

    `payload` is the exact record value the relay will send (None is a tombstone); `headers`
    holds the user headers plus the W3C trace context captured at emit, as text.
    """

    #: Time-ordered UUIDv7; the relay sends it as the `event_id` header.
    id: uuid.UUID
    type: str
    aggregate_type: str
    aggregate_id: str
    payload: bytes | None
    #: When the event was emitted: timezone-aware UTC, microsecond precision.
    created_at: datetime
    #: Explicit Kafka key; None means the aggregate id is the key.
    key: str | None = None
    #: Explicit topic; None lets the relay derive it from the aggregate type.
    topic: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def partition_key(self) -> str:
        """The key that orders this event's delivery: the explicit key, else the aggregate id."""
        return self.key if self.key is not None else self.aggregate_id
