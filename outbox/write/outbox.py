"""The write side's facade: `Outbox` records events in the application's own transaction.

`Outbox.emit` never touches the database. It serializes the event at once (so a bad payload
fails the caller) and buffers it in ``session.info``; the session hooks write the buffer with
multi-row INSERTs on the session's own connection, inside its own flush or commit. `Outbox` is
composed of small collaborators, each in its own module:

- `hooks.SessionHooks`: the session event listeners, with the notes on why each is safe;
- `install.SessionInstaller`: hooking those listeners into session factories;
- `capture.CaptureRegistry`: turning ORM changes of captured classes into drafts;
- `writer.OutboxWriter`: drafts to rows, and the INSERT statements that write them;
- `draft` and `buffer`: a validated, buffered event and the per-session buffer.

`fix_sqlite_transactions` (module `sqlite`) and `CaptureBypassedWarning` are re-exported here.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, object_session

from outbox.errors import ConfigurationError, NotInstalledError, TableMissingError
from outbox.schema.tables import (
    build_lease_table,
    build_members_table,
    build_outbox_table,
    build_snapshot_table,
    notify_channel,
)
from outbox.write.buffer import SessionBuffer
from outbox.write.capture import CaptureBypassedWarning, CaptureRegistry
from outbox.write.draft import check_text, make_draft
from outbox.write.event import Event
from outbox.write.hooks import ENTITY_DRAFTS, SessionHooks
from outbox.write.install import SessionInstaller, describe, hooks_for, sync_session
from outbox.write.serialization import DEFAULT_MAX_PAYLOAD_BYTES
from outbox.write.sqlite import fix_sqlite_transactions
from outbox.write.writer import OutboxWriter, missing_table_message

if TYPE_CHECKING:
    from outbox.snapshot.options import Progress, SnapshotOptions, SnapshotResult
    from outbox.snapshot.runner import SnapshotRunner

__all__ = [
    "CaptureBypassedWarning",
    "Outbox",
    "fix_sqlite_transactions",
    "record_entity_event",
]


class Outbox:
    """An outbox table and the session hooks that write events into it.

    ``Outbox()`` defines the table ``outbox`` (and its lease table) on its own `MetaData`,
    `metadata`; nothing touches a database until a session writes events. Call `install` once
    per session factory at startup, then `emit` (or `EventSource.record_event`) inside
    transactions.

    :param table_name: the outbox table's name; the lease table is ``<table_name>_lease``.
    :param schema: the table's schema, or None for the connection's default.
    :param max_payload_bytes: payloads larger than this fail at emit with `PayloadError`
        (default 1 MiB, Kafka's default message size); None removes the check.
    :param notify: on PostgreSQL, wake relays with ``pg_notify`` once per writing transaction.
    """

    def __init__(
        self,
        table_name: str = "outbox",
        schema: str | None = None,
        *,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        notify: bool = True,
    ) -> None:
        if max_payload_bytes is not None and (
            not isinstance(max_payload_bytes, int)
            or isinstance(max_payload_bytes, bool)
            or max_payload_bytes <= 0
        ):
            raise ConfigurationError(
                f"max_payload_bytes must be a positive integer or None, got {max_payload_bytes!r}"
            )
        self.metadata = sa.MetaData()
        self.table = build_outbox_table(self.metadata, table_name, schema)
        self.lease_table = build_lease_table(self.metadata, table_name, schema)
        self.members_table = build_members_table(self.metadata, table_name, schema)
        self.snapshot_table = build_snapshot_table(self.metadata, table_name, schema)
        self.table_name = table_name
        self.schema = schema
        # Settings are fixed at construction: the collaborators below hold their own copies.
        self.max_payload_bytes = max_payload_bytes
        self.notify = notify
        self.notify_channel = notify_channel(table_name, schema)
        self._writer = OutboxWriter(self.table, notify=notify, notify_channel=self.notify_channel)
        self._capture = CaptureRegistry(max_payload_bytes=max_payload_bytes)
        self._hooks = SessionHooks(
            self, self._writer, self._capture, max_payload_bytes=max_payload_bytes
        )
        self._installer = SessionInstaller(self._hooks)

    def __repr__(self) -> str:
        return f"Outbox(table={self.table.fullname!r})"

    def install(self, target: Any) -> None:
        """Hook this outbox into every session made by `target`. Idempotent.

        `target` is a `Session` subclass, a `sessionmaker`, a `scoped_session`, an
        `async_sessionmaker` or an `AsyncSession` subclass. The hooks are synchronous session
        events, so for asyncio they attach to the sync `Session` class behind the AsyncSession;
        an `async_sessionmaker` built without ``sync_session_class`` gets a private subclass so
        that installing does not reach every `Session` of the process (uninstall restores it).
        Installing on the plain `Session` class (or the plain `AsyncSession`) hooks every session.

        A session class holds one Outbox: installing a second one on the same class raises
        `ConfigurationError`. Different Outboxes on different factories are fine.
        """
        self._installer.install(target)

    def uninstall(self, target: Any) -> None:
        """Remove the hooks `install` added for `target`. Harmless when not installed."""
        self._installer.uninstall(target)

    def capture(self, *classes: type[Any], compacted: bool = False) -> None:
        """Record an event for every ORM insert, update and delete of `classes`.

        Event types are ``<table>.created``, ``<table>.updated``, ``<table>.deleted``; topic and
        aggregate type are the table name, the aggregate id the primary key. The payload is
        ``{"row": {column: value}}`` (loaded columns only: server-generated values appear only
        if loaded, e.g. with ``eager_defaults``); updates add ``"changed": [column names]``.
        Binary column values are base64 text.

        Only the flush is seen: ORM bulk statements (``session.execute(update(...))``,
        ``insert(...)`` with a list of rows, ``bulk_save_objects``) and Core statements bypass it
        and record nothing (bulk statements through a session raise `CaptureBypassedWarning`).

        With ``compacted=True`` the events suit a Kafka compacted topic (the last record per key
        is the current state): created and updated events carry the full row (unloaded columns
        are read back), each delete is followed by a tombstone (type ``<table>.tombstone``, a
        NULL payload: a null Kafka value) and a primary-key change becomes a delete and a
        tombstone of the old key plus a create of the new one. See docs/DATA-LIBERATION.md.
        """
        self._capture.add(*classes, compacted=compacted)

    def snapshot(
        self,
        session_factory: Any,
        model: type[Any],
        *,
        where: Any = None,
        chunk_size: int = 1000,
        max_rows_per_second: float | None = None,
        max_pending: int | None = None,
        restart: bool = False,
    ) -> SnapshotResult:
        """Write a ``<table>.snapshot`` event for every existing row of `model`; run to the end.

        The events have capture's aggregate type, aggregate id, key and topic, the full row as
        payload and a ``snapshot_id`` header. One short transaction per chunk of `chunk_size`
        rows in primary key order reads them under shared row locks and commits their events
        with the snapshot's cursor (table ``<outbox>_snapshot``), so a snapshot that did not
        finish (crash, Ctrl-C) resumes exactly where it stopped when called again; `restart`
        abandons it and starts anew. `where` (SQL text or an expression) limits the rows;
        `max_rows_per_second` caps the rate; while more than `max_pending` events wait for the
        relay, the snapshot pauses. `session_factory` makes sessions on the model's database.

        `model` must be captured (`capture`) by every writer first. Raises `ConfigurationError`
        for a model that is not captured or has no primary key, `TableMissingError` without the
        snapshot table, `SnapshotError` when the snapshot fails or is cancelled.
        """
        from outbox.snapshot.options import SnapshotOptions

        options = SnapshotOptions(
            where=where,
            chunk_size=chunk_size,
            max_rows_per_second=max_rows_per_second,
            max_pending=max_pending,
            restart=restart,
        )
        return self.snapshot_runner(session_factory, model, options).run()

    def snapshot_runner(
        self,
        session_factory: Any,
        model: type[Any],
        options: SnapshotOptions,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        stop: threading.Event | None = None,
    ) -> SnapshotRunner:
        """The runner `snapshot` uses, for callers that report progress or stop it between
        chunks (`outbox snapshot run`: a progress bar, Ctrl-C)."""
        from outbox.snapshot.runner import SnapshotRunner
        from outbox.snapshot.state import SnapshotState

        return SnapshotRunner(
            session_factory=session_factory,
            model=model,
            writer=self._writer,
            capture=self._capture,
            state=SnapshotState(self.snapshot_table, self.table),
            options=options,
            on_progress=on_progress,
            stop=stop,
        )

    def check_table(self, bind: sa.Engine | sa.Connection) -> None:
        """Raise `TableMissingError` unless the outbox table exists with every column we write."""
        inspector = sa.inspect(bind)
        if not inspector.has_table(self.table.name, schema=self.schema):
            raise TableMissingError(missing_table_message(self.table))
        present = {c["name"] for c in inspector.get_columns(self.table.name, schema=self.schema)}
        missing = sorted({c.name for c in self.table.columns} - present)
        if missing:
            raise TableMissingError(
                f"outbox table {self.table.fullname!r} lacks columns {', '.join(missing)}: "
                "run `outbox migrate --db-url URL` or `alembic upgrade heads`"
            )

    def emit(
        self,
        session: Any,
        type: str,
        payload: Any,
        *,
        aggregate_type: str,
        aggregate_id: str | int | uuid.UUID,
        key: str | None = None,
        topic: str | None = None,
        headers: Mapping[str, str | bytes] | None = None,
    ) -> Event:
        """Record an event in `session`'s transaction and return it.

        Nothing is sent to the database now: the event is written with the session's next flush
        (if it has ORM changes) or at commit, in the same transaction, and vanishes with a
        rollback. `session` is a `Session`, `AsyncSession` or `scoped_session` (its current
        session) whose factory was installed.

        Raises `PayloadError` if `payload` or `headers` cannot be serialized or the payload is
        over `max_payload_bytes`; `ConfigurationError` for an invalid type, aggregate, key or
        topic; `NotInstalledError` if `install` was never called for this session's factory.
        """
        sync = sync_session(session)
        if not self._installer.is_installed_on(sync):
            raise NotInstalledError(
                f"{self!r} is not installed on {describe(sync)}: call outbox.install(...) with "
                "your sessionmaker, async_sessionmaker or Session class once at startup"
            )
        draft = make_draft(
            type,
            payload,
            max_bytes=self.max_payload_bytes,
            aggregate_type=check_text(aggregate_type, "aggregate_type"),
            aggregate_id=check_text(aggregate_id, "aggregate_id"),
            key=key,
            topic=topic,
            headers=headers,
        )
        self._hooks.enqueue(sync, draft)
        assert draft.aggregate_type is not None and draft.aggregate_id is not None
        return Event(
            id=draft.id,
            type=draft.type,
            aggregate_type=draft.aggregate_type,
            aggregate_id=draft.aggregate_id,
            payload=draft.payload,
            created_at=draft.created_at,
            key=draft.key,
            topic=draft.topic,
            headers=MappingProxyType(dict(draft.headers)),
        )

    def flush(self, session: Any) -> None:
        """Write the buffered events now (one INSERT), for example to read them back in tests."""
        sync = sync_session(session)
        buffer = self._buffer(sync, create=False)
        if buffer is not None and buffer.drafts:
            sync.flush()
            self._writer.write(sync, buffer, [], final=True)

    def _buffer(self, session: Session, *, create: bool = True) -> SessionBuffer | None:
        """This outbox's buffer in `session` (None without `create` when there is none)."""
        return self._hooks.buffer(session, create=create)


def record_entity_event(
    entity: object,
    event_type: str,
    payload: Any,
    *,
    aggregate_type: str | None = None,
    key: str | None = None,
    topic: str | None = None,
    headers: Mapping[str, str | bytes] | None = None,
) -> uuid.UUID:
    """`EventSource.record_event`: buffer an entity's event in its session, or on the entity."""
    session = object_session(entity)
    hooks = hooks_for(session) if session is not None else None
    if session is not None and hooks is None:
        raise NotInstalledError(
            f"no Outbox is installed on {describe(session)}: call outbox.install(...) with "
            "your sessionmaker, async_sessionmaker or Session class once at startup"
        )
    draft = make_draft(
        event_type,
        payload,
        # Outside a session the outbox (and its size cap) is unknown until the entity is added.
        max_bytes=None if hooks is None else hooks.max_payload_bytes,
        aggregate_type=None
        if aggregate_type is None
        else check_text(aggregate_type, "aggregate_type"),
        aggregate_id=None,
        key=key,
        topic=topic,
        headers=headers,
        entity=entity,
    )
    if session is None or hooks is None:
        entity.__dict__.setdefault(ENTITY_DRAFTS, []).append(draft)
    else:
        hooks.record_entity_event(session, draft)
    return draft.id
