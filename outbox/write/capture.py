"""Model capture: turning the ORM changes of captured classes into drafts, inside the flush.

`CaptureRegistry` holds the classes `Outbox.capture` was given and, from ``after_flush``, makes
one draft per created, updated or deleted object. The naming (`event_type`: ``<table>.<op>``,
aggregate type and topic the table, aggregate id the primary key) and the row serialization
(`row_columns`, `encode_value`) are module functions so that other producers of row events (a
snapshot of existing rows) spell a row exactly as capture does.

Compacted capture (``capture(Model, compacted=True)``) serves Kafka compacted topics, whose last
record per key is the current state: created and updated events carry the full row (columns
the session has not loaded are read back by primary key), each delete is followed by a
tombstone (a NULL payload: a null Kafka value), and a primary-key change becomes a delete and
a tombstone of the old key, then a create of the new one (the keys may live in different
partitions, so an "update" across them would leave the old key alive forever).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import NoInspectionAvailable
from sqlalchemy.orm import ColumnProperty, InstanceState, Mapper, Session

from outbox.errors import ConfigurationError
from outbox.write.draft import Draft, make_drafts
from outbox.write.orm import identity_of, key_text, mapper_of, table_name


class CaptureBypassedWarning(UserWarning):
    """An ORM bulk statement changed a captured class: no capture event was recorded for it."""


def event_type(mapper: Mapper[Any], op: str) -> str:
    """The type of a row event: ``<table>.<op>`` (op: created, updated, deleted, ...)."""
    return f"{table_name(mapper)}.{op}"


def row_columns(mapper: Mapper[Any]) -> Iterator[tuple[ColumnProperty[Any], sa.Column[Any]]]:
    """The mapped table columns of `mapper` (not column_property() expressions), in order."""
    for prop in mapper.column_attrs:
        column = prop.columns[0]
        if isinstance(column, sa.Column):
            yield prop, column


_BINARY = (bytes, bytearray, memoryview)  # a tuple: a union would be built per call


def encode_value(value: Any) -> Any:
    """A column value as the payload holds it: binary values as base64 text, the rest as is."""
    if isinstance(value, _BINARY):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def row_values(state: InstanceState[Any], mapper: Mapper[Any]) -> dict[str, Any]:
    """The loaded columns of a mapped object by column name; binary values as base64 text."""
    return {
        column.name: encode_value(state.dict[prop.key])
        for prop, column in row_columns(mapper)
        if prop.key in state.dict
    }


def changed_columns(state: InstanceState[Any], mapper: Mapper[Any]) -> list[str]:
    """The names of the columns whose attribute history has changes, in mapper order."""
    return [
        column.name
        for prop, column in row_columns(mapper)
        if state.attrs[prop.key].history.has_changes()
    ]


def _key_values(state: InstanceState[Any], mapper: Mapper[Any], *, old: bool) -> list[Any]:
    """The primary key values of the object now, or (`old`) before this flush changed them."""
    values: list[Any] = []
    for column in mapper.primary_key:
        prop = mapper.get_property_by_column(column)
        value = state.dict.get(prop.key)
        if old:
            deleted = state.attrs[prop.key].history.deleted
            if deleted:
                value = deleted[0]
        values.append(value)
    return values


def _full_row(session: Session, state: InstanceState[Any], mapper: Mapper[Any]) -> dict[str, Any]:
    """Every column of the object's row: the loaded ones, and the rest read back by key (server
    defaults, expired or deferred columns), inside the running flush's transaction."""
    row = row_values(state, mapper)
    missing = [column for _, column in row_columns(mapper) if column.name not in row]
    if missing:
        keys = _key_values(state, mapper, old=False)
        statement = sa.select(*missing).where(
            *(c == v for c, v in zip(mapper.primary_key, keys, strict=True))
        )
        found = session.connection(bind_arguments={"mapper": mapper}).execute(statement).first()
        if found is not None:
            for column, value in zip(missing, found, strict=True):
                row[column.name] = encode_value(value)
    return {column.name: row.get(column.name) for _, column in row_columns(mapper)}


