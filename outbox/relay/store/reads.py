"""The relay's reads of pending events (its hot path: statements built once per shape and kept),
and the conditions that say which rows are pending or parked."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa

from outbox.relay.records import PendingEvent
from outbox.relay.store.executor import Executor, utc
from outbox.relay.store.postgresql import partition_in_array

#: `fetch_after`'s default count limit: no limit.
COUNT_ALL = 2**31 - 1


def pending(t: sa.Table) -> sa.ColumnElement[bool]:
    """Rows waiting to be published: neither published (retained) nor parked."""
    return sa.and_(t.c.published_at.is_(None), t.c.parked_at.is_(None))


def parked(t: sa.Table) -> sa.ColumnElement[bool]:
    """Rows set aside after failing: they wait for an operator's requeue or drop."""
    return sa.and_(t.c.parked_at.is_not(None), t.c.published_at.is_(None))


class EventReads:
    """Reads of one outbox table for publishing. No row locks: only the lease holder reads to
    publish, and every write that follows is fenced (see `leases`)."""

    def __init__(self, executor: Executor, table: sa.Table) -> None:
        self._executor = executor
        self.table = t = table
        self._columns: tuple[sa.ColumnElement[Any], ...] = (
            t.c.seq,
            t.c.id,
            t.c.aggregatetype,
            t.c.aggregateid,
            t.c.type,
            t.c.payload,
            t.c.topic,
            t.c.key,
            t.c.headers,
            t.c.created_at,
            t.c.attempts,
            t.c.p_partition,
        )
        #: Builds a `PendingEvent` from a row of `_columns` (and whatever follows them).
        self._event = _pending_event
        if executor.dialect == "postgresql":
            # The id and the timestamp as the envelope writes them, formatted by the database
            # (C code, on the other side) instead of by Python for every event.
            self._columns += formatted_columns(t)
            self._event = _pg_pending_event
        self.partition_key = sa.func.coalesce(t.c.key, t.c.aggregateid)
        self._pending = pending(t)
        #: Partitioned mode: only the partitions a relay holds, as one parameter `partitions`
        #: (an array on PostgreSQL, whose statements are compiled once; else expanded).
        self.in_partitions: sa.ColumnElement[bool] = (
            partition_in_array(t)
            if executor.dialect == "postgresql"
            else t.c.p_partition.in_(sa.bindparam("partitions", expanding=True))
        )
        # Statements of the relay's hot path, built once (see fetch_query).
        self._fetch_queries: dict[tuple[int, bool, bool], sa.Select[Any]] = {}

    def parked_keys(self, partitions: Sequence[int] | None = None) -> frozenset[str]:
        """Keys whose later events wait until their parked event is requeued or dropped (in
        partitioned mode: of the `partitions` held; a key lives in one partition)."""
        query = sa.select(self.partition_key).where(parked(self.table)).distinct()
        params: dict[str, Any] = {}
        if partitions is not None:
            query, params = query.where(self.in_partitions), {"partitions": list(partitions)}
        with self._executor.read() as conn:
            rows = conn.execute(query, params).scalars()
            # A NULL key (a row broken by hand) cannot be excluded by NOT IN: skip it.
            return frozenset(key for key in rows if key is not None)

    def fetch_pending(
        self,
        limit: int,
        exclude_keys: Collection[str] = frozenset(),
        partitions: Sequence[int] | None = None,
    ) -> list[PendingEvent]:
        """Up to `limit` pending events in insert order, leaving out events of `exclude_keys`
        (and, in partitioned mode, of partitions not in `partitions`). No row locks: only the
        lease holder (of each partition) reads to publish."""
        query = self.fetch_query(
            limit, exclude_keys, after=False, partitioned=partitions is not None
        )
        rows = self._executor.rows(query, _partitions({}, partitions))
        event = self._event
        return [event(r) for r in rows]

    def fetch_after(
        self,
        after_seq: int,
        limit: int,
        exclude_keys: Collection[str] = frozenset(),
        *,
        count_limit: int = COUNT_ALL,
        partitions: Sequence[int] | None = None,
    ) -> tuple[list[PendingEvent], int]:
        """Up to `limit` pending events after `after_seq`, and how many pending events have a
        seq up to `after_seq` (counted up to `count_limit`; by default all), both from one
        statement (one snapshot, one round trip). With `partitions`, both only in those: the
        late-commit check per partition (only a key's own events can be overtaken, and a key
        lives in one partition).

        A read after a seq can miss a lower seq whose transaction committed late; the relay
        compares the count with the events it has in flight before it sends what it read, so it
        needs no count beyond one more than those. Capped, the count walks the primary key from
        the first pending row and stops; an uncapped one was planned as a scan of the whole table
        (48 ms at a million rows, on every read)."""
        rows = self._executor.rows(
            self.fetch_query(limit, exclude_keys, after=True, partitioned=partitions is not None),
            _partitions({"after_seq": after_seq, "count_limit": count_limit}, partitions),
        )
        event = self._event
        return [event(r) for r in rows], rows[0][-1] if rows else 0

    def fetch_query(
        self, limit: int, exclude_keys: Collection[str], *, after: bool, partitioned: bool = False
    ) -> sa.Select[Any]:
        """The read of pending events, with `after`: those after :after_seq plus the count of
        those up to it. Built once per shape when no key is excluded (the usual case), so that
        SQLAlchemy neither rebuilds it nor recomputes its cache key on the hot path."""
        # NOT IN with a NULL in the list matches nothing: a NULL key (a row broken by hand) is
        # never excluded by key; its row is parked instead.
        keys = tuple(sorted(key for key in exclude_keys if key is not None))
        shape = (limit, after, partitioned)
        cached = self._fetch_queries.get(shape) if not keys else None
        if cached is not None:
            return cached
        t = self.table
        query = (
            self._pending_query(keys, partitioned)
            .with_only_columns(*self._columns)
            .order_by(t.c.seq)
            .limit(limit)
        )
        if after:
            after_seq = sa.bindparam("after_seq", type_=t.c.seq.type)
            up_to = (
                self._pending_query(keys, partitioned)
                .where(t.c.seq <= after_seq)
                .order_by(t.c.seq)
                .limit(sa.bindparam("count_limit", type_=sa.Integer()))
                .subquery("up_to")
            )
            below = sa.select(sa.func.count()).select_from(up_to).scalar_subquery()
            query = query.where(t.c.seq > after_seq).add_columns(below)
        if not keys:
            self._fetch_queries[shape] = self._executor.hot(query)
        return query

    def _pending_query(self, keys: Sequence[str], partitioned: bool) -> sa.Select[Any]:
        """Pending events outside `keys` (already normalized by `fetch_query`)."""
        query = sa.select(self.table.c.seq).where(self._pending)
        if partitioned:
            query = query.where(self.in_partitions)
        if keys:
            query = query.where(self.partition_key.not_in(keys))
        return query


