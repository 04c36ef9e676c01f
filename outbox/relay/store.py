"""All SQL the relay and the operator tools run: reading pending events, marking them, parking,
the lease that elects one active relay per table, status, requeue, purge and the wake-up.

Every write that follows a publish is fenced: it runs in one transaction with an UPDATE of the
lease row that matches only while this relay still holds the lease with the same epoch, by the
database's clock. A relay that was paused past its lease therefore cannot mark anything.
"""

from __future__ import annotations

import functools
import itertools
import logging
import select
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from outbox.config import mask_url, parse_db_url
from outbox.errors import ConfigurationError, LeaseLostError, TableMissingError
from outbox.relay.records import ParkedEvent, PendingEvent, Status
from outbox.schema.tables import build_lease_table, build_outbox_table, notify_channel

logger = logging.getLogger("outbox.relay.store")

LEASE_NAME = "relay"
#: `fetch_after`'s default count limit: no limit.
COUNT_ALL = 2**31 - 1


class db_epoch(FunctionElement[float]):
    """Seconds since the epoch by the database's clock: leases never trust a relay's clock."""

    type = sa.Double()
    inherit_cache = True


@compiles(db_epoch, "postgresql")
def _pg_epoch(element: db_epoch, compiler: Any, **kw: Any) -> str:
    # clock_timestamp(), not now(): now() is frozen at the start of the transaction.
    return "extract(epoch from clock_timestamp())"


@compiles(db_epoch, "mysql")
@compiles(db_epoch, "mariadb")
def _mysql_epoch(element: db_epoch, compiler: Any, **kw: Any) -> str:
    return "unix_timestamp(sysdate(6))"


