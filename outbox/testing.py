"""Asserting on domain events in an application's own test suite, without a broker.

`OutboxRecorder` remembers where the outbox table ends when it starts and returns the events
committed after that point, as the relay would publish them (topic, key, payload, headers)::

    from outbox.testing import record_events

    with record_events(engine) as recorded:
        place_order(...)                      # the code under test commits its transaction
    assert recorded.types() == ["OrderPlaced"]
    assert recorded.events()[0].json() == {"total": "9.90"}

It reads the table through `bind`, so it sees exactly what a relay would: a rolled-back
transaction or savepoint leaves nothing, and nothing is buffered in memory. Pass the test's
`Connection` instead of the engine when each test runs inside an outer transaction that is
rolled back at the end. Events a relay already published and deleted during the test are gone
from the table; run the recorder without a relay (that is its purpose).

As a pytest plugin (registered as ``outbox`` through the ``pytest11`` entry point, or with
``-p outbox.testing``) it provides the fixture ``outbox_events``: an `OutboxRecorder` started
for the test. It reads the fixture ``outbox_bind`` (define it: your `Engine` or `Connection`)
and ``outbox_table`` (the `Outbox` or its table; default: table ``outbox``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from outbox.write.outbox import Outbox


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One committed event, with the routing the relay gives it."""

    id: UUID
    type: str
    aggregate_type: str
    aggregate_id: str
    #: The record key: the event's key, else its aggregate id.
    key: str
    #: The event's own topic; None means ``topic_prefix + aggregate_type``.
    topic: str | None
    #: The payload bytes as stored (None for a tombstone).
    payload: bytes | None
    headers: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None

    def json(self) -> Any:
        """The payload parsed as JSON (None for a tombstone)."""
        return None if self.payload is None else json.loads(self.payload)


def _table_of(target: Outbox | sa.Table | None) -> sa.Table:
    if target is None:
        return Outbox().table
    if isinstance(target, Outbox):
        return target.table
    return target


class OutboxRecorder:
    """The events committed to an outbox table since `start()` (called on creation)."""

    def __init__(
        self, bind: sa.Engine | sa.Connection, outbox: Outbox | sa.Table | None = None
    ) -> None:
        self.bind = bind
        self.table = _table_of(outbox)
        self._after = 0
        self.start()

    @contextmanager
    def _connection(self) -> Iterator[sa.Connection]:
        if isinstance(self.bind, sa.Connection):
            yield self.bind
            return
        with self.bind.connect() as conn:
            yield conn

    def start(self) -> None:
        """Forget what was committed so far: later calls return only newer events."""
        with self._connection() as conn:
            last = conn.execute(sa.select(sa.func.max(self.table.c.seq))).scalar()
        self._after = int(last or 0)

    clear = start

    def events(self, type: str | None = None) -> list[RecordedEvent]:
        """The events committed since `start`, in commit order (of `type` only, if given)."""
        t = self.table
        query = sa.select(t).where(t.c.seq > self._after).order_by(t.c.seq)
        if type is not None:
            query = query.where(t.c.type == type)
        with self._connection() as conn:
            rows = conn.execute(query).all()
        return [_recorded(row) for row in rows]

    def types(self) -> list[str]:
        """The types of the events committed since `start`, in order."""
        return [event.type for event in self.events()]

    def __len__(self) -> int:
        return len(self.events())


def _recorded(row: sa.Row[Any]) -> RecordedEvent:
    payload = row.payload
    if payload is not None and not isinstance(payload, bytes):
        payload = bytes(payload)  # memoryview from psycopg2
    return RecordedEvent(
        id=row.id,
        type=row.type,
        aggregate_type=row.aggregatetype,
        aggregate_id=row.aggregateid,
        key=row.key if row.key is not None else row.aggregateid,
        topic=row.topic,
        payload=payload,
        headers=dict(row.headers or {}),
        created_at=row.created_at,
    )


@contextmanager
def record_events(
    bind: sa.Engine | sa.Connection, outbox: Outbox | sa.Table | None = None
) -> Iterator[OutboxRecorder]:
    """An `OutboxRecorder` started now; use it inside or after the ``with`` block."""
    yield OutboxRecorder(bind, outbox)


# -- the pytest plugin ----------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the recorder works without pytest
    pass
else:

    @pytest.fixture
    def outbox_bind() -> Any:
        """Override in your conftest.py: the `Engine` (or `Connection`) of the outbox table."""
        raise pytest.UsageError(
            "outbox_events needs a fixture named outbox_bind that returns your Engine or "
            "Connection (define it in conftest.py)"
        )

    @pytest.fixture
    def outbox_table() -> Outbox | sa.Table | None:
        """Override to name another outbox: your `Outbox` or its table (default: ``outbox``)."""
        return None

    @pytest.fixture
    def outbox_events(outbox_bind: Any, outbox_table: Outbox | sa.Table | None) -> OutboxRecorder:
        """The events committed during this test (see `OutboxRecorder`)."""
        return OutboxRecorder(outbox_bind, outbox_table)


__all__ = ["OutboxRecorder", "RecordedEvent", "record_events"]
