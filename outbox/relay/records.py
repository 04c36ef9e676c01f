"""Plain values read from the outbox table by the relay and the operator tools."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    # What the envelope would compute from `id` and `created_at`, formatted by the database in
    # the read (PostgreSQL; see `store.reads`): str(id), rfc3339(created_at) and created_at in
    # microseconds since the epoch. Python's str(UUID) and isoformat were a fifth of the
    # encoding's CPU. None when built by hand or read elsewhere: the envelope formats them.
    id_text: str | None = field(default=None, repr=False, compare=False)
    created_text: str | None = field(default=None, repr=False, compare=False)
    created_us: int | None = field(default=None, repr=False, compare=False)

    @property
    def partition_key(self) -> str:
        """The key that orders events: the explicit key, else the aggregate id."""
        return self.key if self.key is not None else self.aggregateid

    def created_seconds(self) -> float:
        """`created_at` in seconds since the epoch (naive = UTC): from the read's microseconds
        when the database gave them, the very float `datetime.timestamp()` returns (which costs
        half a microsecond per event with the driver's ZoneInfo)."""
        if self.created_us is not None:
            return self.created_us / 1_000_000
        moment = self.created_at
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


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


@dataclass(frozen=True, slots=True)
class Member:
    """A running relay of the table, as its last heartbeat recorded it."""

    relay_id: str
    host: str
    pid: int
    #: "single" or "partitioned".
    mode: str
    started_at: datetime
    heartbeat_at: datetime
    #: Seconds since the last heartbeat, by the database's clock.
    silent_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "relay_id": self.relay_id,
            "host": self.host,
            "pid": self.pid,
            "mode": self.mode,
            "started_at": self.started_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
            "silent_seconds": round(self.silent_seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """The lease row as `outbox status` shows it; durations by the database's clock."""

    name: str
    #: None when nobody holds it (released, or never taken).
    owner: str | None
    epoch: int
    #: Seconds until expiry (negative: expired).
    expires_in: float
    #: Seconds since the owner took it (None if unknown, e.g. taken before revision 0002).
    held_for: float | None
    #: Seconds since the last renewal.
    renewed_ago: float | None

    @property
    def held(self) -> bool:
        return self.owner is not None and self.expires_in > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "owner": self.owner if self.held else None,
            "epoch": self.epoch,
            "expires_in_seconds": round(self.expires_in, 3) if self.held else None,
            "held_for_seconds": None if self.held_for is None else round(self.held_for, 3),
            "renewed_seconds_ago": None if self.renewed_ago is None else round(self.renewed_ago, 3),
        }
