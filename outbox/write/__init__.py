"""The application's side: the `Outbox` facade, its session hooks, entity events and capture.

Everything here runs inside the application's own transaction; nothing here talks to a broker.

- `outbox`: the `Outbox` facade (install, capture, emit, flush, check_table) and entity events;
- `hooks`: the session event listeners, and why each is the safe event; `install`: attaching
  them to session factories; `buffer`: the per-session buffer in ``session.info``;
- `capture`: ORM changes of captured classes to drafts (event naming, row serialization);
- `draft`: a validated event waiting to be written; `serialization`: payloads and headers;
- `writer`: drafts to outbox rows and the batched INSERT statements; `direct`: the same
  statements sent on the driver's cursor when no listener, echo or translation would notice;
- `entity`: the `EventSource` mixin; `event`: the `Event` value; `sqlite`: SAVEPOINT on SQLite.
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
