"""`OutboxStore`, the one object through which the relay and the CLI reach one outbox table. It
holds no SQL of its own beyond two checks: it builds the tables and composes the roles, and each
method hands over to one of them."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence

import sqlalchemy as sa
from sqlalchemy import exc

from outbox._urls import check_sqlite_file
from outbox.errors import TableMissingError
from outbox.relay.records import LeaseInfo, Member, ParkedEvent, PendingEvent, Status
from outbox.relay.store.admin import Admin
from outbox.relay.store.engine import create_relay_engine
from outbox.relay.store.executor import Executor
from outbox.relay.store.leases import LEASE_NAME, Lease, Leases
from outbox.relay.store.marks import Marks
from outbox.relay.store.members import Members
from outbox.relay.store.postgresql import PostgresWaker, psycopg_cursor
from outbox.relay.store.reads import COUNT_ALL, EventReads
from outbox.relay.store.waker import Waker
from outbox.schema.tables import (
    build_lease_table,
    build_members_table,
    build_outbox_table,
    notify_channel,
)


class OutboxStore:
    """The relay's view of one outbox table.

    Its roles, each usable alone: `executor` (connections and transactions), `leases` (the
    lease table: election and fencing), `members` (the relays table: heartbeats), `reads`
    (pending events), `marks` (completions and rejections, fenced), `admin` (the operator's
    tools)."""

    def __init__(self, engine: sa.Engine, table: str = "outbox", schema: str | None = None) -> None:
        self.engine = engine
        metadata = sa.MetaData()
        self.table = build_outbox_table(metadata, table, schema)
        self.lease_table = build_lease_table(metadata, table, schema)
        self.members_table = build_members_table(metadata, table, schema)
        self.channel = notify_channel(table, schema)
        self.dialect = engine.dialect.name
        self.executor = Executor(engine, psycopg_cursor(engine))
        self.leases = Leases(self.executor, self.lease_table)
        self.members = Members(self.executor, self.members_table)
        self.reads = EventReads(self.executor, self.table)
        self.marks = Marks(self.executor, self.leases, self.table)
        self.admin = Admin(self.executor, self.table)

    @classmethod
    def from_url(
        cls, db_url: str | sa.URL, table: str = "outbox", schema: str | None = None
    ) -> OutboxStore:
        return cls(create_relay_engine(db_url), table, schema)

    def companion(self) -> OutboxStore | None:
        """The same tables through an engine of its own with one connection (the lease keeper's,
        so that the loop's pool never starves a renewal). None for an in-memory SQLite
        database, which exists only on its own engine (and connection)."""
        url = self.engine.url
        if self.dialect == "sqlite" and url.database in (None, "", ":memory:"):
            return None
        engine = create_relay_engine(url.render_as_string(hide_password=False), pool_size=1)
        return OutboxStore(engine, self.table.name, self.table.schema)

    def dispose(self) -> None:
        self.engine.dispose()

    @property
    def supports_notify(self) -> bool:
        return self.dialect == "postgresql"

    # -- checks ----------------------------------------------------------------------------

    def check_table(self) -> None:
        """Raise `TableMissingError` unless the outbox tables exist (a SQLite file that does
        not exist is not created by looking)."""
        check_sqlite_file(self.engine.url)
        inspector = sa.inspect(self.engine)
        for table in (self.table, self.lease_table, self.members_table):
            if not inspector.has_table(table.name, schema=table.schema):
                where = f"{table.schema}.{table.name}" if table.schema else table.name
                raise TableMissingError(
                    f"table {where} does not exist: run `outbox migrate --db-url URL"
                    + (f" --table {self.table.name}" if self.table.name != "outbox" else "")
                    + (f" --schema {table.schema}" if table.schema else "")
                    + "` or `alembic upgrade heads`"
                )

    def ping(self) -> bool:
        try:
            with self.executor.read() as conn:
                conn.execute(sa.select(1))
            return True
        except exc.DBAPIError:
            return False

    # -- the lease (see `Leases`) ----------------------------------------------------------

    def try_acquire(self, owner: str, ttl: float, name: str = LEASE_NAME) -> Lease | None:
        """Take the lease if free, expired or ours (bumping its epoch); None if held."""
        return self.leases.try_acquire(owner, ttl, name)

    def renew(self, lease: Lease, ttl: float) -> None:
        """Extend the lease; raise `LeaseLostError` if it was lost."""
        self.leases.renew(lease, ttl)

    def release(self, lease: Lease) -> None:
        """Give the lease up at once so that a standby takes over without waiting for expiry."""
        self.leases.release(lease)

    def lease_holder(self, name: str = LEASE_NAME) -> tuple[str | None, int, float] | None:
        """(owner, epoch, seconds until expiry) of the lease, or None if never taken."""
        return self.leases.holder(name)

    def lease_info(self, name: str = LEASE_NAME) -> LeaseInfo | None:
        """The lease row for `outbox status`: holder, epoch, since when, last renewal."""
        return self.leases.info(name)

    # -- membership (see `Members`) --------------------------------------------------------

    def beat(self, relay_id: str, host: str, pid: int, mode: str, ttl: float) -> list[Member]:
        """Record `relay_id`'s heartbeat now (database clock); return the live relays."""
        return self.members.heartbeat(relay_id, host, pid, mode, ttl)

    def live_relays(self, ttl: float) -> list[Member]:
        """The relays that beat within the last `ttl` seconds, oldest first."""
        return self.members.live_members(ttl)

    def leave(self, relay_id: str) -> None:
        """Remove `relay_id` from the live relays (a clean stop)."""
        self.members.remove(relay_id)

    # -- reading and marking (see `EventReads`, `Marks`) -----------------------------------

    def parked_keys(self) -> frozenset[str]:
        """Keys whose later events wait until their parked event is requeued or dropped."""
        return self.reads.parked_keys()

    def fetch_pending(
        self, limit: int, exclude_keys: Collection[str] = frozenset()
    ) -> list[PendingEvent]:
        """Up to `limit` pending events in insert order, leaving out events of `exclude_keys`."""
        return self.reads.fetch_pending(limit, exclude_keys)

    def fetch_after(
        self,
        after_seq: int,
        limit: int,
        exclude_keys: Collection[str] = frozenset(),
        *,
        count_limit: int = COUNT_ALL,
    ) -> tuple[list[PendingEvent], int]:
        """Up to `limit` pending events after `after_seq`, and the count of those up to it."""
        return self.reads.fetch_after(after_seq, limit, exclude_keys, count_limit=count_limit)

    def complete(self, lease: Lease, ttl: float, seqs: Sequence[int], retain: bool = False) -> None:
        """Delete (or, when retaining, stamp) published events, fenced by the lease."""
        self.marks.complete(lease, ttl, seqs, retain)

    def record_rejections(
        self,
        lease: Lease,
        ttl: float,
        rejections: Sequence[tuple[int, str]],
        max_attempts: int,
        park_now: bool = False,
    ) -> list[int]:
        """Count a failed attempt per (seq, error), park those out of attempts (all with
        `park_now`), fenced by the lease. Returns the seqs parked."""
        return self.marks.record_rejections(lease, ttl, rejections, max_attempts, park_now)

    # -- operator tools (see `Admin`) ------------------------------------------------------

    def status(self) -> Status:
        return self.admin.status()

    def list_parked(self, limit: int = 100) -> list[ParkedEvent]:
        return self.admin.list_parked(limit)

    def requeue(self, ids: Sequence[uuid.UUID] | None = None) -> int:
        """Put parked events (all when `ids` is None) back in line, in their original place."""
        return self.admin.requeue(ids)

    def drop(self, ids: Sequence[uuid.UUID] | None = None) -> int:
        """Delete parked events (all when `ids` is None): they will never be published."""
        return self.admin.drop(ids)

    def purge(self, older_than: float, batch_size: int = 1000) -> int:
        """Delete retained published events older than `older_than` seconds, in short batches."""
        return self.admin.purge(older_than, batch_size)

    # -- wake-up ---------------------------------------------------------------------------

    def waker(self) -> Waker:
        """A wake-up on commit where the database offers one (PostgreSQL LISTEN), else a timer."""
        if self.supports_notify:
            return PostgresWaker(self.engine, self.channel)
        return Waker()
