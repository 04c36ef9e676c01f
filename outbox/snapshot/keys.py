"""Keyset pagination over any primary key, single or composite, and the cursor's JSON form.

A chunk is ``WHERE key > :cursor AND key <= :max ORDER BY key LIMIT n``. A composite key is
compared lexicographically, spelled out as ``k1 > a OR (k1 = a AND k2 > b)`` with a redundant
``k1 >= a`` so that every database (MariaDB included, which does not range-scan row value
comparisons) walks the primary key index instead of scanning the table; no OFFSET, ever.

The cursor is stored as a JSON list of the key's values; `KeySet.load` turns it back into the
column types' Python values (UUID, dates, Decimal, enums).
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import json
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapper

from outbox.errors import ConfigurationError

Key = tuple[Any, ...]


def _dump_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    return value


def _load_value(column: sa.Column[Any], value: Any) -> Any:
    if isinstance(value, dict) and "b64" in value:
        return base64.b64decode(value["b64"])
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return value
    if value is None or isinstance(value, python_type):
        return value
    if issubclass(python_type, dt.datetime):
        return dt.datetime.fromisoformat(value)
    if issubclass(python_type, dt.date):
        return dt.date.fromisoformat(value)
    if issubclass(python_type, dt.time):
        return dt.time.fromisoformat(value)
    return python_type(value)


class KeySet:
    """The primary key columns of a mapped table, and the predicates that page over them."""

    def __init__(self, mapper: Mapper[Any]) -> None:
        table = mapper.local_table
        name = getattr(table, "name", mapper.class_.__name__)
        if not isinstance(table, sa.Table) or mapper.inherits is not None:
            raise ConfigurationError(
                f"{mapper.class_.__qualname__} is not mapped to one table of its own: snapshot "
                "takes a class mapped to a plain table (no inheritance)"
            )
        constraint = list(table.primary_key.columns)
        if not constraint:
            raise ConfigurationError(
                f"table {name!r} has no primary key: a snapshot pages by primary key and "
                "capture keys events by it"
            )
        if {c.name for c in constraint} != {c.name for c in mapper.primary_key}:
            raise ConfigurationError(
                f"{mapper.class_.__qualname__} is mapped with a primary key other than table "
                f"{name!r}'s own: a snapshot pages by the table's primary key"
            )
        #: In the mapper's order: the order of the aggregate id's parts.
        self.columns: tuple[sa.Column[Any], ...] = tuple(
            table.c[c.name] for c in mapper.primary_key
        )

    def after(self, key: Key) -> sa.ColumnElement[bool]:
        """Rows whose key is greater than `key` (lexicographically)."""
        return self._greater(key)

    def at_most(self, key: Key) -> sa.ColumnElement[bool]:
        """Rows whose key is at most `key`."""
        return sa.not_(self._greater(key))

    def _greater(self, key: Key) -> sa.ColumnElement[bool]:
        cols = self.columns
        if len(cols) == 1:
            single: sa.ColumnElement[bool] = cols[0] > key[0]
            return single
        terms = []
        for i, column in enumerate(cols):
            prefix = [cols[j] == key[j] for j in range(i)]
            terms.append(sa.and_(*prefix, column > key[i]))
        # The redundant first-column bound lets the planner range-scan the index.
        first = cols[0] >= key[0]
        return sa.and_(first, sa.or_(*terms))

    def of(self, row: Sequence[Any]) -> Key:
        """The key of a selected row whose first columns are `columns`."""
        return tuple(row[: len(self.columns)])

    def dump(self, key: Key | None) -> str | None:
        return None if key is None else json.dumps([_dump_value(v) for v in key])

    def load(self, text: str | None) -> Key | None:
        if text is None:
            return None
        values = json.loads(text)
        if not isinstance(values, list) or len(values) != len(self.columns):
            raise ConfigurationError(
                f"snapshot cursor {text!r} does not match the primary key "
                f"({', '.join(c.name for c in self.columns)}): was the table changed?"
            )
        return tuple(_load_value(c, v) for c, v in zip(self.columns, values, strict=True))
