"""sqlalchemy-outbox: a transactional outbox for SQLAlchemy, relayed to Kafka.

Write side: `Outbox` records events in the application's own transaction. Relay:
`outbox.relay.Relay` (or the `outbox relay` command) publishes them through a `Publisher`.
"""

from outbox.config import RelayConfig
from outbox.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    EventRejectedError,
    LeaseLostError,
    NotInstalledError,
    OutboxError,
    PayloadError,
    PublishError,
    SnapshotError,
    TableMissingError,
)
from outbox.relay.publisher import Delivery, InMemoryPublisher, Message, Publisher
from outbox.relay.records import ParkedEvent, PendingEvent, Status
from outbox.snapshot.options import SnapshotResult
from outbox.write.entity import EventSource
from outbox.write.event import Event
from outbox.write.outbox import CaptureBypassedWarning, Outbox, fix_sqlite_transactions

__all__ = [
    "BrokerUnavailableError",
    "CaptureBypassedWarning",
    "ConfigurationError",
    "Delivery",
    "Event",
    "EventRejectedError",
    "EventSource",
    "InMemoryPublisher",
    "LeaseLostError",
    "Message",
    "NotInstalledError",
    "Outbox",
    "OutboxError",
    "ParkedEvent",
    "PayloadError",
    "PendingEvent",
    "PublishError",
    "Publisher",
    "RelayConfig",
    "SnapshotError",
    "SnapshotResult",
    "Status",
    "TableMissingError",
    "fix_sqlite_transactions",
]
