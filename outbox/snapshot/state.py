"""All SQL about snapshot state: the snapshot table's rows, and the outbox backlog check.

Every write to a snapshot row that a runner makes is fenced by its `owner` token: a runner
whose token was replaced (the snapshot was resumed elsewhere, or cancelled) updates nothing
and stops. `hold` is the first statement of each chunk's transaction, so it also takes the
row's lock (and on SQLite the database's write lock) before the chunk's rows are read.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

UNFINISHED = ("running", "interrupted", "failed")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One snapshot as `outbox snapshot status` shows it."""

    id: str
    model: str
    target: str
    state: str
    where: str | None
    rows_done: int
    total_estimate: int | None
    chunks: int
    active_seconds: float
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    last_error: str | None
    cursor: str | None
    max_key: str | None
    chunk_size: int

    @property
    def rate(self) -> float | None:
        """Rows per second of chunk work (pauses and throttling waits excluded)."""
        return self.rows_done / self.active_seconds if self.active_seconds > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "table": self.target,
            "state": self.state,
            "where": self.where,
            "rows_done": self.rows_done,
            "estimated_total": self.total_estimate,
            "chunks": self.chunks,
            "rate_rows_per_second": None if self.rate is None else round(self.rate, 1),
            "started_at": self.started_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
            "last_error": self.last_error,
        }


class SnapshotState:
    """The snapshot table (`table`) beside the outbox table `outbox`."""

    def __init__(self, table: sa.Table, outbox: sa.Table) -> None:
        self.table = table
        self.outbox = outbox

    def info(self, row: Any) -> SnapshotInfo:
        m = row._mapping
        return SnapshotInfo(
            id=m["id"],
            model=m["model"],
            target=m["target"],
            state=m["state"],
            where=m["where_sql"],
            rows_done=int(m["rows_done"]),
            total_estimate=m["total_estimate"],
            chunks=int(m["chunks"]),
            active_seconds=float(m["active_seconds"]),
            started_at=m["started_at"],
            updated_at=m["updated_at"],
            finished_at=m["finished_at"],
            last_error=m["last_error"],
            cursor=m["cursor"],
            max_key=m["max_key"],
            chunk_size=int(m["chunk_size"]),
        )

    def unfinished(self, conn: sa.Connection, target: str) -> SnapshotInfo | None:
        """The newest snapshot of table `target` that has not finished, if any."""
        t = self.table
        row = conn.execute(
            sa.select(t)
            .where(t.c.target == target, t.c.state.in_(UNFINISHED))
            .order_by(t.c.started_at.desc())
            .limit(1)
        ).first()
        return None if row is None else self.info(row)

    def get(self, conn: sa.Connection, snapshot_id: str) -> SnapshotInfo | None:
        row = conn.execute(sa.select(self.table).where(self.table.c.id == snapshot_id)).first()
        return None if row is None else self.info(row)

    def list(self, conn: sa.Connection) -> list[SnapshotInfo]:
        t = self.table
        rows = conn.execute(sa.select(t).order_by(t.c.started_at, t.c.id)).all()
        return [self.info(r) for r in rows]

    def create(
        self,
        conn: sa.Connection,
        *,
        model: str,
        target: str,
        where: str | None,
        max_key: str | None,
        total_estimate: int,
        chunk_size: int,
        owner: str,
    ) -> str:
        snapshot_id = str(uuid.uuid4())
        now = _now()
        conn.execute(
            self.table.insert().values(
                id=snapshot_id,
                model=model,
                target=target,
                where_sql=where,
                state="running",
                cursor=None,
                max_key=max_key,
                rows_done=0,
                chunks=0,
                total_estimate=total_estimate,
                chunk_size=chunk_size,
                owner=owner,
                active_seconds=0.0,
                started_at=now,
                updated_at=now,
            )
        )
        return snapshot_id

    def claim(self, conn: sa.Connection, snapshot_id: str, owner: str) -> bool:
        """Make `owner` the runner of an unfinished snapshot; an older runner is fenced off."""
        t = self.table
        result = conn.execute(
            t.update()
            .where(t.c.id == snapshot_id, t.c.state.in_(UNFINISHED))
            .values(owner=owner, state="running", updated_at=_now())
        )
        return result.rowcount == 1

    def hold(self, conn: sa.Connection, snapshot_id: str, owner: str) -> bool:
        """Lock the snapshot row for this chunk's transaction; False once fenced or cancelled."""
        t = self.table
        result = conn.execute(
            t.update()
            .where(t.c.id == snapshot_id, t.c.owner == owner, t.c.state == "running")
            .values(updated_at=_now())
        )
        return result.rowcount == 1

    def advance(
        self,
        conn: sa.Connection,
        snapshot_id: str,
        owner: str,
        *,
        cursor: str | None,
        rows: int,
        seconds: float,
    ) -> None:
        """Record a chunk, in the chunk's own transaction (the row is held by `hold`)."""
        t = self.table
        conn.execute(
            t.update()
            .where(t.c.id == snapshot_id, t.c.owner == owner)
            .values(
                cursor=cursor,
                rows_done=t.c.rows_done + rows,
                chunks=t.c.chunks + 1,
                active_seconds=t.c.active_seconds + seconds,
                updated_at=_now(),
                last_error=None,
            )
        )

    def finish(
        self,
        conn: sa.Connection,
        snapshot_id: str,
        owner: str,
        state: str,
        error: str | None = None,
    ) -> bool:
        """End this runner's run: done, interrupted or failed (the latter two resume)."""
        t = self.table
        now = _now()
        result = conn.execute(
            t.update()
            .where(t.c.id == snapshot_id, t.c.owner == owner, t.c.state == "running")
            .values(
                state=state,
                updated_at=now,
                finished_at=now if state == "done" else None,
                last_error=error,
            )
        )
        return result.rowcount == 1

    def cancel(self, conn: sa.Connection, snapshot_id: str) -> bool:
        """Cancel an unfinished snapshot; its runner stops before its next chunk."""
        t = self.table
        now = _now()
        result = conn.execute(
            t.update()
            .where(t.c.id == snapshot_id, t.c.state.in_(UNFINISHED))
            .values(state="cancelled", updated_at=now, finished_at=now)
        )
        return result.rowcount == 1

    def pending_over(self, conn: sa.Connection, limit: int) -> int:
        """How many outbox events wait for the relay, counted up to `limit` + 1 only (a bounded
        probe, cheap however large the backlog is)."""
        o = self.outbox
        waiting = (
            sa.select(o.c.seq)
            .where(o.c.published_at.is_(None), o.c.parked_at.is_(None))
            .limit(limit + 1)
            .subquery()
        )
        return int(conn.execute(sa.select(sa.func.count()).select_from(waiting)).scalar_one())
