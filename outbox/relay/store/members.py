"""The relays' membership table (`<table>_relays`): who runs, where, since when, and whether it
is still alive. All its SQL is here.

Every relay upserts its row on its renewal timer (`beat`), by the database's clock, and deletes
it on a clean stop (`leave`). A relay that has not beaten within the lease TTL is not alive
(`live`); its row stays until `prune` removes it (a relay that was killed never leaves).
Liveness is judged by comparing the row with the database's clock read in the same statement,
so no relay's clock and no time zone setting enters the judgement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from outbox.errors import ConfigurationError
from outbox.relay.records import Member
from outbox.relay.store.engine import db_now
from outbox.relay.store.executor import Executor, utc
from outbox.schema.tables import RELAY_MODES

#: Rows silent for this long (seconds) are deleted by `prune`: long enough to look into a dead
#: relay afterwards (the table keeps its host and pid), short enough that the table stays small.
FORGET_AFTER = 3600.0


class Members:
    """The membership table of one outbox table. Methods that take `conn` run inside the
    caller's transaction; `heartbeat`, `live_members` and `remove` open their own."""

    def __init__(self, executor: Executor, table: sa.Table) -> None:
        self._executor = executor
        self.table = table

    # -- inside a transaction ----------------------------------------------------------------

    def beat(self, conn: sa.Connection, relay_id: str, host: str, pid: int, mode: str) -> None:
        """Record that `relay_id` is alive now (insert its row on the first beat)."""
        if mode not in RELAY_MODES:
            raise ConfigurationError(f"relay mode must be one of {RELAY_MODES}, got {mode!r}")
        m = self.table
        updated = conn.execute(
            sa.update(m)
            .where(m.c.relay_id == relay_id)
            .values(host=host, pid=pid, mode=mode, heartbeat_at=db_now())
        ).rowcount
        if updated == 0:
            conn.execute(
                sa.insert(m).values(
                    relay_id=relay_id,
                    host=host,
                    pid=pid,
                    mode=mode,
                    started_at=db_now(),
                    heartbeat_at=db_now(),
                )
            )

    def live(self, conn: sa.Connection, ttl_seconds: float) -> list[Member]:
        """The relays that beat within the last `ttl_seconds`, oldest first."""
        return [m for m in self.all(conn) if m.silent_seconds <= ttl_seconds]

    def all(self, conn: sa.Connection) -> list[Member]:
        """Every row, alive or not, oldest first."""
        m = self.table
        rows = conn.execute(
            sa.select(
                m.c.relay_id,
                m.c.host,
                m.c.pid,
                m.c.mode,
                m.c.started_at,
                m.c.heartbeat_at,
                db_now(),
            ).order_by(m.c.started_at, m.c.relay_id)
        ).all()
        return [_member(row) for row in rows]

    def leave(self, conn: sa.Connection, relay_id: str) -> None:
        """Delete `relay_id`'s row (a clean stop)."""
        conn.execute(sa.delete(self.table).where(self.table.c.relay_id == relay_id))

    def prune(self, conn: sa.Connection, members: Sequence[Member], older_than: float) -> int:
        """Delete the rows among `members` silent for longer than `older_than` seconds."""
        dead = [m.relay_id for m in members if m.silent_seconds > older_than]
        if dead:
            conn.execute(sa.delete(self.table).where(self.table.c.relay_id.in_(dead)))
        return len(dead)

    # -- own transactions --------------------------------------------------------------------

    def heartbeat(
        self, relay_id: str, host: str, pid: int, mode: str, ttl_seconds: float
    ) -> list[Member]:
        """Beat, forget long-dead relays, and return the live ones: one short transaction."""
        with self._executor.write() as conn:
            self.beat(conn, relay_id, host, pid, mode)
            members = self.all(conn)
            self.prune(conn, members, max(FORGET_AFTER, ttl_seconds * 10))
        return [m for m in members if m.silent_seconds <= ttl_seconds]

    def live_members(self, ttl_seconds: float) -> list[Member]:
        with self._executor.read() as conn:
            return self.live(conn, ttl_seconds)

    def remove(self, relay_id: str) -> None:
        with self._executor.write() as conn:
            self.leave(conn, relay_id)


def _member(row: Sequence[Any]) -> Member:
    started, beat, now = utc(row[4]), utc(row[5]), utc(row[6])
    return Member(
        relay_id=row[0],
        host=row[1],
        pid=int(row[2]),
        mode=row[3],
        started_at=started,
        heartbeat_at=beat,
        silent_seconds=max(0.0, (now - beat).total_seconds()),
    )


__all__ = ["FORGET_AFTER", "Members"]
