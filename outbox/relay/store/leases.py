"""Named leases: the SQL that elects one holder per name and fences every write that follows a
publish, by the database's clock (`db_epoch`), never a relay's.

Each lease is one row of the table's lease table, keyed by its name. The relay's single lease is
`LEASE_NAME`; every method takes the name (or a `Lease`, which carries it), so other rows of the
same table can be leases of their own with the same guarantees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc

from outbox.errors import LeaseLostError
from outbox.relay.records import LeaseInfo
from outbox.relay.store.engine import db_epoch
from outbox.relay.store.executor import Executor

LEASE_NAME = "relay"


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to publish, held until the database's clock passes its expiry."""

    name: str
    owner: str
    epoch: int


def lease_lost(lease: Lease) -> LeaseLostError:
    return LeaseLostError(f"lease {lease.name!r} epoch {lease.epoch} is no longer ours")


class Leases:
    """Taking, renewing, releasing and reading the leases of one lease table.

    Contract: at most one owner holds a name at a time by the database's clock; every take bumps
    the name's epoch, and `fence` (inside the caller's transaction) succeeds only for the current
    owner and epoch before expiry, so a write fenced by an earlier holder cannot commit."""

    def __init__(self, executor: Executor, lease_table: sa.Table) -> None:
        self._executor = executor
        self.table = lease_table
        lt = lease_table
        #: The UPDATE that renews a lease if it is still ours (and unexpired), built once: the
        #: relay runs it with every completion. Parameters: `params`.
        self.renewal = (
            sa.update(lt)
            .where(
                lt.c.name == sa.bindparam("lease_name"),
                lt.c.owner == sa.bindparam("lease_owner"),
                lt.c.epoch == sa.bindparam("lease_epoch"),
                lt.c.expires_at > db_epoch(),
            )
            .values(
                expires_at=db_epoch() + sa.bindparam("lease_ttl", type_=sa.Double()),
                renewed_at=db_epoch(),
            )
        )

    def try_acquire(self, owner: str, ttl: float, name: str = LEASE_NAME) -> Lease | None:
        """Take the lease if it is free, expired or already ours; None if another relay holds it.

        Taking it bumps the epoch, which fences out every earlier holder."""
        lt = self.table
        take = (
            sa.update(lt)
            .where(
                lt.c.name == name,
                sa.or_(lt.c.owner.is_(None), lt.c.owner == owner, lt.c.expires_at <= db_epoch()),
            )
            .values(
                owner=owner,
                epoch=lt.c.epoch + 1,
                expires_at=db_epoch() + ttl,
                renewed_at=db_epoch(),
                acquired_at=db_epoch(),
            )
        )
        for _ in range(2):
            with self._executor.write() as conn:
                if conn.execute(take).rowcount == 1:
                    epoch = conn.execute(
                        sa.select(lt.c.epoch).where(lt.c.name == name, lt.c.owner == owner)
                    ).scalar_one()
                    return Lease(name, owner, int(epoch))
                exists = conn.execute(sa.select(lt.c.name).where(lt.c.name == name)).first()
            if exists is not None:
                return None
            try:
                with self._executor.write() as conn:
                    conn.execute(sa.insert(lt).values(name=name, owner=None, epoch=0, expires_at=0))
            except exc.IntegrityError:
                pass  # another relay created the row first
        return None

    @staticmethod
    def params(lease: Lease, ttl: float) -> dict[str, Any]:
        """The parameters of `renewal` for `lease`, extended by `ttl` seconds."""
        return {
            "lease_name": lease.name,
            "lease_owner": lease.owner,
            "lease_epoch": lease.epoch,
            "lease_ttl": float(ttl),
        }

    def fence(self, conn: sa.Connection, lease: Lease, ttl: float) -> None:
        """Renew the lease inside `conn`'s transaction, or raise `LeaseLostError`.

        The row lock taken here also serializes this transaction against a takeover."""
        if conn.execute(self.renewal, self.params(lease, ttl)).rowcount != 1:
            raise lease_lost(lease)

    def renew(self, lease: Lease, ttl: float) -> None:
        """Extend the lease; raise `LeaseLostError` if it was lost."""
        with self._executor.write() as conn:
            self.fence(conn, lease, ttl)

    def release(self, lease: Lease) -> None:
        """Give the lease up at once so that a standby takes over without waiting for expiry."""
        lt = self.table
        with self._executor.write() as conn:
            conn.execute(
                sa.update(lt)
                .where(
                    lt.c.name == lease.name, lt.c.owner == lease.owner, lt.c.epoch == lease.epoch
                )
                .values(owner=None, expires_at=0)
            )

    def holder(self, name: str = LEASE_NAME) -> tuple[str | None, int, float] | None:
        """(owner, epoch, seconds until expiry) of the lease, or None if never taken."""
        lt = self.table
        with self._executor.read() as conn:
            row = conn.execute(
                sa.select(lt.c.owner, lt.c.epoch, lt.c.expires_at - db_epoch()).where(
                    lt.c.name == name
                )
            ).first()
        if row is None:
            return None
        return row[0], int(row[1]), float(row[2])

    def info(self, name: str = LEASE_NAME) -> LeaseInfo | None:
        """The lease row with its durations by the database's clock, or None if never taken."""
        lt = self.table
        now = db_epoch()
        with self._executor.read() as conn:
            row = conn.execute(
                sa.select(
                    lt.c.owner,
                    lt.c.epoch,
                    lt.c.expires_at - now,
                    now - lt.c.acquired_at,
                    now - lt.c.renewed_at,
                ).where(lt.c.name == name)
            ).first()
        if row is None:
            return None
        return LeaseInfo(
            name=name,
            owner=row[0],
            epoch=int(row[1]),
            expires_in=float(row[2]),
            held_for=None if row[3] is None else float(row[3]),
            renewed_ago=None if row[4] is None else float(row[4]),
        )
