"""All of the inbox's SQL: dedup records, fenced offsets, parked and held events.

Every statement of the apply path runs on the handler's session, inside the one transaction
that also carries the handler's writes. A record enters with `enter`: the fenced offset update
and the dedup row, in one statement on PostgreSQL (a data-modifying CTE; its
``ON CONFLICT DO NOTHING`` waits for a concurrent copy and then skips it), in two elsewhere (the
UPDATE, then an ``INSERT ... SELECT ... WHERE NOT EXISTS``). Either way the database tells
whether the row was new: its count, never an error's text, never INSERT IGNORE. A concurrent
copy that slips past the NOT EXISTS fails the primary key, and only the `IntegrityError`
class of that one INSERT is looked at: the caller rolls back and runs the record again, and
the next try sees the copy.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from outbox.inbox.decode import Record
from outbox.schema.tables import build_inbox_tables

# Dedup statuses; parked-table states.
DONE, HELD, PARKED, DROPPED = "done", "held", "parked", "dropped"
REQUEUED = "requeued"


_DEDUP_PARAMS = ("consumer", "event_id", "topic", "partition", "offset", "status")
_DEDUP_COLUMNS = [*_DEDUP_PARAMS, "received_at"]


class Fenced(Exception):
    """A newer claim of the partition exists: this consumer must not commit for it."""

    @classmethod
    def of(cls, topic: str, partition: int) -> Fenced:
        return cls(f"{topic}[{partition}] was claimed by a newer consumer")


class DuplicateRace(Exception):
    """The dedup INSERT hit the primary key: a concurrent copy committed first. Roll back and
    run the record again (its SELECT then sees the copy)."""


@dataclass(frozen=True, slots=True)
class ParkedRow:
    """One row of the parked table (a parked, held or requeued record)."""

    event_id: str
    event_type: str | None
    topic: str
    partition: int
    offset: int
    key: str | None
    state: str
    error: str | None
    attempts: int
    parked_at: datetime
    record: Record


def _now() -> datetime:
    return datetime.now(UTC)


def _encode_headers(headers: Sequence[tuple[str, bytes]]) -> list[list[str]]:
    return [[name, base64.b64encode(value or b"").decode()] for name, value in headers]


def _decode_headers(stored: Any) -> list[tuple[str, bytes]]:
    if isinstance(stored, str):
        stored = json.loads(stored)
    return [(str(name), base64.b64decode(value)) for name, value in stored or ()]


class InboxStore:
    """The inbox tables of one consumer name (the dedup namespace)."""

    def __init__(self, consumer: str, table: str = "outbox", schema: str | None = None) -> None:
        metadata = sa.MetaData()
        self.dedup, self.offsets, self.parked = build_inbox_tables(metadata, table, schema)
        self.metadata = metadata
        self.consumer = consumer

    # -- partitions and the fence ----------------------------------------------------------

    def claim(
        self, session: Session, topic: str, partition: int, owner: str
    ) -> tuple[int, int | None]:
        """Take the partition over: bump its generation (fencing every earlier owner) and return
        (generation, next offset to read or None when nothing was applied yet)."""
        o = self.offsets
        where = (
            (o.c.consumer == self.consumer) & (o.c.topic == topic) & (o.c.partition == partition)
        )
        row = session.execute(
            sa.select(o.c.generation, o.c.next_offset).where(where).with_for_update()
        ).first()
        if row is None:
            # A concurrent first claim fails the primary key: the caller's retry then updates.
            session.execute(
                o.insert().values(
                    consumer=self.consumer, topic=topic, partition=partition, next_offset=None,
                    generation=1, owner=owner, updated_at=_now(),
                )
            )  # fmt: skip
            return 1, None
        generation = int(row.generation) + 1
        session.execute(
            o.update().where(where).values(generation=generation, owner=owner, updated_at=_now())
        )
        return generation, None if row.next_offset is None else int(row.next_offset)

    def fence(
        self, session: Session, topic: str, partition: int, generation: int, next_offset: int | None
    ) -> None:
        """Store the next offset (or only touch the row) if `generation` is still the current
        claim; else raise `Fenced`. Run first in a transaction, it also locks the partition's
        row, so a new owner's claim waits for this transaction."""
        statement = self._touch if next_offset is None else self._fence
        params = self._params(topic, partition, generation, next_offset=next_offset)
        if session.connection().execute(statement, params).rowcount == 0:
            raise Fenced.of(topic, partition)

    def enter(
        self, session: Session, generation: int, event_id: str, record: Record, status: str
    ) -> bool:
        """Fence (store the offset after `record` under `generation`, else `Fenced`) and insert
        the dedup row of `event_id`; False when the id already has one (a duplicate), and
        `DuplicateRace` when a concurrent copy inserted it first (not on PostgreSQL)."""
        conn = session.connection()
        params = self._params(
            record.topic, record.partition, generation, next_offset=record.offset + 1,
            event_id=event_id, offset=record.offset, status=status,
        )  # fmt: skip
        if conn.dialect.name == "postgresql":
            current, fresh = conn.execute(self._pg_enter, params).one()
            if not current:
                raise Fenced.of(record.topic, record.partition)
            return bool(fresh)
        if conn.execute(self._fence, params).rowcount == 0:
            raise Fenced.of(record.topic, record.partition)
        try:
            return bool(conn.execute(self._insert_new, params).rowcount)
        except exc.IntegrityError:
            raise DuplicateRace(event_id) from None

    def _params(self, topic: str, partition: int, generation: int, **more: Any) -> dict[str, Any]:
        """The bound parameters of the statements below (``p_``: never a column's own name,
        which an UPDATE would take for a SET value)."""
        values = {"consumer": self.consumer, "topic": topic, "partition": partition,
                  "generation": generation, "now": _now(), **more}  # fmt: skip
        return {f"p_{name}": value for name, value in values.items()}

    # The statements of the apply path, built once with bound parameters: SQLAlchemy's compiled
    # cache then serves them (building one per record cost more than its round trip).

    def _fence_update(self) -> sa.Update:
        o, b = self.offsets, sa.bindparam
        return o.update().where(
            (o.c.consumer == b("p_consumer"))
            & (o.c.topic == b("p_topic"))
            & (o.c.partition == b("p_partition"))
            & (o.c.generation == b("p_generation"))
        )

    @functools.cached_property
    def _fence(self) -> sa.Update:
        b = sa.bindparam
        return self._fence_update().values(next_offset=b("p_next_offset"), updated_at=b("p_now"))

    @functools.cached_property
    def _touch(self) -> sa.Update:
        return self._fence_update().values(updated_at=sa.bindparam("p_now"))

    def _dedup_source(self) -> sa.Select[Any]:
        d = self.dedup
        return sa.select(
            *(sa.bindparam(f"p_{name}", type_=d.c[name].type) for name in _DEDUP_PARAMS),
            sa.bindparam("p_now", type_=d.c.received_at.type),
        )

    @functools.cached_property
    def _insert_new(self) -> sa.Insert:
        d, b = self.dedup, sa.bindparam
        exists = sa.exists().where(
            (d.c.consumer == b("p_consumer")) & (d.c.event_id == b("p_event_id"))
        )
        return d.insert().from_select(_DEDUP_COLUMNS, self._dedup_source().where(~exists))

    @functools.cached_property
    def _pg_enter(self) -> sa.Select[Any]:
        d, o = self.dedup, self.offsets
        fence = self._fence.returning(o.c.generation).cte("fence")
        source = self._dedup_source().where(sa.exists(sa.select(fence.c.generation)))
        entered = (
            postgresql.insert(d)
            .from_select(_DEDUP_COLUMNS, source)
            .on_conflict_do_nothing(index_elements=[d.c.consumer, d.c.event_id])
            .returning(d.c.event_id)
            .cte("entered")
        )
        count = sa.func.count
        return sa.select(
            sa.select(count()).select_from(fence).scalar_subquery(),
            sa.select(count()).select_from(entered).scalar_subquery(),
        )

    # -- dedup -----------------------------------------------------------------------------

    def seen(self, session: Session, event_id: str) -> bool:
        d = self.dedup
        return (
            session.execute(
                sa.select(d.c.status).where(
                    (d.c.consumer == self.consumer) & (d.c.event_id == event_id)
                )
            ).first()
            is not None
        )

    def seen_many(self, session: Session, event_ids: Sequence[str]) -> set[str]:
        """The ids among `event_ids` that already have a dedup row (one SELECT)."""
        d = self.dedup
        query = sa.select(d.c.event_id).where(
            (d.c.consumer == self.consumer) & d.c.event_id.in_(list(event_ids))
        )
        return {r[0] for r in session.execute(query)}

    def record_many(self, session: Session, applied: Sequence[tuple[str, Record]]) -> None:
        """Insert the dedup rows of a batch in one statement; `DuplicateRace` on a copy."""
        now = _now()
        rows = [
            {"consumer": self.consumer, "event_id": event_id, "topic": r.topic,
             "partition": r.partition, "offset": r.offset, "status": DONE, "received_at": now}
            for event_id, r in applied
        ]  # fmt: skip
        try:
            session.execute(self.dedup.insert(), rows)
        except exc.IntegrityError:
            raise DuplicateRace(applied[0][0]) from None

    def record(self, session: Session, event_id: str, record: Record, status: str) -> None:
        """Insert the dedup row; `DuplicateRace` when a concurrent copy holds the key."""
        try:
            session.execute(
                self.dedup.insert().values(
                    consumer=self.consumer, event_id=event_id, topic=record.topic,
                    partition=record.partition, offset=record.offset, status=status,
                    received_at=_now(),
                )
            )  # fmt: skip
        except exc.IntegrityError:
            raise DuplicateRace(event_id) from None

    def set_status(self, session: Session, event_id: str, status: str) -> None:
        d = self.dedup
        session.execute(
            d.update()
            .where((d.c.consumer == self.consumer) & (d.c.event_id == event_id))
            .values(status=status)
        )

    # -- parked and held -------------------------------------------------------------------

    def park(
        self,
        session: Session,
        event_id: str,
        event_type: str | None,
        record: Record,
        state: str,
        error: str | None,
        attempts: int,
    ) -> None:
        session.execute(
            self.parked.insert().values(
                consumer=self.consumer, event_id=event_id, event_type=event_type,
                topic=record.topic, partition=record.partition, offset=record.offset,
                key=None if record.key is None else record.key.decode("utf-8", "replace"),
                headers=_encode_headers(record.headers), payload=record.value, state=state,
                error=error, attempts=attempts, parked_at=_now(),
            )
        )  # fmt: skip

    def repark(self, session: Session, event_id: str, error: str, attempts: int) -> None:
        p = self.parked
        session.execute(
            p.update()
            .where((p.c.consumer == self.consumer) & (p.c.event_id == event_id))
            .values(state=PARKED, error=error, attempts=p.c.attempts + attempts, parked_at=_now())
        )

    def unpark(self, session: Session, event_id: str) -> None:
        p = self.parked
        session.execute(
            p.delete().where((p.c.consumer == self.consumer) & (p.c.event_id == event_id))
        )

    def parked_rows(
        self, session: Session | sa.Connection, partitions: Iterable[tuple[str, int]] | None = None
    ) -> list[ParkedRow]:
        """Parked, held and requeued rows, in (topic, partition, offset) order; only those of
        `partitions` when given."""
        p = self.parked
        query = sa.select(p).where(p.c.consumer == self.consumer)
        if partitions is not None:
            wanted = list(partitions)
            if not wanted:
                return []
            query = query.where(
                sa.or_(*((p.c.topic == t) & (p.c.partition == n) for t, n in wanted))
            )
        rows = session.execute(query.order_by(p.c.topic, p.c.partition, p.c.offset)).all()
        return [
            ParkedRow(
                event_id=r.event_id,
                event_type=r.event_type,
                topic=r.topic,
                partition=int(r.partition),
                offset=int(r.offset),
                key=r.key,
                state=r.state,
                error=r.error,
                attempts=int(r.attempts),
                parked_at=r.parked_at,
                record=Record(
                    topic=r.topic,
                    partition=int(r.partition),
                    offset=int(r.offset),
                    key=None if r.key is None else r.key.encode(),
                    value=r.payload,
                    headers=_decode_headers(r.headers),
                ),
            )
            for r in rows
        ]

    # -- operator commands -----------------------------------------------------------------

    def _parked_where(self, event_ids: Sequence[str] | None, states: Sequence[str]) -> Any:
        p = self.parked
        where = (p.c.consumer == self.consumer) & p.c.state.in_(states)
        return where if event_ids is None else where & p.c.event_id.in_(list(event_ids))

    def requeue(self, conn: sa.Connection, event_ids: Sequence[str] | None) -> int:
        """Mark parked rows for the running consumer to apply again (None: all of them)."""
        result = conn.execute(
            self.parked.update()
            .where(self._parked_where(event_ids, [PARKED]))
            .values(state=REQUEUED)
        )
        return int(result.rowcount)

    def drop(self, conn: sa.Connection, event_ids: Sequence[str] | None) -> int:
        """Give parked rows up: the dedup row says dropped; the key's held events then flow."""
        p, d = self.parked, self.dedup
        where = self._parked_where(event_ids, [PARKED, REQUEUED])
        ids = [r.event_id for r in conn.execute(sa.select(p.c.event_id).where(where))]
        if not ids:
            return 0
        conn.execute(
            d.update()
            .where((d.c.consumer == self.consumer) & d.c.event_id.in_(ids))
            .values(status=DROPPED)
        )
        conn.execute(p.delete().where((p.c.consumer == self.consumer) & p.c.event_id.in_(ids)))
        return len(ids)

    def purge(self, conn: sa.Connection, older_than: timedelta) -> int:
        """Delete applied or dropped dedup rows older than `older_than`, and only those below
        their partition's stored offset (a record not yet behind the offset may still be read
        again, and its row is what makes that read a duplicate)."""
        d, o = self.dedup, self.offsets
        below = (
            sa.select(o.c.next_offset)
            .where(
                (o.c.consumer == d.c.consumer)
                & (o.c.topic == d.c.topic)
                & (o.c.partition == d.c.partition)
            )
            .scalar_subquery()
        )
        result = conn.execute(
            d.delete().where(
                (d.c.consumer == self.consumer)
                & d.c.status.in_([DONE, DROPPED])
                & (d.c.received_at < _now() - older_than)
                & (d.c.offset < below)
            )
        )
        return int(result.rowcount)
