"""What only PostgreSQL offers the store: the seq list as one array parameter, the fence and the
completion as one statement, psycopg 3's own cursor for the hot statements, and the wake-up on
commit (LISTEN/NOTIFY). The portable statements are in `leases`, `reads`, `marks`, `admin`."""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql

from outbox.relay.store.executor import Executor
from outbox.relay.store.leases import Lease, Leases, lease_lost
from outbox.relay.store.waker import Waker

logger = logging.getLogger("outbox.relay.store")


def seq_in_array(table: sa.Table) -> sa.ColumnElement[bool]:
    """`seq = ANY(:seqs)`: a list of seqs as one array parameter."""
    return table.c.seq == sa.any_(sa.bindparam("seqs", type_=postgresql.ARRAY(sa.BigInteger())))


def partition_in_array(table: sa.Table) -> sa.ColumnElement[bool]:
    """`p_partition = ANY(:partitions)`: the partitions a relay holds as one array parameter."""
    return table.c.p_partition == sa.any_(
        sa.bindparam("partitions", type_=postgresql.ARRAY(sa.SmallInteger()))
    )


class FencedCompletion:
    """The fence and the completion as one autocommit statement, one round trip instead of four
    (BEGIN, fence, delete, COMMIT) on the relay's hot path.

    ``WITH fence AS (UPDATE lease ... RETURNING epoch), change AS (DELETE FROM outbox WHERE
    ... AND EXISTS (SELECT FROM fence)) SELECT count(*) FROM fence``: PostgreSQL runs every
    data-modifying CTE once, to completion, in one snapshot. The lease row's lock is held to
    the statement's end, as it was to the transaction's end, and a takeover committed
    meanwhile makes the UPDATE (re-checked on the new row version) match nothing, so
    nothing is deleted and the count is 0."""

    def __init__(
        self,
        executor: Executor,
        leases: Leases,
        completion: Callable[[sa.ColumnElement[bool], bool], sa.Delete | sa.Update],
    ) -> None:
        self._executor = executor
        self._leases = leases
        self._completion = completion
        self._statements: dict[tuple[sa.ColumnElement[bool], bool], sa.Select[Any]] = {}

    def complete(
        self,
        lease: Lease,
        ttl: float,
        where: sa.ColumnElement[bool],
        params: dict[str, Any],
        retain: bool,
    ) -> None:
        """Complete the rows `where` (`params`: its parameters, and `published_at` when
        retaining) if `lease` is still ours; else raise `LeaseLostError`, changing nothing."""
        values = {**params, **self._leases.params(lease, ttl)}
        if self._executor.rows(self.statement(where, retain), values)[0][0] != 1:
            raise lease_lost(lease)

    def statement(self, where: sa.ColumnElement[bool], retain: bool) -> sa.Select[Any]:
        """The statement for one shape of seq condition, built once."""
        statement = self._statements.get((where, retain))
        if statement is None:
            fence = self._leases.renewal.returning(self._leases.table.c.epoch).cte("fence")
            change = self._completion(sa.and_(where, sa.exists(sa.select(fence.c.epoch))), retain)
            statement = sa.select(sa.func.count()).select_from(fence).add_cte(change.cte("change"))
            self._statements[(where, retain)] = self._executor.hot(statement)
        return statement


def psycopg_cursor(engine: sa.Engine) -> PsycopgCursor | None:
    """The driver's own path for `engine`'s hot statements, where there is one: psycopg 3."""
    dialect = engine.dialect
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        return PsycopgCursor(engine)
    return None


class PsycopgCursor:
    """Hot statements compiled once and run on psycopg 3's own cursor (an `executor.DirectPath`).

    SQLAlchemy's work per execution (about 0.3 ms of CPU here, several times the database's) was
    the relay's largest cost at a low event rate. The driver's errors are raised as SQLAlchemy's."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        #: Registered statements, compiled, with their parameters' converters.
        self.compiled: dict[sa.Select[Any], tuple[sa.Compiled, dict[str, Any]]] = {}

    def register(self, statement: sa.Select[Any]) -> None:
        """Compile `statement` now, unless its rows need SQLAlchemy's conversion (none of the
        outbox's column types do on psycopg 3): then it keeps running through SQLAlchemy."""
        dialect = self._engine.dialect
        if any(
            c.type.dialect_impl(dialect).result_processor(dialect, None)
            for c in statement.selected_columns
        ):
            return
        compiled = statement.compile(dialect=dialect)
        converters = {
            name: convert
            for name, bind in compiled.binds.items()
            if (convert := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        self.compiled[statement] = (compiled, converters)

    def rows(
        self, statement: sa.Select[Any], values: dict[str, Any]
    ) -> Sequence[Sequence[Any]] | None:
        """The rows of a registered statement in autocommit; None if it is not registered."""
        hot = self.compiled.get(statement)
        if hot is None:
            return None
        compiled, converters = hot
        dialect = self._engine.dialect
        sql, params = compiled.string, dict(compiled.construct_params(values) or {})
        for name, convert in converters.items():
            params[name] = convert(params[name])
        try:
            raw = self._engine.raw_connection()
        except dialect.loaded_dbapi.Error as error:
            # The pool hands out the driver's own error when connecting fails (server down,
            # connection refused): wrapped like SQLAlchemy's, so that it is seen as transient.
            raise exc.DBAPIError.instance(
                sql,
                params,
                error,
                dialect.loaded_dbapi.Error,
                connection_invalidated=True,
                dialect=dialect,
            ) from error
        driver: Any = raw.driver_connection
        try:
            driver.autocommit = True  # one statement: no BEGIN/COMMIT round trips
            # Results in the binary format: no hex for the payload (bytea), a timestamp or uuid
            # loaded from its 8 or 16 bytes instead of parsed; about a quarter of the read's CPU.
            # The same Python values as text (every column type here has a binary loader).
            with driver.cursor(binary=True) as cursor:
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
