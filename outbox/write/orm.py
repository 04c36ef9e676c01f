"""What the write side reads from the ORM: a mapped object's table name and primary key.

Capture and entity events both name their aggregate after the table and identify it by the
primary key as text; they share these helpers so that both spell the same row the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import InstanceState, Mapper


def mapper_of(entity: object) -> tuple[InstanceState[Any], Mapper[Any]]:
    state: InstanceState[Any] = sa.inspect(entity)
    return state, state.mapper


def table_name(mapper: Mapper[Any]) -> str:
    name = getattr(mapper.local_table, "name", None)
    return name if isinstance(name, str) else mapper.class_.__name__.lower()


def identity_of(entity: object) -> str | None:
    """The primary key of `entity` as text ("a:b" when composite), or None when not yet known."""
    state, mapper = mapper_of(entity)
    if state.key is not None:
        values: Iterable[Any] = state.key[1]
    else:
        # Pending, or inserted by the flush that is running: the key is in the instance dict.
        values = [state.dict.get(mapper.get_property_by_column(c).key) for c in mapper.primary_key]
    return key_text(values)


def key_text(values: Iterable[Any]) -> str | None:
    """Primary key values as the aggregate id and Kafka key: "a:b" when composite, None when a
    part is unknown. Every producer of row events (capture, snapshot) spells keys with this."""
    parts = list(values)
    if not parts or any(v is None for v in parts):
        return None
    return ":".join(str(v) for v in parts)
