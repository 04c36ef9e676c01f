"""Small statements run on psycopg 3's own cursor, past SQLAlchemy's execution.

SQLAlchemy's work per execution (execution context, cursor wrapping, result) cost 0.1 to 0.9 ms
of CPU per statement here, several times what PostgreSQL spends on the outbox's small
statements. So the statements run for every event (the relay's reads and completions in
`outbox.store`, the write side's one-row INSERT in `outbox.app`) are compiled once by
SQLAlchemy and run on the driver's cursor, on psycopg 3 only. The path keeps SQLAlchemy's
meaning:

- a statement takes it only if SQLAlchemy would convert none of its result columns;
- its parameters get SQLAlchemy's bind converters;
- the driver's errors are raised as SQLAlchemy's `DBAPIError` subclasses, with
  ``connection_invalidated`` set for a lost connection, as SQLAlchemy would raise them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc


def supported(dialect: sa.Dialect) -> bool:
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


@dataclass(frozen=True, slots=True, eq=False)
class DriverStatement:
    """A statement compiled once for one dialect, with the converters of its parameters."""

    compiled: sa.Compiled
    dialect: sa.Dialect
    converters: Mapping[str, Callable[[Any], Any]]

    @property
    def sql(self) -> str:
        return self.compiled.string

    def parameters(self, values: Mapping[str, Any]) -> dict[str, Any]:
        params = dict(self.compiled.construct_params(dict(values)) or {})
        for name, convert in self.converters.items():
            params[name] = convert(params[name])
        return params


def compile_for_driver(statement: sa.Executable, dialect: sa.Dialect) -> DriverStatement | None:
    """`statement` ready for `execute`, or None where SQLAlchemy's execution must run it."""
    if not supported(dialect):
        return None
    selected = getattr(statement, "selected_columns", ())
    if any(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in selected):
        return None
    compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    converters = {
        name: convert
        for name, bind in compiled.binds.items()
        if (convert := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
    }
    return DriverStatement(compiled, dialect, converters)


def execute(
    driver_connection: Any,
    statement: DriverStatement,
    values: Mapping[str, Any],
    *,
    autocommit: bool = False,
    fetch: bool = True,
) -> Sequence[Sequence[Any]]:
    """Run `statement` on a psycopg connection and return its rows (none unless `fetch`).

    With `autocommit`, the one statement runs outside any transaction (no BEGIN and COMMIT
    round trips) and the connection is switched back afterwards, as a pool expects it; the
    caller must discard a connection this raised on. Raises SQLAlchemy's `DBAPIError`s.
    """
    dialect = statement.dialect
    sql, params = statement.sql, statement.parameters(values)
    try:
        if autocommit:
            driver_connection.autocommit = True
        with driver_connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows: Sequence[Sequence[Any]] = cursor.fetchall() if fetch else ()
        if autocommit:
            driver_connection.autocommit = False
        return rows
    except dialect.loaded_dbapi.Error as error:
        broken = dialect.is_disconnect(error, driver_connection, None)
        raise exc.DBAPIError.instance(
            sql,
            params,
            error,
            dialect.loaded_dbapi.Error,
            connection_invalidated=broken,
            dialect=dialect,
        ) from error
