"""The operator's statements, which the CLI runs (the relay also reports status and purges):
status, the list of parked events, requeue, drop and purge. None is fenced by the lease: each
changes only rows the relay is not publishing (parked, or published and retained)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from outbox.relay.records import ParkedEvent, Status
from outbox.relay.store.executor import Executor, utc
from outbox.relay.store.reads import parked, pending


class Admin:
    """Operator tools over one outbox table."""

    def __init__(self, executor: Executor, table: sa.Table) -> None:
        self._executor = executor
        self.table = table

    def status(self) -> Status:
        t = self.table
        with self._executor.read() as conn:
            count, oldest = conn.execute(
                sa.select(sa.func.count(), sa.func.min(t.c.created_at)).where(pending(t))
            ).one()
            failed = conn.execute(sa.select(sa.func.count()).where(parked(t))).scalar_one()
        age = None
        if oldest is not None:
            age = max(0.0, (datetime.now(UTC) - utc(oldest)).total_seconds())
        return Status(pending=int(count), oldest_pending_age_seconds=age, failed=int(failed))

    def list_parked(self, limit: int = 100) -> list[ParkedEvent]:
        t = self.table
        with self._executor.read() as conn:
            rows = conn.execute(
                sa.select(
                    t.c.seq,
                    t.c.id,
                    t.c.type,
                    t.c.aggregatetype,
                    t.c.aggregateid,
                    t.c.topic,
                    t.c.key,
                    t.c.attempts,
                    t.c.last_error,
                    t.c.created_at,
                    t.c.parked_at,
                )
                .where(parked(t))
                .order_by(t.c.seq)
                .limit(limit)
            ).all()
        return [
            ParkedEvent(
                seq=r[0],
                id=r[1],
                type=r[2],
                aggregatetype=r[3],
                aggregateid=r[4],
                topic=r[5],
                key=r[6],
                attempts=r[7],
                last_error=r[8],
                created_at=utc(r[9]),
                parked_at=utc(r[10]),
            )
            for r in rows
        ]

    def _parked_where(self, ids: Sequence[uuid.UUID] | None) -> sa.ColumnElement[bool]:
        cond = parked(self.table)
        if ids is not None:
            cond = sa.and_(cond, self.table.c.id.in_(list(ids)))
        return cond

    def requeue(self, ids: Sequence[uuid.UUID] | None = None) -> int:
        """Put parked events (all when `ids` is None) back in line, in their original place."""
        t = self.table
        with self._executor.write() as conn:
            return conn.execute(
                sa.update(t)
                .where(self._parked_where(ids))
                .values(parked_at=None, attempts=0, last_error=None)
            ).rowcount

    def drop(self, ids: Sequence[uuid.UUID] | None = None) -> int:
        """Delete parked events (all when `ids` is None): they will never be published."""
        with self._executor.write() as conn:
            return conn.execute(sa.delete(self.table).where(self._parked_where(ids))).rowcount

    def purge(self, older_than: float, batch_size: int = 1000) -> int:
        """Delete retained published events older than `older_than` seconds, in short batches
        so that no long lock is held on a busy table."""
        t = self.table
        cutoff = datetime.fromtimestamp(time.time() - older_than, UTC)
        total = 0
        while True:
            with self._executor.write() as conn:
                seqs = (
                    conn.execute(
                        sa.select(t.c.seq)
                        .where(t.c.published_at.is_not(None), t.c.published_at < cutoff)
                        .order_by(t.c.seq)
                        .limit(batch_size)
                    )
                    .scalars()
                    .all()
                )
                if seqs:
                    conn.execute(sa.delete(t).where(t.c.seq.in_(seqs)))
            total += len(seqs)
            if len(seqs) < batch_size:
                return total
