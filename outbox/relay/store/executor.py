"""How the store's statements reach the database: a write is one short transaction, a read runs
outside any transaction, and a hot statement (one the relay runs for every batch, built once)
may take a faster path that a driver offers (`DirectPath`; psycopg 3's cursor, see
`postgresql.PsycopgCursor`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa


class DirectPath(Protocol):
    """Runs registered statements outside any transaction without SQLAlchemy's execution.

    Contract: `rows` returns the same rows SQLAlchemy would, raises SQLAlchemy's exceptions
    (`DBAPIError` and its subclasses, with `connection_invalidated` set on a disconnect), leaves
    the pool as SQLAlchemy expects it, and returns None for a statement it did not register."""

    def register(self, statement: sa.Select[Any]) -> None: ...

    def rows(
        self, statement: sa.Select[Any], values: dict[str, Any]
    ) -> Sequence[Sequence[Any]] | None: ...


class Executor:
    """The connections of one store: its engine, its transactions and its hot statements."""

    def __init__(self, engine: sa.Engine, direct: DirectPath | None = None) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        #: None where the driver offers no faster path: every statement runs through SQLAlchemy.
        self.direct = direct

    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """One transaction that takes the write lock up front (SQLite: `BEGIN IMMEDIATE`)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(outbox_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                # No BEGIN / ROLLBACK round trips around a single SELECT (psycopg switches
                # autocommit locally); one round trip per read on the relay's hot path.
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn
            # Ends the read transaction at once, so no snapshot or lock outlives the read.
            conn.rollback()

    def hot(self, statement: sa.Select[Any]) -> sa.Select[Any]:
        """Register a statement the relay runs for every batch (built once and kept by the
        caller) with the driver's path, if there is one; returns the statement."""
        if self.direct is not None:
            self.direct.register(statement)
        return statement

    def rows(self, statement: sa.Select[Any], values: dict[str, Any]) -> Sequence[Sequence[Any]]:
        """The rows of a statement run outside any transaction (PostgreSQL: autocommit)."""
        if self.direct is not None:
            rows = self.direct.rows(statement, values)
            if rows is not None:
                return rows
        with self.read() as conn:
            return conn.execute(statement, values).all()


def now() -> datetime:
    return datetime.now(UTC)


def utc(value: datetime) -> datetime:
    """Drivers without time zone support (SQLite, MySQL) return naive UTC datetimes."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
