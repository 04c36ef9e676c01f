"""The application's side: the `Outbox` facade, its session hooks, entity events and capture.

Everything here runs inside the application's own transaction; nothing here talks to a broker.
"""

from outbox.write.entity import EventSource
from outbox.write.event import Event
from outbox.write.outbox import (
    CaptureBypassedWarning,
    Outbox,
    fix_sqlite_transactions,
    record_entity_event,
)

__all__ = [
    "CaptureBypassedWarning",
    "Event",
    "EventSource",
    "Outbox",
    "fix_sqlite_transactions",
    "record_entity_event",
]
