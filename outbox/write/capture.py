"""Model capture: turning the ORM changes of captured classes into drafts, inside the flush.

`CaptureRegistry` holds the classes `Outbox.capture` was given and, from ``after_flush``, makes
one draft per created, updated or deleted object. The naming (`event_type`: ``<table>.<op>``,
aggregate type and topic the table, aggregate id the primary key) and the row serialization
(`row_values`) are module functions so that other producers of row events (a snapshot of
existing rows) spell a row exactly as capture does. Per-class capture options (for example a
compacted mode that writes the full row and a tombstone after each delete) belong in this
registry and in `CaptureRegistry.drafts`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import NoInspectionAvailable
from sqlalchemy.orm import ColumnProperty, InstanceState, Mapper, Session

from outbox.errors import ConfigurationError
from outbox.write.draft import Draft, make_draft
from outbox.write.orm import identity_of, mapper_of, table_name


class CaptureBypassedWarning(UserWarning):
    """An ORM bulk statement changed a captured class: no capture event was recorded for it."""


def event_type(mapper: Mapper[Any], op: str) -> str:
    """The type of a row event: ``<table>.<op>`` (op: created, updated, deleted, ...)."""
    return f"{table_name(mapper)}.{op}"


def _columns(mapper: Mapper[Any]) -> Iterator[tuple[ColumnProperty[Any], sa.Column[Any]]]:
    for prop in mapper.column_attrs:
        column = prop.columns[0]
        if isinstance(column, sa.Column):  # not a column_property() over an expression
            yield prop, column


def row_values(state: InstanceState[Any], mapper: Mapper[Any]) -> dict[str, Any]:
    """The loaded columns of a mapped object by column name; binary values as base64 text."""
    row: dict[str, Any] = {}
    for prop, column in _columns(mapper):
        if prop.key in state.dict:
            value = state.dict[prop.key]
            if isinstance(value, bytes | bytearray | memoryview):
                value = base64.b64encode(bytes(value)).decode("ascii")
            row[column.name] = value
    return row


def changed_columns(state: InstanceState[Any], mapper: Mapper[Any]) -> list[str]:
    """The names of the columns whose attribute history has changes, in mapper order."""
    return [
        column.name
        for prop, column in _columns(mapper)
        if state.attrs[prop.key].history.has_changes()
    ]


class CaptureRegistry:
    """The captured classes of one Outbox, and the drafts their flushed changes become."""

    def __init__(self, *, max_payload_bytes: int | None) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.classes: tuple[type[Any], ...] = ()

    def add(self, *classes: type[Any]) -> None:
        """Capture `classes` too (idempotent); `ConfigurationError` for an unmapped class."""
        added: list[type[Any]] = []
        for cls in classes:
            try:
                sa.inspect(cls)
            except NoInspectionAvailable:
                raise ConfigurationError(f"capture() takes mapped classes, not {cls!r}") from None
            if cls not in self.classes:
                added.append(cls)
        self.classes = (*self.classes, *added)

    def covers(self, cls: type[Any]) -> bool:
        return bool(self.classes) and issubclass(cls, self.classes)

    def drafts(self, session: Session) -> list[Draft]:
        """One draft per captured object the running flush creates, updates or deletes."""
        drafts: list[Draft] = []
        if not self.classes:
            return drafts
        for op, objects in (
            ("created", session.new),
            ("updated", session.dirty),
            ("deleted", session.deleted),
        ):
            for obj in objects:
                if isinstance(obj, self.classes):
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
        table = table_name(mapper)
        return make_draft(
            event_type(mapper, op),
            payload,
            max_bytes=self.max_payload_bytes,
            aggregate_type=table,
            aggregate_id=identity_of(obj) or "",
            key=None,
            topic=table,
            headers=None,
        )
