"""Plain values read from the outbox table by the relay and the operator tools."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any


# Not frozen: a frozen dataclass costs about 3 us more per instance (object.__setattr__ per
# field), and one is built per event on the relay's hot path. Treat it as read-only.
@dataclass(slots=True)
class PendingEvent:
    """An outbox row waiting to be published (read-only by convention)."""

    seq: int
    id: uuid.UUID
    aggregatetype: str
    aggregateid: str
    type: str
    payload: bytes | None
    topic: str | None
    key: str | None
    #: The stored JSON object (text values), or None. Garbage here is parked by the relay.
    headers: Any
    created_at: datetime
    attempts: int
    #: The stored partition (`outbox.partitioning`); None in rows older than revision 0003.
    partition: int | None = None

    @property
    def partition_key(self) -> str:
        """The key that orders events: the explicit key, else the aggregate id."""
        return self.key if self.key is not None else self.aggregateid


@dataclass(frozen=True, slots=True)
class ParkedEvent:
    """An event set aside after the broker rejected it for good."""

    seq: int
    id: uuid.UUID
    type: str
    aggregatetype: str
    aggregateid: str
    topic: str | None
    key: str | None
    attempts: int
    last_error: str | None
    created_at: datetime
    parked_at: datetime


@dataclass(frozen=True, slots=True)
class Status:
    """What `outbox status` prints."""

    pending: int
    oldest_pending_age_seconds: float | None
    failed: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "oldest_pending_age_seconds": self.oldest_pending_age_seconds,
            "failed": self.failed,
        }
