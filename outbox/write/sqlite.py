"""`fix_sqlite_transactions`: make SAVEPOINT work on SQLite, so that savepoints roll back right.

Separate from the hooks: it configures an engine, not a session, and is needed by any SQLite
application using ``begin_nested()`` whether or not it writes events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy import event as sa_event

from outbox.errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


def fix_sqlite_transactions(engine: sa.Engine | AsyncEngine) -> None:
    """Make SAVEPOINT (``begin_nested``) work on SQLite (pysqlite and aiosqlite). Idempotent.

    pysqlite's legacy transaction handling emits no BEGIN before a first-statement SAVEPOINT, so
    a savepoint's rows can survive the outer rollback. This applies the fix from SQLAlchemy's
    SQLite dialect documentation ("Serializable isolation / Savepoints / Transactional DDL"):
    disable the driver's own transaction handling (``isolation_level = None``) and emit ``BEGIN``
    from the engine's ``begin`` event. Raises `ConfigurationError` for a non-SQLite engine.
    """
    sync_engine = cast(sa.Engine, getattr(engine, "sync_engine", engine))
    if sync_engine.dialect.name != "sqlite":
        raise ConfigurationError(
            f"fix_sqlite_transactions() is for SQLite engines, not {sync_engine.dialect.name}"
        )
    if not sa_event.contains(sync_engine, "connect", _sqlite_no_driver_transactions):
        sa_event.listen(sync_engine, "connect", _sqlite_no_driver_transactions)
    if not sa_event.contains(sync_engine, "begin", _sqlite_begin):
        sa_event.listen(sync_engine, "begin", _sqlite_begin)
    # Connections already pooled were opened without the connect hook.
    sync_engine.dispose()


def _sqlite_no_driver_transactions(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection: sa.Connection) -> None:
    connection.exec_driver_sql("BEGIN")