def _partitions(params: dict[str, Any], partitions: Sequence[int] | None) -> dict[str, Any]:
    if partitions is not None:
        params["partitions"] = list(partitions)
    return params


def formatted_columns(t: sa.Table) -> tuple[sa.ColumnElement[Any], ...]:
    """PostgreSQL: ``str(id)``, ``rfc3339(created_at)`` and created_at in microseconds since
    the epoch (`PendingEvent.id_text`, `created_text`, `created_us`), exactly as Python computes
    them (pinned by tests/integration/test_relay_reads.py)."""
    created = t.c.created_at
    # In UTC whatever the session's TimeZone; always six digits of microseconds, like rfc3339.
    text = sa.func.to_char(
        sa.func.timezone(sa.literal_column("'UTC'"), created),
        sa.literal_column('\'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\''),
    )
    # Exact on every version (EXTRACT(EPOCH) is a float before PostgreSQL 14): whole seconds,
    # whose epoch is an integer, plus the microseconds of the seconds field (offsets are whole
    # seconds, so truncating in the session's zone is truncating in UTC).
    million = sa.literal_column("1000000", sa.BigInteger())  # in the SQL, not a parameter
    second: sa.ColumnElement[str] = sa.literal_column("'second'")
    whole = sa.cast(sa.extract("epoch", sa.func.date_trunc(second, created)), sa.BigInteger)
    micros = sa.cast(sa.extract("microseconds", created), sa.BigInteger) % million
    return (
        sa.cast(t.c.id, sa.Text).label("id_text"),
        text.label("created_text"),
        (whole * million + micros).label("created_us"),
    )


def _pending_event(r: Sequence[Any]) -> PendingEvent:
    # Positional: about a tenth cheaper than by keyword, once per event.
    return PendingEvent(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], utc(r[9]), r[10], r[11]
    )


def _pg_pending_event(r: Sequence[Any]) -> PendingEvent:
    # The row is the fields in order (a timestamptz is always aware), then maybe the count.
    return PendingEvent(*r[:15])
