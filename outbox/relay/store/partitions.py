"""Partitioned mode's SQL: the partition leases (`<table>_partitions`, one row per virtual
partition, each with its own owner, epoch and expiry by the database's clock), the fence every
mark carries in that mode, and the switch between single-active and partitioned mode.

**The mode** is the relay lease row (`LEASE_NAME` in `<table>_lease`): in partitioned mode its
owner is the sentinel `PARTITIONED` with an expiry far in the future, so a single-active relay
(of this or an older version) only ever stands by; while switching it is `ENABLING` or
`DRAINING`. A partition can be claimed only while the mode is `PARTITIONED`, checked in the
claiming statement itself.

**A partition's lease** follows the relay lease's rules: a claim bumps its epoch and succeeds
only on a row that is free, expired or already ours (never from a live owner); a renewal and a
fence match only the owner's epoch before expiry. `fence` runs inside the mark's transaction
and must match every partition of the batch, or the transaction is rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc

from outbox.errors import LeaseLostError
from outbox.partitioning import PARTITIONS
from outbox.relay.store.engine import db_epoch
from outbox.relay.store.executor import Executor
from outbox.relay.store.leases import LEASE_NAME
from outbox.schema.backfill import backfill_chunk

#: The relay lease's owner in partitioned mode (no relay id starts with "@").
PARTITIONED = "@partitioned"
#: The owner while `enable` waits for the last single-active relay's lease to run out.
ENABLING = "@enabling"
#: The owner while `disable` waits for the partitioned relays to release their partitions.
DRAINING = "@draining"
#: The sentinel's expiry: the year 33658, by any database's clock.
FOREVER = 1e12
#: A claim waits at most this long for a partition row another relay's transaction locks.
CLAIM_LOCK_WAIT = 1

Mode = str  # "single", "partitioned", "enabling" or "draining"


@dataclass(frozen=True, slots=True)
class PartitionFence:
    """What a mark in partitioned mode carries: the epochs of the partitions of its batch."""

    owner: str
    epochs: Mapping[int, int]


@dataclass(frozen=True, slots=True)
class PartitionRow:
    """One partition lease as `outbox status` shows it."""

    partition: int
    owner: str | None
    epoch: int
    #: Seconds until expiry by the database's clock (<= 0: expired or free).
    expires_in: float

    @property
    def held(self) -> bool:
        return self.owner is not None and self.expires_in > 0


def mode_of(owner: str | None) -> Mode:
    return {PARTITIONED: "partitioned", ENABLING: "enabling", DRAINING: "draining"}.get(
        owner or "", "single"
    )


class PartitionLeases:
    """The partition leases of one outbox table and the mode switch."""

    def __init__(
        self, executor: Executor, table: sa.Table, lease_table: sa.Table, outbox: sa.Table
    ) -> None:
        self._executor = executor
        self.table = table
        self.lease_table = lease_table
        self.outbox = outbox
        lt = lease_table
        self._mode_is_partitioned = sa.exists(
            sa.select(lt.c.name).where(lt.c.name == LEASE_NAME, lt.c.owner == PARTITIONED)
        )

    # -- the relays' statements --------------------------------------------------------------

    def mode(self) -> Mode:
        lt = self.lease_table
        with self._executor.read() as conn:
            owner = conn.execute(
                sa.select(lt.c.owner).where(lt.c.name == LEASE_NAME)
            ).scalar_one_or_none()
        return mode_of(owner)

    def rows(self) -> list[PartitionRow]:
        """Every partition lease, by number."""
        pt = self.table
        with self._executor.read() as conn:
            rows = conn.execute(
                sa.select(pt.c.partition, pt.c.owner, pt.c.epoch, pt.c.expires_at - db_epoch())
                .order_by(pt.c.partition)
            ).all()  # fmt: skip
        return [PartitionRow(int(r[0]), r[1], int(r[2]), float(r[3])) for r in rows]

    def claim(self, owner: str, partition: int, ttl: float) -> int | None:
        """Take `partition` if it is free, expired or ours, and the table is partitioned; its
        new epoch, or None. Never from a live owner: a moving partition is released first."""
        pt = self.table
        take = (
            sa.update(pt)
            .where(
                pt.c.partition == partition,
                sa.or_(pt.c.owner.is_(None), pt.c.owner == owner, pt.c.expires_at <= db_epoch()),
                self._mode_is_partitioned,
            )
            .values(
                owner=owner, epoch=pt.c.epoch + 1, expires_at=db_epoch() + ttl,
                renewed_at=db_epoch(),
            )
        )  # fmt: skip
        try:
            with self._executor.write() as conn:
                self._short_lock_wait(conn)
                if conn.execute(take).rowcount != 1:
                    return None
                epoch = conn.execute(
                    sa.select(pt.c.epoch).where(pt.c.partition == partition, pt.c.owner == owner)
                ).scalar_one()
        except exc.DBAPIError as error:
            if not _lock_timeout(error):
                raise
            return None  # a frozen owner's transaction locks it: not claimable now
        return int(epoch)

    def _short_lock_wait(self, conn: sa.Connection) -> None:
        """This transaction waits at most `CLAIM_LOCK_WAIT` seconds for a row lock."""
        if self._executor.dialect == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{CLAIM_LOCK_WAIT}s'")
        elif self._executor.dialect in ("mysql", "mariadb"):
            conn.exec_driver_sql(f"SET SESSION innodb_lock_wait_timeout = {CLAIM_LOCK_WAIT}")

    def _held(self, owner: str, epochs: Mapping[int, int]) -> sa.ColumnElement[bool]:
        pt = self.table
        return sa.and_(
            pt.c.owner == owner,
            pt.c.expires_at > db_epoch(),
            sa.or_(*(sa.and_(pt.c.partition == p, pt.c.epoch == e) for p, e in epochs.items())),
        )

    def renew(self, owner: str, epochs: Mapping[int, int], ttl: float) -> dict[int, int]:
        """Extend the partitions `epochs` that are still ours; returns those (the rest were
        lost: expired and perhaps taken by another relay)."""
        if not epochs:
            return {}
        pt = self.table
        where = self._held(owner, epochs)
        with self._executor.write() as conn:
            conn.execute(
                sa.update(pt)
                .where(where)
                .values(expires_at=db_epoch() + ttl, renewed_at=db_epoch())
            )
            rows = conn.execute(sa.select(pt.c.partition, pt.c.epoch).where(where)).all()
        return {int(p): int(e) for p, e in rows}

    def fence(self, conn: sa.Connection, fence: PartitionFence, ttl: float) -> None:
        """Inside a mark's transaction: renew every partition of the batch, or raise
        `LeaseLostError` (the caller's transaction then rolls back, marking nothing). The row
        locks taken here serialize the mark against a claim of the same partitions."""
        if not fence.epochs:
            raise LeaseLostError("no partition to fence the mark with")
        pt = self.table
        matched = conn.execute(
            sa.update(pt)
            .where(self._held(fence.owner, fence.epochs))
            .values(expires_at=db_epoch() + ttl, renewed_at=db_epoch())
        ).rowcount
        if matched != len(fence.epochs):
            raise LeaseLostError(
                f"partitions {sorted(fence.epochs)} are no longer all ours ({matched} matched)"
            )

    def fenced(
        self,
        fence: PartitionFence,
        ttl: float,
        change: Callable[[sa.ColumnElement[bool]], sa.Delete | sa.Update],
    ) -> sa.Select[Any]:
        """PostgreSQL: the fence and the mark as one autocommit statement (as
        `postgresql.FencedCompletion`): ``WITH fence AS (UPDATE partitions ... RETURNING
        partition), change AS (DELETE ... WHERE ... AND (SELECT count(*) FROM fence) = n)
        SELECT count(*) FROM fence``. A statement cannot be left half-done by a frozen client,
        so no row lock outlives it. The result is the number of partitions matched: the mark
        happened only if it equals ``len(fence.epochs)``."""
        pt = self.table
        renewed = (
            sa.update(pt)
            .where(self._held(fence.owner, fence.epochs))
            .values(expires_at=db_epoch() + ttl, renewed_at=db_epoch())
            .returning(pt.c.partition)
            .cte("fence")
        )
        matched = sa.select(sa.func.count()).select_from(renewed).scalar_subquery()
        marked = change(matched == len(fence.epochs)).cte("change")
        return sa.select(sa.func.count()).select_from(renewed).add_cte(marked)

    def release(self, owner: str, epochs: Mapping[int, int]) -> None:
        """Give partitions up at once (after their in-flight batches were marked)."""
        if not epochs:
            return
        pt = self.table
        with self._executor.write() as conn:
            conn.execute(
                sa.update(pt)
                .where(
                    pt.c.owner == owner,
                    sa.or_(
                        *(sa.and_(pt.c.partition == p, pt.c.epoch == e) for p, e in epochs.items())
                    ),
                )
                .values(owner=None, expires_at=0)
            )

    def backfill(self) -> int:
        """Fill `p_partition` in up to one chunk of rows an older writer left without it."""
        with self._executor.write() as conn:
            return backfill_chunk(conn, self.outbox)

    # -- the switch (`outbox partitions enable|disable`) ------------------------------------

    def _set_mode(self, conn: sa.Connection, to: str, bump: bool) -> tuple[str | None, float]:
        """Set the relay lease's owner to the sentinel `to`; (the previous owner, seconds its
        lease had left if it was a relay's)."""
        lt = self.lease_table
        row = conn.execute(
            sa.select(lt.c.owner, lt.c.expires_at - db_epoch())
            .where(lt.c.name == LEASE_NAME)
            .with_for_update()
        ).first()
        if row is None:
            conn.execute(sa.insert(lt).values(name=LEASE_NAME, owner=None, epoch=0, expires_at=0))
            previous, left = None, 0.0
        else:
            previous, left = row[0], float(row[1])
        values: dict[str, object] = {"owner": to, "expires_at": FOREVER, "renewed_at": db_epoch()}
        if bump:
            values["epoch"] = lt.c.epoch + 1  # fences the last single-active relay's marks
        conn.execute(sa.update(lt).where(lt.c.name == LEASE_NAME).values(**values))
        relay = previous is not None and not previous.startswith("@")
        return previous, max(0.0, left) if relay else 0.0

    def begin_enable(self) -> tuple[str | None, float]:
        """Step 1 of `enable`: take the relay lease from whoever holds it (bumping its epoch,
        so a running single-active relay can mark nothing more and, not renewing, stops
        sending before its lease would have expired). Returns (that holder, the seconds its
        lease had left: wait them out before `finish_enable`)."""
        while True:  # rows older writers left: in committed chunks, before any lock is taken
            if not self.backfill():
                break
        with self._executor.write() as conn:
            return self._set_mode(conn, ENABLING, bump=True)

    def finish_enable(self) -> None:
        """Step 2 of `enable`, once the last single-active relay cannot send any more: the
        partition rows (epochs kept if they exist: epochs only grow), then the mode."""
        pt = self.table
        with self._executor.write() as conn:
            while backfill_chunk(conn, self.outbox):
                pass
            existing = set(conn.execute(sa.select(pt.c.partition)).scalars())
            missing = [p for p in range(PARTITIONS) if p not in existing]
            if missing:
                conn.execute(
                    sa.insert(pt),
                    [{"partition": p, "owner": None, "epoch": 0, "expires_at": 0} for p in missing],
                )
            self._set_mode(conn, PARTITIONED, bump=False)

    def begin_disable(self) -> Mode:
        """Step 1 of `disable`: the partitioned relays release their partitions and stop."""
        with self._executor.write() as conn:
            lt = self.lease_table
            owner = conn.execute(
                sa.select(lt.c.owner).where(lt.c.name == LEASE_NAME).with_for_update()
            ).scalar_one_or_none()
            mode = mode_of(owner)
            if mode in ("partitioned", "enabling"):
                conn.execute(
                    sa.update(lt).where(lt.c.name == LEASE_NAME).values(owner=DRAINING)
                )  # fmt: skip
                return "draining"
            return mode

    def finish_disable(self) -> list[int]:
        """Step 2 of `disable`: hand the table back to single-active relays if no partition
        has an unexpired owner; else the partitions still held (try again later)."""
        pt, lt = self.table, self.lease_table
        with self._executor.write() as conn:
            conn.execute(
                sa.select(lt.c.name).where(lt.c.name == LEASE_NAME).with_for_update()
            ).first()
            held = list(
                conn.execute(
                    sa.select(pt.c.partition).where(
                        pt.c.owner.is_not(None), pt.c.expires_at > db_epoch()
                    )
                ).scalars()
            )
            if not held:
                conn.execute(
                    sa.update(lt)
                    .where(lt.c.name == LEASE_NAME, lt.c.owner == DRAINING)
                    .values(owner=None, expires_at=0)
                )
        return [int(p) for p in held]


def _lock_timeout(error: exc.DBAPIError) -> bool:
    """PostgreSQL's lock_not_available (55P03), MySQL/MariaDB's lock wait timeout (1205)."""
    orig = error.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    args = getattr(orig, "args", ())
    return code == "55P03" or bool(args and args[0] == 1205)


__all__ = [
    "DRAINING",
    "ENABLING",
    "FOREVER",
    "PARTITIONED",
    "Mode",
    "PartitionFence",
    "PartitionLeases",
    "PartitionRow",
    "mode_of",
]