@compiles(db_epoch, "sqlite")
def _sqlite_epoch(element: db_epoch, compiler: Any, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to publish, held until the database's clock passes its expiry."""

    name: str
    owner: str
    epoch: int


def create_relay_engine(db_url: str) -> sa.Engine:
    """An engine tuned for the relay: short transactions, READ COMMITTED on MySQL/MariaDB
    (REPEATABLE READ would take gap locks that block the application's inserts), WAL and
    `BEGIN IMMEDIATE` for writes on SQLite (a deferred transaction that upgrades to a write
    fails at once with SQLITE_BUSY instead of waiting)."""
    url = parse_db_url(db_url)
    backend = url.get_backend_name()
    kwargs: dict[str, Any] = {"pool_size": 3, "max_overflow": 2, "pool_recycle": 1800}
    if backend in ("mysql", "mariadb"):
        kwargs["isolation_level"] = "READ COMMITTED"
    if backend == "sqlite":
        kwargs = {"connect_args": {"timeout": 30, "isolation_level": None}}
    try:
        engine = sa.create_engine(url, **kwargs)
    except (exc.ArgumentError, ImportError) as e:
        raise ConfigurationError(f"cannot use database URL {mask_url(url)}: {e}") from None
    if backend == "sqlite":
        _sqlite_setup(engine)
    return engine


def _sqlite_setup(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # The driver runs in autocommit mode (isolation_level=None); SQLAlchemy's documented
        # recipe emits BEGIN itself. Writes take the write lock up front.
        write = conn.get_execution_options().get("outbox_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def is_transient_db_error(error: BaseException) -> bool:
    """True for connection loss, restarts and timeouts: worth retrying. False for a wrong
    password, a missing database or table: retrying cannot help, the user must act."""
    if not isinstance(error, exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    text = str(error.orig).lower() if error.orig is not None else str(error).lower()
    fatal = (
        "password authentication failed",
        "access denied",
        "does not exist",
        "unknown database",
        "no such table",
        "doesn't exist",
        "authentication",
    )
    if any(marker in text for marker in fatal):
        return False
    return isinstance(error, exc.OperationalError | exc.InterfaceError)


class OutboxStore:
    """The relay's view of one outbox table."""

    def __init__(self, engine: sa.Engine, table: str = "outbox", schema: str | None = None) -> None:
        self.engine = engine
        metadata = sa.MetaData()
        self.table = build_outbox_table(metadata, table, schema)
        self.lease_table = build_lease_table(metadata, table, schema)
        self.channel = notify_channel(table, schema)
        self.dialect = engine.dialect.name
        t = self.table
        self._columns = (
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
        )
        self._partition_key = sa.func.coalesce(t.c.key, t.c.aggregateid)
        self._pending = sa.and_(t.c.published_at.is_(None), t.c.parked_at.is_(None))
        self._seq_range = t.c.seq.between(sa.bindparam("seq_lo"), sa.bindparam("seq_hi"))
        self._seq_any: sa.ColumnElement[bool] | None = None
        # Statements of the relay's hot path, built once (see _fetch_query).
        self._fetch_queries: dict[tuple[int, bool], sa.Select[Any]] = {}
        self._fenced_completions: dict[tuple[sa.ColumnElement[bool], bool], sa.Select[Any]] = {}
        # Hot-path statements compiled for psycopg 3, with their parameters' converters; see _rows.
        self._compiled: dict[sa.Select[Any], tuple[sa.Compiled, dict[str, Any]]] | None = (
            {}
            if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
            else None
        )
        if self.dialect == "postgresql":
            self._seq_any = t.c.seq == sa.any_(
                sa.bindparam("seqs", type_=postgresql.ARRAY(sa.BigInteger()))
            )

    @classmethod
    def from_url(cls, db_url: str, table: str = "outbox", schema: str | None = None) -> OutboxStore:
        return cls(create_relay_engine(db_url), table, schema)

    def dispose(self) -> None:
        self.engine.dispose()

    @property
    def supports_notify(self) -> bool:
        return self.dialect == "postgresql"

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(outbox_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                # No BEGIN / ROLLBACK round trips around a single SELECT (psycopg switches
                # autocommit locally); one round trip per read on the relay's hot path.
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn
            # Ends the read transaction at once, so no snapshot or lock outlives the read.
            conn.rollback()

    def _hot(self, statement: sa.Select[Any]) -> sa.Select[Any]:
        """Register a statement the relay runs for every batch (built once, kept): on psycopg 3
        it is compiled now and run on the driver's cursor by `_rows`, unless its rows need
        SQLAlchemy's conversion (none of the outbox's column types do on psycopg 3)."""
        if self._compiled is None:
            return statement
        dialect = self.engine.dialect
        if any(
            c.type.dialect_impl(dialect).result_processor(dialect, None)
            for c in statement.selected_columns
        ):
            return statement
        compiled = statement.compile(dialect=dialect)
        converters = {
            name: convert
            for name, bind in compiled.binds.items()
            if (convert := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        self._compiled[statement] = (compiled, converters)
        return statement

    def _rows(self, statement: sa.Select[Any], values: dict[str, Any]) -> Sequence[Sequence[Any]]:
        """The rows of a statement run outside any transaction (PostgreSQL: autocommit).

        A `_hot` statement on psycopg 3 runs on the driver's own cursor: SQLAlchemy's work per
        execution (about 0.3 ms of CPU here, several times the database's) was the relay's
        largest cost at a low event rate. The driver's errors are raised as SQLAlchemy's."""
        hot = self._compiled.get(statement) if self._compiled is not None else None
        if hot is None:
            with self._read() as conn:
                return conn.execute(statement, values).all()
        compiled, converters = hot
        dialect = self.engine.dialect
        sql, params = compiled.string, dict(compiled.construct_params(values) or {})
        for name, convert in converters.items():
            params[name] = convert(params[name])
        raw = self.engine.raw_connection()
        driver: Any = raw.driver_connection
        try:
            driver.autocommit = True  # one statement: no BEGIN/COMMIT round trips
            with driver.cursor() as cursor:
                cursor.execute(sql, params)
                rows: Sequence[Sequence[Any]] = cursor.fetchall()
            driver.autocommit = False  # back to the pool as SQLAlchemy expects it
            return rows
        except BaseException as error:
            failed = isinstance(error, dialect.loaded_dbapi.Error)
            # Asked before the invalidation below closes the connection.
            broken = failed and dialect.is_disconnect(error, driver, None)  # type: ignore[arg-type]
            # Never back to the pool in autocommit, nor in an unknown state.
            raw.invalidate(error if isinstance(error, Exception) else None)
            if not failed:
                raise
            raise exc.DBAPIError.instance(
                sql,
                params,
                error,
                dialect.loaded_dbapi.Error,
                connection_invalidated=broken,
                dialect=dialect,
            ) from error
        finally:
            raw.close()

    # -- checks ----------------------------------------------------------------------------

    def check_table(self) -> None:
        """Raise `TableMissingError` unless both outbox tables exist."""
        inspector = sa.inspect(self.engine)
        for table in (self.table, self.lease_table):
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
            with self._read() as conn:
                conn.execute(sa.select(1))
            return True
        except exc.DBAPIError:
            return False

    # -- the lease -------------------------------------------------------------------------

    def try_acquire(self, owner: str, ttl: float, name: str = LEASE_NAME) -> Lease | None:
        """Take the lease if it is free, expired or already ours; None if another relay holds it.

        Taking it bumps the epoch, which fences out every earlier holder."""
        lt = self.lease_table
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
            )
        )
        for _ in range(2):
            with self._write() as conn:
                if conn.execute(take).rowcount == 1:
                    epoch = conn.execute(
                        sa.select(lt.c.epoch).where(lt.c.name == name, lt.c.owner == owner)
                    ).scalar_one()
                    return Lease(name, owner, int(epoch))
                exists = conn.execute(sa.select(lt.c.name).where(lt.c.name == name)).first()
            if exists is not None:
                return None
            try:
                with self._write() as conn:
                    conn.execute(sa.insert(lt).values(name=name, owner=None, epoch=0, expires_at=0))
            except exc.IntegrityError:
                pass  # another relay created the row first
        return None

    @functools.cached_property
    def _renewal(self) -> sa.Update:
        """The UPDATE that renews a lease if it is still ours (and unexpired), built once: the
        relay runs it with every completion. Parameters: `_lease_params`."""
        lt = self.lease_table
        return (
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

    @staticmethod
    def _lease_params(lease: Lease, ttl: float) -> dict[str, Any]:
        return {
            "lease_name": lease.name,
            "lease_owner": lease.owner,
            "lease_epoch": lease.epoch,
            "lease_ttl": float(ttl),
        }

    def _fence(self, conn: sa.Connection, lease: Lease, ttl: float) -> None:
        """Renew the lease inside `conn`'s transaction, or raise `LeaseLostError`.

        The row lock taken here also serializes this transaction against a takeover."""
        if conn.execute(self._renewal, self._lease_params(lease, ttl)).rowcount != 1:
            raise _lease_lost(lease)

    def renew(self, lease: Lease, ttl: float) -> None:
        """Extend the lease; raise `LeaseLostError` if it was lost."""
        with self._write() as conn:
            self._fence(conn, lease, ttl)

    def release(self, lease: Lease) -> None:
        """Give the lease up at once so that a standby takes over without waiting for expiry."""
        lt = self.lease_table
        with self._write() as conn:
            conn.execute(
                sa.update(lt)
                .where(
                    lt.c.name == lease.name, lt.c.owner == lease.owner, lt.c.epoch == lease.epoch
                )
                .values(owner=None, expires_at=0)
            )

    def lease_holder(self, name: str = LEASE_NAME) -> tuple[str | None, int, float] | None:
        """(owner, epoch, seconds until expiry) of the lease, or None if never taken."""
        lt = self.lease_table
        with self._read() as conn:
            row = conn.execute(
                sa.select(lt.c.owner, lt.c.epoch, lt.c.expires_at - db_epoch()).where(
                    lt.c.name == name
                )
            ).first()
        if row is None:
            return None
        return row[0], int(row[1]), float(row[2])

    # -- reading and marking ---------------------------------------------------------------

    def parked_keys(self) -> frozenset[str]:
        """Keys whose later events wait until their parked event is requeued or dropped."""
        t = self.table
        with self._read() as conn:
            rows = conn.execute(
                sa.select(self._partition_key)
                .where(t.c.parked_at.is_not(None), t.c.published_at.is_(None))
                .distinct()
            ).scalars()
            # A NULL key (a row broken by hand) cannot be excluded by NOT IN: skip it.
            return frozenset(key for key in rows if key is not None)

    def fetch_pending(
        self, limit: int, exclude_keys: Collection[str] = frozenset()
    ) -> list[PendingEvent]:
        """Up to `limit` pending events in insert order, leaving out events of `exclude_keys`.
        No row locks: only the lease holder reads to publish."""
        rows = self._rows(self._fetch_query(limit, exclude_keys, after=False), {})
        return [_pending_event(r) for r in rows]

    def fetch_after(
        self,
        after_seq: int,
        limit: int,
        exclude_keys: Collection[str] = frozenset(),
        *,
        count_limit: int = COUNT_ALL,
    ) -> tuple[list[PendingEvent], int]:
        """Up to `limit` pending events after `after_seq`, and how many pending events have a
        seq up to `after_seq` (counted up to `count_limit`; by default all), both from one
        statement (one snapshot, one round trip).

        A read after a seq can miss a lower seq whose transaction committed late; the relay
        compares the count with the events it has in flight before it sends what it read, so it
        needs no count beyond one more than those. Capped, the count walks the primary key from
        the first pending row and stops; an uncapped one was planned as a scan of the whole table
        (48 ms at a million rows, on every read)."""
        rows = self._rows(
            self._fetch_query(limit, exclude_keys, after=True),
            {"after_seq": after_seq, "count_limit": count_limit},
        )
        return [_pending_event(r) for r in rows], rows[0][-1] if rows else 0

    def _fetch_query(
        self, limit: int, exclude_keys: Collection[str], *, after: bool
    ) -> sa.Select[Any]:
        """The read of pending events, with `after`: those after :after_seq plus the count of
        those up to it. Built once per shape when no key is excluded (the usual case), so that
        SQLAlchemy neither rebuilds it nor recomputes its cache key on the hot path."""
        # NOT IN with a NULL in the list matches nothing: a NULL key (a row broken by hand) is
        # never excluded by key; its row is parked instead.
        keys = tuple(sorted(key for key in exclude_keys if key is not None))
        cached = self._fetch_queries.get((limit, after)) if not keys else None
        if cached is not None:
            return cached
        t = self.table
        query = (
            self._pending_query(keys)
            .with_only_columns(*self._columns)
            .order_by(t.c.seq)
            .limit(limit)
        )
        if after:
            after_seq = sa.bindparam("after_seq", type_=t.c.seq.type)
            up_to = (
                self._pending_query(keys)
                .where(t.c.seq <= after_seq)
                .order_by(t.c.seq)
                .limit(sa.bindparam("count_limit", type_=sa.Integer()))
                .subquery("up_to")
            )
            below = sa.select(sa.func.count()).select_from(up_to).scalar_subquery()
            query = query.where(t.c.seq > after_seq).add_columns(below)
        if not keys:
            self._fetch_queries[(limit, after)] = self._hot(query)
        return query

    def _pending_query(self, keys: Sequence[str]) -> sa.Select[Any]:
        """Pending events outside `keys` (already normalized by `_fetch_query`)."""
        query = sa.select(self.table.c.seq).where(self._pending)
        if keys:
            query = query.where(self._partition_key.not_in(keys))
        return query

    def complete(self, lease: Lease, ttl: float, seqs: Sequence[int], retain: bool = False) -> None:
        """Delete (or, when retaining, stamp) published events, fenced by the lease."""
        if not seqs:
            return
        if self.dialect == "postgresql":
            self._complete_in_one_statement(lease, ttl, seqs, retain)
            return
        with self._write() as conn:
            self._fence(conn, lease, ttl)
            for where, params in self._seq_conditions(seqs):
                if retain:
                    params = {**params, "published_at": _now()}
                conn.execute(self._completion(where, retain), params)

    def _completion(self, where: sa.ColumnElement[bool], retain: bool) -> sa.Delete | sa.Update:
        t = self.table
        if retain:
            stamp = sa.bindparam("published_at", type_=t.c.published_at.type)
            return sa.update(t).where(where).values(published_at=stamp)
        return sa.delete(t).where(where)

    def _complete_in_one_statement(
        self, lease: Lease, ttl: float, seqs: Sequence[int], retain: bool
    ) -> None:
        """PostgreSQL: the fence and the delete as one autocommit statement, one round trip
        instead of four (BEGIN, fence, delete, COMMIT) on the relay's hot path.

        ``WITH fence AS (UPDATE lease ... RETURNING epoch), change AS (DELETE FROM outbox WHERE
        ... AND EXISTS (SELECT FROM fence)) SELECT count(*) FROM fence``: PostgreSQL runs every
        data-modifying CTE once, to completion, in one snapshot. The lease row's lock is held to
        the statement's end, as it was to the transaction's end, and a takeover committed
        meanwhile makes the UPDATE (re-checked on the new row version) match nothing, so
        nothing is deleted and the count is 0."""
        ((where, params),) = self._seq_conditions(seqs)  # one condition on PostgreSQL
        statement = self._fenced_completion(where, retain)
        params = {**params, **self._lease_params(lease, ttl)}
        if retain:
            params["published_at"] = _now()
        if self._rows(statement, params)[0][0] != 1:
            raise _lease_lost(lease)

    def _fenced_completion(self, where: sa.ColumnElement[bool], retain: bool) -> sa.Select[Any]:
        """The statement of `_complete_in_one_statement` for one shape of seq condition."""
        statement = self._fenced_completions.get((where, retain))
        if statement is None:
            fence = self._renewal.returning(self.lease_table.c.epoch).cte("fence")
            change = self._completion(sa.and_(where, sa.exists(sa.select(fence.c.epoch))), retain)
            statement = sa.select(sa.func.count()).select_from(fence).add_cte(change.cte("change"))
            self._fenced_completions[(where, retain)] = self._hot(statement)
        return statement

    def _seq_conditions(
        self, seqs: Sequence[int]
    ) -> Iterator[tuple[sa.ColumnElement[bool], dict[str, Any]]]:
        """WHERE clauses (with their parameters) that match exactly the rows `seqs`.

        A sorted run of consecutive seqs is one range: seq is the primary key, so no other row
        can fall inside it. Otherwise PostgreSQL takes the list as one array parameter (no
        per-item placeholders to render and bind); the others get IN lists of 1,000."""
        if seqs[-1] - seqs[0] + 1 == len(seqs) and all(
            b - a == 1 for a, b in itertools.pairwise(seqs)
        ):
            yield self._seq_range, {"seq_lo": seqs[0], "seq_hi": seqs[-1]}
        elif self._seq_any is not None:
            yield self._seq_any, {"seqs": list(seqs)}
        else:
            for chunk in _chunks(seqs, 1000):
                yield self.table.c.seq.in_(chunk), {}

    def record_rejections(
        self,
        lease: Lease,
        ttl: float,
        rejections: Sequence[tuple[int, str]],
        max_attempts: int,
        park_now: bool = False,
    ) -> list[int]:
        """Count a failed attempt for each (seq, error); park those out of attempts (or all, with
        `park_now`, for rows that can never be sent). Returns the seqs parked."""
        if not rejections:
            return []
        t = self.table
        parked: list[int] = []
        now = _now()
        with self._write() as conn:
            self._fence(conn, lease, ttl)
            for seq, error in rejections:
                attempts = conn.execute(
                    sa.select(t.c.attempts).where(t.c.seq == seq)
                ).scalar_one_or_none()
                if attempts is None:
                    continue
                attempts += 1
                park = park_now or attempts >= max_attempts
                conn.execute(
                    sa.update(t)
                    .where(t.c.seq == seq)
                    .values(
                        attempts=attempts,
                        last_error=error[:2000],
                        parked_at=now if park else None,
                    )
                )
                if park:
                    parked.append(seq)
        return parked

    # -- operator tools --------------------------------------------------------------------

    def status(self) -> Status:
        t = self.table
        with self._read() as conn:
            pending, oldest = conn.execute(
                sa.select(sa.func.count(), sa.func.min(t.c.created_at)).where(self._pending)
            ).one()
            failed = conn.execute(
                sa.select(sa.func.count()).where(
                    t.c.parked_at.is_not(None), t.c.published_at.is_(None)
                )
            ).scalar_one()
        age = None
        if oldest is not None:
            age = max(0.0, (datetime.now(UTC) - _utc(oldest)).total_seconds())
        return Status(pending=int(pending), oldest_pending_age_seconds=age, failed=int(failed))

    def list_parked(self, limit: int = 100) -> list[ParkedEvent]:
        t = self.table
        with self._read() as conn:
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
                .where(t.c.parked_at.is_not(None), t.c.published_at.is_(None))
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
                created_at=_utc(r[9]),
                parked_at=_utc(r[10]),
            )
            for r in rows
        ]

    def _parked_where(self, ids: Sequence[uuid.UUID] | None) -> sa.ColumnElement[bool]:
        t = self.table
        cond = sa.and_(t.c.parked_at.is_not(None), t.c.published_at.is_(None))
        if ids is not None:
            cond = sa.and_(cond, t.c.id.in_(list(ids)))
        return cond

    def requeue(self, ids: Sequence[uuid.UUID] | None = None) -> int:
        """Put parked events (all when `ids` is None) back in line, in their original place."""
        t = self.table
        with self._write() as conn:
            return conn.execute(
                sa.update(t)
                .where(self._parked_where(ids))
                .values(parked_at=None, attempts=0, last_error=None)
            ).rowcount

    def drop(self, ids: Sequence[uuid.UUID] | None = None) -> int:
        """Delete parked events (all when `ids` is None): they will never be published."""
        with self._write() as conn:
            return conn.execute(sa.delete(self.table).where(self._parked_where(ids))).rowcount

    def purge(self, older_than: float, batch_size: int = 1000) -> int:
        """Delete retained published events older than `older_than` seconds, in short batches
        so that no long lock is held on a busy table."""
        t = self.table
        cutoff = datetime.fromtimestamp(time.time() - older_than, UTC)
        total = 0
        while True:
            with self._write() as conn:
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

    # -- wake-up ---------------------------------------------------------------------------

    def waker(self) -> Waker:
        """A wake-up on commit where the database offers one (PostgreSQL LISTEN), else a timer."""
        if self.supports_notify:
            return PostgresWaker(self.engine, self.channel)
        return Waker()


class Waker:
    """Waits for new events. This one simply sleeps: polling is the fallback everywhere."""

    def __init__(self) -> None:
        self._interrupt = threading.Event()

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds; True when woken early."""
        woken = self._interrupt.wait(timeout)
        self._interrupt.clear()
        return woken

    def interrupt(self) -> None:
        self._interrupt.set()

    def close(self) -> None:
        self.interrupt()


class PostgresWaker(Waker):
    """LISTEN on the table's channel: the application's transaction NOTIFYs at commit.

    A notification is only a hint (no replay; lost while disconnected), so the relay still
    polls; a broken listening connection is reopened on the next wait.
    """

    def __init__(self, engine: sa.Engine, channel: str) -> None:
        super().__init__()
        self._engine = engine
        self._channel = channel
        self._conn: Any = None

    def _listen(self) -> Any:
        if self._conn is None:
            raw = self._engine.raw_connection()
            driver: Any = raw.driver_connection
            try:
                driver.autocommit = True
                cursor = driver.cursor()
                cursor.execute(f'LISTEN "{self._channel}"')
                cursor.close()
            except Exception:
                raw.invalidate()
                raise
            self._raw = raw
            self._conn = driver
        return self._conn

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        try:
            conn = self._listen()
        except Exception:
            return super().wait(timeout)
        try:
            while True:
                if self._drain(conn):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._interrupt.is_set():
                    self._interrupt.clear()
                    return False
                # Wake at the latest every 50 ms to notice a stop request.
                select.select([conn.fileno()], [], [], min(remaining, 0.05))
        except Exception as error:
            logger.debug("LISTEN connection lost (%s); polling until it is reopened", error)
            self._close_conn()
            return False

    @staticmethod
    def _drain(conn: Any) -> bool:
        """Consume pending notifications without blocking (psycopg 3 or psycopg2)."""
        if hasattr(conn, "poll"):  # psycopg2
            conn.poll()
            got = bool(conn.notifies)
            conn.notifies.clear()
            return got
        got = False
        for _ in conn.notifies(timeout=0):
            got = True
        return got

    def _close_conn(self) -> None:
        if self._conn is not None:
            with suppress(Exception):  # already broken
                self._raw.invalidate()
            self._conn = None

    def close(self) -> None:
        super().close()
        self._close_conn()


def _pending_event(r: Sequence[Any]) -> PendingEvent:
    return PendingEvent(
        seq=r[0],
        id=r[1],
        aggregatetype=r[2],
        aggregateid=r[3],
        type=r[4],
        payload=r[5],
        topic=r[6],
        key=r[7],
        headers=r[8],
        created_at=_utc(r[9]),
        attempts=r[10],
    )


def _lease_lost(lease: Lease) -> LeaseLostError:
    return LeaseLostError(f"lease {lease.name!r} epoch {lease.epoch} is no longer ours")


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    """Drivers without time zone support (SQLite, MySQL) return naive UTC datetimes."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
