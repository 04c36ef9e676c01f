"""The SQL that reads the snapshotted table: its bounds at the start, and one chunk at a time.

A chunk is read under a shared row lock (``FOR SHARE`` on PostgreSQL, ``LOCK IN SHARE MODE``
on MariaDB/MySQL; SQLAlchemy's ``with_for_update(read=True)`` renders the right one): it waits
for a writer that holds a row's lock, and makes a writer wait until the chunk commits. Capture
writes a row's event after its UPDATE or DELETE, while holding the row's exclusive lock, so for
every key the capture event and the snapshot event are ordered the same way by their outbox
``seq`` as the two transactions were by the lock: a snapshot event is never behind a newer
change of its row. SQLite has a single writer: the chunk's transaction takes the write lock
with its first statement (the snapshot row update) before it reads.
"""

from __future__ import annotations

import datetime as dt
import operator
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapper

from outbox.snapshot.keys import Key, KeySet
from outbox.write.capture import encode_value, row_columns
from outbox.write.orm import key_text


class TableReader:
    """Selects of one mapped table: bounds, counts and locked chunks in primary key order."""

    def __init__(self, mapper: Mapper[Any], keys: KeySet, where: sa.ColumnElement[bool] | None):
        self.keys = keys
        self.where = where
        table = mapper.local_table
        assert isinstance(table, sa.Table)
        self.table = table
        #: The payload's columns, as capture names them (column name, in mapper order).
        self.columns = [column for _, column in row_columns(mapper)]
        key_names = {c.name for c in keys.columns}
        self._selected = [*keys.columns, *(c for c in self.columns if c.name not in key_names)]
        # The payload's values by position in the selected row, fetched in one C call; capture's
        # base64 (`encode_value`) only for the columns whose values can be binary.
        position = {c.name: i for i, c in enumerate(self._selected)}
        positions = [position[c.name] for c in self.columns]
        self._names = [c.name for c in self.columns]
        self._values: Callable[[Sequence[Any]], Sequence[Any]] = (
            operator.itemgetter(*positions) if len(positions) > 1 else _one(positions[0])
        )
        self._encoded = [c.name for c in self.columns if _may_be_binary(c)]
        self._single_key = len(keys.columns) == 1

    def _filters(self) -> list[sa.ColumnElement[bool]]:
        return [] if self.where is None else [self.where]

    def max_key(self, conn: sa.Connection) -> Key | None:
        """The largest key now (matching the filter): rows above it come as capture events."""
        row = conn.execute(
            sa.select(*self.keys.columns)
            .where(*self._filters())
            .order_by(*(c.desc() for c in self.keys.columns))
            .limit(1)
        ).first()
        return None if row is None else tuple(row)

    def count(self, conn: sa.Connection) -> int:
        statement = sa.select(sa.func.count()).select_from(self.table).where(*self._filters())
        return int(conn.execute(statement).scalar_one())

    def _range(self, after: Key | None, upto: Key) -> list[sa.ColumnElement[bool]]:
        bounds = [*self._filters(), self.keys.at_most(upto)]
        if after is not None:
            bounds.append(self.keys.after(after))
        return bounds

    def remaining(self, conn: sa.Connection, after: Key | None, upto: Key) -> bool:
        """Whether any row is left in (after, upto]: a short chunk does not mean the end, since
        a locked row that was deleted while the chunk waited for it is left out."""
        statement = sa.select(*self.keys.columns).where(*self._range(after, upto)).limit(1)
        return conn.execute(statement).first() is not None

    def chunk(
        self, conn: sa.Connection, after: Key | None, upto: Key, limit: int
    ) -> Sequence[sa.Row[Any]]:
        statement = (
            sa.select(*self._selected)
            .where(*self._range(after, upto))
            .order_by(*self.keys.columns)
            .limit(limit)
        )
        if conn.dialect.name != "sqlite":
            statement = statement.with_for_update(read=True)
        return conn.execute(statement).all()

    def payload_row(self, row: sa.Row[Any]) -> dict[str, Any]:
        """The row as capture's payload spells it: ``{column name: value}``, binary as base64."""
        payload = dict(zip(self._names, self._values(row), strict=True))
        for name in self._encoded:
            payload[name] = encode_value(payload[name])
        return payload

    def key_of(self, row: sa.Row[Any]) -> tuple[Key, str]:
        if self._single_key and row[0] is not None:
            return (row[0],), str(row[0])  # key_text of one part, without its generality
        key = self.keys.of(row)
        return key, key_text(key) or ""


def _one(position: int) -> Callable[[Sequence[Any]], Sequence[Any]]:
    # itemgetter of one position returns the value, not a tuple.
    return lambda row: (row[position],)


#: Python types of column values that capture's payload holds as they are (never base64).
_PLAIN_TYPES = (bool, int, float, str, Decimal, dt.date, dt.time, uuid.UUID, dict, list)


def _may_be_binary(column: sa.Column[Any]) -> bool:
    """False when the column's type says its values are never bytes; True when unsure."""
    if isinstance(column.type, sa.TypeDecorator):
        return True  # its own processing may return anything
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return True
    return not issubclass(python_type, _PLAIN_TYPES)
