"""The outbox INSERT sent on the connection's own DBAPI cursor, when nothing would see the
difference.

An event costs the application's transaction one more statement; SQLAlchemy's execution of it
(`Connection.execute`: coercion, compiled-cache lookup, `construct_params`, an execution
context and a result) costs about as much client CPU again as the driver's own execute. The
statement is always the same, so it is compiled here once per dialect, with the type's bind
processors SQLAlchemy itself would apply, and sent with ``cursor.execute`` (one row) or
``cursor.executemany`` (many rows, in order: psycopg pipelines them, pymysql folds them into
multi-row VALUES, sqlite3 loops in C).

It is the same SQL on the same DBAPI connection inside the same transaction, so atomicity is
unchanged. What SQLAlchemy's path adds besides CPU is observable, so `direct_statement` returns
None (use ``Connection.execute``) whenever it could matter: a connection or engine with event
listeners (``before_cursor_execute`` tracing, a SQLite ``begin`` hook), SQL echo/logging, a
``schema_translate_map``, an async or untested driver, or no transaction begun yet. Driver
errors are wrapped in SQLAlchemy's `DBAPIError`, as `Connection.execute` would, and a
disconnect invalidates the connection.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler

#: Drivers whose `execute`/`executemany` the suite runs this path on (the rest use SQLAlchemy).
_DRIVERS = frozenset({"psycopg", "pymysql", "pysqlite"})

_Processor = Callable[[Any], Any]


class DirectStatement:
    """A statement compiled once for one dialect, with its bind processors and constants."""

    def __init__(self, statement: sa.Executable, dialect: sa.Dialect) -> None:
        compiled = cast(SQLCompiler, cast(sa.ClauseElement, statement).compile(dialect=dialect))
        self.sql = compiled.string
        self.dbapi_error: type[Exception] = dialect.loaded_dbapi.Error
        self.dialect = dialect
        self.order: tuple[str, ...] | None = (
            tuple(compiled.positiontup or ()) if compiled.positional else None
        )
        # Values of the statement's own literals (the NOTIFY channel); the caller's fill the rest.
        self.constants = {
            name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required
        }
        processors: list[tuple[str, _Processor]] = []
        for name, bind in compiled.binds.items():
            impl = bind.type.dialect_impl(dialect)
            processor = _json_text(dialect) if isinstance(impl, sa.JSON) else None
            processor = processor or impl.bind_processor(dialect)
            if processor is not None:
                processors.append((name, processor))
        self.processors = tuple(processors)

    def bind(self, params: dict[str, Any], memo: dict[int, Any]) -> Any:
        """`params` (updated in place) as the driver takes them: processed, with the constants,
        in order. `memo` holds processed dicts (JSON) by the identity of the dict, for one
        call: the rows of a snapshot chunk share one headers dict."""
        if self.constants:
            params.update(self.constants)
        for name, processor in self.processors:
            value = params[name]
            if type(value) is not dict:
                params[name] = processor(value)
                continue
            done = memo.get(id(value))
            if done is None:
                done = memo[id(value)] = (value, processor(value))
            params[name] = done[1]
        if self.order is None:
            return params
        return tuple(params[name] for name in self.order)

    def execute(self, connection: sa.Connection, params: Sequence[dict[str, Any]]) -> None:
        """Send one row with ``execute``, several with ``executemany``, on `connection`'s cursor.
        The parameter dicts are consumed."""
        memo: dict[int, Any] = {}  # keeps each value alive, so its id is not reused meanwhile
        bound = [self.bind(p, memo) for p in params]
        dbapi_connection = connection.connection
        cursor = dbapi_connection.cursor()
        try:
            if len(bound) == 1:
                cursor.execute(self.sql, bound[0])
            else:
                cursor.executemany(self.sql, bound)
        except self.dbapi_error as exc:
            # What Connection.execute does with a driver error: wrap it, and drop a dead
            # connection so that the pool does not hand it out again.
            gone = self.dialect.is_disconnect(
                cast(Any, exc), dbapi_connection.dbapi_connection, cursor
            )
            if gone:
                connection.invalidate(exc)
            raise sa.exc.DBAPIError.instance(
                self.sql,
                bound[0] if len(bound) == 1 else bound,
                exc,
                self.dbapi_error,
                connection_invalidated=gone,
                dialect=self.dialect,
            ) from exc
        finally:
            cursor.close()


def _json_text(dialect: sa.Dialect) -> _Processor:
    """JSON as the text SQLAlchemy's JSON type would send (its serializer, None as SQL NULL).

    psycopg's own JSON adapter (which SQLAlchemy's type hands the value to) would serialize
    again for every row; as text, a chunk's shared headers are serialized once (`bind`'s memo).
    PostgreSQL takes the text as JSON: the statement casts the parameter (``::JSON``).
    """
    dumps: Callable[[Any], str] = getattr(dialect, "_json_serializer", None) or json.dumps
    return lambda value: None if value is None else dumps(value)


class DirectStatements:
    """`DirectStatement`s of one SQLAlchemy statement, per dialect (an engine has one)."""

    def __init__(self, statement: sa.Executable) -> None:
        self.statement = statement
        self._by_dialect: weakref.WeakKeyDictionary[sa.Dialect, DirectStatement] = (
            weakref.WeakKeyDictionary()
        )

    def on(self, connection: sa.Connection) -> DirectStatement | None:
        """The statement to send on `connection`'s cursor, or None to go through SQLAlchemy."""
        if not _unobserved(connection):
            return None
        dialect = connection.dialect
        direct = self._by_dialect.get(dialect)
        if direct is None:
            direct = self._by_dialect[dialect] = DirectStatement(self.statement, dialect)
        return direct


def _unobserved(connection: sa.Connection) -> bool:
    """True when sending on the cursor is indistinguishable from `Connection.execute`."""
    dialect = connection.dialect
    if dialect.driver not in _DRIVERS or dialect.is_async:
        return False
    # Private flags, read defensively: a SQLAlchemy without them takes the public path.
    # (As SQLAlchemy does at each event point: listeners on the connection or on its engine.)
    if getattr(connection, "_has_events", True) or getattr(connection.engine, "_has_events", True):
        return False
    if getattr(connection, "_echo", True):
        return False
    if not connection.in_transaction():
        return False  # Connection.execute would autobegin; let it
    return "schema_translate_map" not in connection.get_execution_options()