class CaptureRegistry:
    """The captured classes of one Outbox, and the drafts their flushed changes become."""

    def __init__(self, *, max_payload_bytes: int | None) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.classes: tuple[type[Any], ...] = ()
        self.compacted: tuple[type[Any], ...] = ()

    def add(self, *classes: type[Any], compacted: bool = False) -> None:
        """Capture `classes` too (idempotent); `ConfigurationError` for an unmapped class or a
        class already captured in the other mode."""
        added: list[type[Any]] = []
        for cls in classes:
            try:
                sa.inspect(cls)
            except NoInspectionAvailable:
                raise ConfigurationError(f"capture() takes mapped classes, not {cls!r}") from None
            if cls in self.classes:
                if (cls in self.compacted) != compacted:
                    raise ConfigurationError(
                        f"{cls.__qualname__} is already captured with compacted="
                        f"{not compacted}: capture each class in one mode"
                    )
                continue
            added.append(cls)
        self.classes = (*self.classes, *added)
        if compacted:
            self.compacted = (*self.compacted, *added)

    def covers(self, cls: type[Any]) -> bool:
        return bool(self.classes) and issubclass(cls, self.classes)

    def is_compacted(self, cls: type[Any]) -> bool:
        return bool(self.compacted) and issubclass(cls, self.compacted)

    def drafts(self, session: Session) -> list[Draft]:
        """The drafts of every captured object the running flush creates, updates or deletes."""
        drafts: list[Draft] = []
        if not self.classes:
            return drafts
        for op, objects in (
            ("created", session.new),
            ("updated", session.dirty),
            ("deleted", session.deleted),
        ):
            for obj in objects:
                if not isinstance(obj, self.classes):
                    continue
                if self.is_compacted(type(obj)):
                    drafts.extend(self.compacted_drafts(session, obj, op))
                else:
                    draft = self.draft(obj, op)
                    if draft is not None:
                        drafts.append(draft)
        return drafts

    def draft(self, obj: object, op: str) -> Draft | None:
        """`obj`'s event for `op`; None for an update that changed no column."""
        state, mapper = mapper_of(obj)
        payload: dict[str, Any] = {"row": row_values(state, mapper)}
        if op == "updated":
            changed = changed_columns(state, mapper)
            if not changed:
                return None  # Marked dirty without a column change (or a relationship-only one).
            payload["changed"] = changed
        return self.row_event(mapper, op, payload, identity_of(obj) or "")

    def compacted_drafts(self, session: Session, obj: object, op: str) -> list[Draft]:
        """`obj`'s events for `op` in compacted mode (see the module docs)."""
        state, mapper = mapper_of(obj)
        if op == "deleted":
            key = key_text(_key_values(state, mapper, old=True)) or ""
            return [
                self.row_event(mapper, "deleted", {"row": row_values(state, mapper)}, key),
                self.row_event(mapper, "tombstone", None, key),
            ]
        new_key = key_text(_key_values(state, mapper, old=False)) or ""
        if op == "created":
            return [self.row_event(mapper, op, {"row": _full_row(session, state, mapper)}, new_key)]
        changed = changed_columns(state, mapper)
        if not changed:
            return []
        row = _full_row(session, state, mapper)
        old_key = key_text(_key_values(state, mapper, old=True)) or ""
        if old_key != new_key:
            old_row = dict(row)
            for column, value in zip(
                mapper.primary_key, _key_values(state, mapper, old=True), strict=True
            ):
                old_row[column.name] = encode_value(value)
            return [
                self.row_event(mapper, "deleted", {"row": old_row}, old_key),
                self.row_event(mapper, "tombstone", None, old_key),
                self.row_event(mapper, "created", {"row": row}, new_key),
            ]
        return [self.row_event(mapper, op, {"row": row, "changed": changed}, new_key)]

    def row_event(
        self,
        mapper: Mapper[Any],
        op: str,
        payload: Any,
        aggregate_id: str,
        headers: dict[str, str] | None = None,
    ) -> Draft:
        """A row event of `mapper`'s table: type ``<table>.<op>``, the table as aggregate type
        and topic, the primary key text as aggregate id (and so as the Kafka key)."""
        [draft] = self.row_events(mapper, op, [(payload, aggregate_id)], headers)
        return draft

    def row_events(
        self,
        mapper: Mapper[Any],
        op: str,
        items: Sequence[tuple[Any, str]],
        headers: dict[str, str] | None = None,
    ) -> list[Draft]:
        """`row_event` for many rows at once: one (payload, aggregate id) per row."""
        table = table_name(mapper)
        return make_drafts(
            event_type(mapper, op),
            items,
            max_bytes=self.max_payload_bytes,
            aggregate_type=table,
            key=None,
            topic=table,
            headers=headers,
        )
