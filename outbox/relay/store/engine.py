"""The relay's connection to its database: the engine and its per-dialect setup, which errors
are worth retrying, and the database's clock (`db_epoch`) that every lease is measured by."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from outbox._urls import resolve_db_url
from outbox.config import mask_url
from outbox.errors import ConfigurationError

logger = logging.getLogger("outbox.relay")


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


class db_now(FunctionElement[Any]):
    """The database's clock as a timestamp (for the relays' heartbeats, which people read)."""

    type = sa.DateTime(timezone=True)
    inherit_cache = True


@compiles(db_now, "postgresql")
def _pg_now(element: db_now, compiler: Any, **kw: Any) -> str:
    return "clock_timestamp()"


@compiles(db_now, "mysql")
@compiles(db_now, "mariadb")
def _mysql_now(element: db_now, compiler: Any, **kw: Any) -> str:
    return "sysdate(6)"


@compiles(db_now, "sqlite")
def _sqlite_now(element: db_now, compiler: Any, **kw: Any) -> str:
    # UTC, with milliseconds (CURRENT_TIMESTAMP has whole seconds only).
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def create_relay_engine(db_url: str | sa.URL, pool_size: int = 3) -> sa.Engine:
    """An engine tuned for the relay: short transactions, READ COMMITTED on MySQL/MariaDB
    (REPEATABLE READ would take gap locks that block the application's inserts), WAL and
    `BEGIN IMMEDIATE` for writes on SQLite (a deferred transaction that upgrades to a write
    fails at once with SQLITE_BUSY instead of waiting). `pool_size` 1: one connection, no
    overflow (the lease keeper's). The application's asyncio URL is used through its
    synchronous driver (`outbox._urls`). No I/O: a missing SQLite file is reported by
    `OutboxStore.check_table`, before the first connection would create it."""
    resolved = resolve_db_url(db_url, must_exist=False)
    if resolved.note is not None:
        logger.info("%s", resolved.note)
    url = resolved.url
    backend = url.get_backend_name()
    kwargs: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": 2 if pool_size > 1 else 0,
        "pool_recycle": 1800,
    }
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
