"""The write side: record events in the application's own transaction.

`Outbox.emit` never touches the database. It serializes the event at once (so a bad payload
fails the caller) and buffers it in ``session.info`` (per session: no shared state, thread-safe
by construction). The buffer is written with one multi-row INSERT, on the session's own
connection, inside the session's own flush or commit. Which session events do that, and why
each is the safe one:

``after_flush``
    Runs inside the flush, in its transaction, after the ORM statements: Core statements on
    ``session.connection()`` are part of the same unit of work (as in SQLAlchemy's
    ``versioned_history`` example). Primary keys of new rows are known by then, so entity events
    get their aggregate id; attribute history is still intact, so `capture` sees what changed.
    ``before_flush`` would be too early for autoincrement keys and, like ``after_flush``, does not
    fire at all when no mapped object changed.

``before_commit``
    ``Session.commit()`` skips the flush on a clean session, so an emit-only transaction would
    write nothing through ``after_flush``. ``before_commit`` runs before the commit while the
    transaction can still execute SQL (``after_commit`` cannot). It fires for the outermost
    commit and for each savepoint release, and writes whatever is still buffered.

``after_transaction_create``
    ``begin_nested()`` flushes pending ORM changes before its SAVEPOINT; buffered events are
    written at that point too (to the enclosing transaction), so an event emitted before a
    savepoint never rolls back with it.

``after_soft_rollback``
    Sees every rollback, including a rolled-back ``begin_nested()`` savepoint
    (``transaction.nested``). Rows flushed inside the savepoint roll back with it in the
    database; buffered events emitted inside it are dropped here, so exactly the savepoint's
    events disappear. Each buffered event remembers the innermost transaction it was emitted in.

``after_transaction_end``
    Fires when the outermost transaction ends by commit, rollback or close: the buffer goes.

``after_attach``
    Moves events recorded on an entity before it joined a session into that session's buffer.

``do_orm_execute``
    Warns when an ORM bulk UPDATE/DELETE/INSERT touches a captured class: bulk statements bypass
    the flush, so `capture` cannot see them.

On PostgreSQL with ``notify=True`` the transaction that wrote events also runs one
``SELECT pg_notify(channel, '')``: NOTIFY is delivered at commit and never for a rolled-back
transaction, so relays wake exactly when events become visible.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import uuid
import warnings
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.exc import DBAPIError, NoInspectionAvailable
from sqlalchemy.orm import (
    InstanceState,
    Mapper,
    ORMExecuteState,
    Session,
    SessionTransaction,
    UOWTransaction,
    object_session,
    scoped_session,
    sessionmaker,
)
from sqlalchemy.orm.attributes import flag_dirty

from outbox._uuid7 import uuid7
from outbox.errors import ConfigurationError, NotInstalledError, TableMissingError
from outbox.schema.tables import (
    NAME_LENGTH,
    TOPIC_LENGTH,
    build_lease_table,
    build_outbox_table,
    notify_channel,
)
from outbox.write.event import Event
from outbox.write.serialization import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    serialize_headers,
    serialize_payload,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "CaptureBypassedWarning",
    "Outbox",
    "fix_sqlite_transactions",
]

#: Where an entity keeps the events it recorded before it was added to a session.
_ENTITY_DRAFTS = "_outbox_pending_events"
_TOPIC = re.compile(rf"^[A-Za-z0-9._-]{{1,{TOPIC_LENGTH}}}$")
# Bind parameters per inserted row (every column the write side sets).
_PARAMS_PER_ROW = 9
# Rows' payload bytes per INSERT: well under MariaDB's 16 MiB default max_allowed_packet even
# once pymysql escapes binary data.
_STATEMENT_PAYLOAD_BUDGET = 4 * 1024 * 1024


class CaptureBypassedWarning(UserWarning):
    """An ORM bulk statement changed a captured class: no capture event was recorded for it."""


@dataclass(slots=True, eq=False)
class _Draft:
    """A buffered event. Entity events get their aggregate id when written (after the flush)."""

    id: uuid.UUID
    type: str
    payload: bytes | None
    created_at: datetime
    key: str | None
    topic: str | None
    headers: dict[str, str]
    aggregate_type: str | None
    aggregate_id: str | None
    entity: object | None = None
    #: The innermost transaction the event was emitted in; None while not yet in a session.
    tx: SessionTransaction | None = None


@dataclass(slots=True, eq=False)
class _SessionBuffer:
    """The outbox's state for one session transaction, kept in ``session.info``."""

    drafts: list[_Draft] = field(default_factory=list)
    #: The transaction that ran pg_notify (None: none yet, or it rolled back with a savepoint).
    notified_in: SessionTransaction | None = None


# Session class -> the Outbox installed on it. A class holds at most one Outbox; sessions of a
# subclass use the nearest one in their class's MRO.
_installed: weakref.WeakKeyDictionary[type[Session], Outbox] = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()


def _outbox_for(session: Session) -> Outbox | None:
    for cls in type(session).__mro__:
        found = _installed.get(cls)
        if found is not None:
            return found
    return None


def _sync_session(session: Any) -> Session:
    """The sync `Session` behind `session` (itself, or an AsyncSession's ``sync_session``)."""
    if isinstance(session, Session):
        return session
    asyncio_ext = sys.modules.get("sqlalchemy.ext.asyncio")
    if asyncio_ext is not None and isinstance(session, asyncio_ext.AsyncSession):
        return cast(Session, session.sync_session)
    raise ConfigurationError(
        f"expected a Session or AsyncSession, got {type(session).__qualname__}"
    )


def _within(tx: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while tx is not None:
        if tx is ancestor:
            return True
        tx = tx.parent
    return False


def _current_transaction(session: Session) -> SessionTransaction:
    """The innermost transaction of `session`, begun now if the session has none yet.

    Beginning mirrors `Session.add()`, which also autobegins: every buffered event then belongs
    to a transaction whose end (commit, rollback, close) the session events report.
    """
    tx = session.get_nested_transaction() or session.get_transaction()
    return tx if tx is not None else session.begin()


def _check_text(value: Any, what: str, max_length: int = NAME_LENGTH) -> str:
    if isinstance(value, int | uuid.UUID) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > max_length:
        raise ConfigurationError(f"{what} is longer than {max_length} characters: {value[:40]!r}…")
    return value


def _check_topic(topic: str | None) -> str | None:
    if topic is None:
        return None
    if not isinstance(topic, str) or not _TOPIC.match(topic) or topic in (".", ".."):
        raise ConfigurationError(
            f"invalid topic {topic!r}: Kafka topic names use letters, digits, '.', '_' and '-', "
            f"at most {TOPIC_LENGTH} characters"
        )
    return topic


def _trace_headers() -> dict[str, str]:
    """W3C trace context of the active span, if the application uses OpenTelemetry.

    Never imports opentelemetry: an application that did not import it has no span to store.
    """
    if "opentelemetry" not in sys.modules:
        return {}
    try:
        from opentelemetry import propagate, trace
    except ImportError:  # pragma: no cover - a partial install
        return {}
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {k: carrier[k] for k in ("traceparent", "tracestate") if carrier.get(k)}


def _mapper_of(entity: object) -> tuple[InstanceState[Any], Mapper[Any]]:
    state: InstanceState[Any] = sa.inspect(entity)
    return state, state.mapper


def _table_name(mapper: Mapper[Any]) -> str:
    name = getattr(mapper.local_table, "name", None)
    return name if isinstance(name, str) else mapper.class_.__name__.lower()


def _identity_of(entity: object) -> str | None:
    """The primary key of `entity` as text ("a:b" when composite), or None when not yet known."""
    state, mapper = _mapper_of(entity)
    if state.key is not None:
        values: Iterable[Any] = state.key[1]
    else:
        # Pending, or inserted by the flush that is running: the key is in the instance dict.
        values = [state.dict.get(mapper.get_property_by_column(c).key) for c in mapper.primary_key]
    parts = list(values)
    if not parts or any(v is None for v in parts):
        return None
    return ":".join(str(v) for v in parts)


def _is_missing_table(exc: DBAPIError) -> bool:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code == "42P01":  # PostgreSQL undefined_table
        return True
    args = getattr(orig, "args", ())
    if args and args[0] == 1146:  # MySQL/MariaDB ER_NO_SUCH_TABLE
        return True
    return "no such table" in str(orig)


def _rows_per_statement(dialect: sa.Dialect) -> int:
    # Drivers cap bind parameters: SQLite before 3.32 at 999, asyncpg at 32767.
    limit = 32766
    if dialect.name == "sqlite":
        version = dialect.server_version_info or (0,)
        if tuple(version) < (3, 32):
            limit = 999
    return limit // _PARAMS_PER_ROW


def _make_draft(
    event_type: str,
    payload: Any,
    *,
    max_bytes: int | None,
    aggregate_type: str | None,
    aggregate_id: str | None,
    key: Any,
    topic: str | None,
    headers: Mapping[str, str | bytes] | None,
    entity: object | None = None,
) -> _Draft:
    """Validate and serialize an event now, so that mistakes fail the emitting call."""
    event_type = _check_text(event_type, "event type")
    user_headers = serialize_headers(headers, event_type)
    return _Draft(
        id=uuid7(),
        type=event_type,
        payload=serialize_payload(payload, event_type, max_bytes),
        created_at=datetime.now(UTC),
        key=None if key is None else _check_text(key, "key"),
        topic=_check_topic(topic),
        # User headers win: an explicit traceparent is the caller's choice.
        headers={**_trace_headers(), **user_headers},
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        entity=entity,
    )


def _describe(session: Session) -> str:
    return f"sessions of {type(session).__qualname__}"


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
        self.table_name = table_name
        self.schema = schema
        self.max_payload_bytes = max_payload_bytes
        self.notify = notify
        self.notify_channel = notify_channel(table_name, schema)
        self._captured: tuple[type[Any], ...] = ()
        # One object per listener so that event.remove finds exactly what event.listen got.
        self._listeners: tuple[tuple[str, Any], ...] = (
            ("after_flush", self._after_flush),
            ("before_commit", self._before_commit),
            ("after_transaction_create", self._after_transaction_create),
            ("after_soft_rollback", self._after_soft_rollback),
            ("after_transaction_end", self._after_transaction_end),
            ("after_attach", self._after_attach),
            ("do_orm_execute", self._do_orm_execute),
        )
        # async_sessionmaker -> the sync_session_class value install() replaced.
        self._replaced_sync_class: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"Outbox(table={self.table.fullname!r})"

    # -- installation -------------------------------------------------------------------------

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
        with _install_lock:
            cls = self._session_class(target, create=True)
            owner = _installed.get(cls)
            if owner is self:
                return
            if owner is not None:
                raise ConfigurationError(
                    f"{cls.__qualname__} already has {owner!r} installed; a session factory holds "
                    f"one Outbox (uninstall it first, or use a separate sessionmaker)"
                )
            for name, fn in self._listeners:
                sa_event.listen(cls, name, fn)
            _installed[cls] = self

    def uninstall(self, target: Any) -> None:
        """Remove the hooks `install` added for `target`. Harmless when not installed."""
        with _install_lock:
            cls = self._session_class(target, create=False)
            if _installed.get(cls) is not self:
                return
            for name, fn in self._listeners:
                if sa_event.contains(cls, name, fn):
                    sa_event.remove(cls, name, fn)
            del _installed[cls]
            if target in self._replaced_sync_class:
                previous = self._replaced_sync_class.pop(target)
                if previous is None:
                    target.kw.pop("sync_session_class", None)
                else:
                    target.kw["sync_session_class"] = previous

    def _session_class(self, target: Any, *, create: bool) -> type[Session]:
        if isinstance(target, scoped_session):
            target = target.session_factory
        if isinstance(target, sessionmaker):
            return cast(type[Session], target.class_)
        if isinstance(target, type) and issubclass(target, Session):
            return target
        asyncio_ext = sys.modules.get("sqlalchemy.ext.asyncio")
        if asyncio_ext is not None:
            if isinstance(target, asyncio_ext.async_sessionmaker):
                given = target.kw.get("sync_session_class")
                if given is not None and given is not Session:
                    return cast(type[Session], given)
                if not create:
                    return Session
                # A private subclass: listeners on it reach only this factory's sessions.
                private = type("OutboxSession", (Session,), {})
                self._replaced_sync_class[target] = given
                target.kw["sync_session_class"] = private
                return private
            if isinstance(target, type) and issubclass(target, asyncio_ext.AsyncSession):
                return cast(type[Session], cast(Any, target).sync_session_class)
        raise ConfigurationError(
            "install() takes a Session class, a sessionmaker, a scoped_session, an "
            f"async_sessionmaker or an AsyncSession class, not {target!r}"
        )

    def capture(self, *classes: type[Any]) -> None:
        """Record an event for every ORM insert, update and delete of `classes`.

        Event types are ``<table>.created``, ``<table>.updated``, ``<table>.deleted``; topic and
        aggregate type are the table name, the aggregate id the primary key. The payload is
        ``{"row": {column: value}}`` (loaded columns only: server-generated values appear only
        if loaded, e.g. with ``eager_defaults``); updates add ``"changed": [column names]``.
        Binary column values are base64 text.

        Only the flush is seen: ORM bulk statements (``session.execute(update(...))``,
        ``insert(...)`` with a list of rows, ``bulk_save_objects``) and Core statements bypass it
        and record nothing (bulk statements through a session raise `CaptureBypassedWarning`).
        """
        added: list[type[Any]] = []
        for cls in classes:
            try:
                sa.inspect(cls)
            except NoInspectionAvailable:
                raise ConfigurationError(f"capture() takes mapped classes, not {cls!r}") from None
            if cls not in self._captured:
                added.append(cls)
        self._captured = (*self._captured, *added)

    def check_table(self, bind: sa.Engine | sa.Connection) -> None:
        """Raise `TableMissingError` unless the outbox table exists with every column we write."""
        inspector = sa.inspect(bind)
        if not inspector.has_table(self.table.name, schema=self.schema):
            raise TableMissingError(self._missing_message())
        present = {c["name"] for c in inspector.get_columns(self.table.name, schema=self.schema)}
        missing = sorted({c.name for c in self.table.columns} - present)
        if missing:
            raise TableMissingError(
                f"outbox table {self.table.fullname!r} lacks columns {', '.join(missing)}: "
                "run `outbox migrate --db-url URL` or `alembic upgrade heads`"
            )

    def _missing_message(self) -> str:
        return (
            f"outbox table {self.table.fullname!r} does not exist: run "
            "`outbox migrate --db-url URL` or `alembic upgrade heads` (with outbox's "
            "revisions in version_locations) before writing events"
        )

    # -- emitting -----------------------------------------------------------------------------

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
        rollback. `session` is a `Session` or `AsyncSession` whose factory was installed.

        Raises `PayloadError` if `payload` or `headers` cannot be serialized or the payload is
        over `max_payload_bytes`; `ConfigurationError` for an invalid type, aggregate, key or
        topic; `NotInstalledError` if `install` was never called for this session's factory.
        """
        sync = _sync_session(session)
        if not self._is_installed_on(sync):
            raise NotInstalledError(
                f"{self!r} is not installed on {_describe(sync)}: call outbox.install(...) with "
                "your sessionmaker, async_sessionmaker or Session class once at startup"
            )
        draft = _make_draft(
            type,
            payload,
            max_bytes=self.max_payload_bytes,
            aggregate_type=_check_text(aggregate_type, "aggregate_type"),
            aggregate_id=_check_text(aggregate_id, "aggregate_id"),
            key=key,
            topic=topic,
            headers=headers,
        )
        self._enqueue(sync, draft)
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
        sync = _sync_session(session)
        buffer = self._buffer(sync, create=False)
        if buffer is not None and buffer.drafts:
            sync.flush()
            self._write(sync, buffer, [], final=True)

    def _is_installed_on(self, session: Session) -> bool:
        return any(_installed.get(cls) is self for cls in type(session).__mro__)

    def _buffer(self, session: Session, *, create: bool = True) -> _SessionBuffer | None:
        buffer = session.info.get(self)
        if buffer is None and create:
            buffer = session.info[self] = _SessionBuffer()
        return cast("_SessionBuffer | None", buffer)

    def _enqueue(self, session: Session, draft: _Draft) -> None:
        draft.tx = _current_transaction(session)
        buffer = self._buffer(session)
        assert buffer is not None
        buffer.drafts.append(draft)

    # -- session hooks ------------------------------------------------------------------------

    def _after_flush(self, session: Session, flush_context: UOWTransaction) -> None:
        """Write buffered events and capture events inside the flush (see the module docs)."""
        captured = self._capture_drafts(session) if self._captured else []
        buffer = self._buffer(session, create=bool(captured))
        if buffer is not None and (buffer.drafts or captured):
            self._write(session, buffer, captured, final=False)

    def _before_commit(self, session: Session) -> None:
        """Write what is still buffered: a clean session's commit skips the flush."""
        buffer = self._buffer(session, create=False)
        if buffer is None or not buffer.drafts:
            return
        # Entity events need their rows' primary keys: flush first (a no-op when clean).
        session.flush()
        if buffer.drafts:
            self._write(session, buffer, [], final=True)

    def _after_transaction_create(self, session: Session, transaction: SessionTransaction) -> None:
        """Write buffered events before a savepoint starts, as ``begin_nested()`` flushes first.

        The SAVEPOINT itself is emitted lazily, so the rows go to the enclosing transaction's
        connection ahead of it. Every buffered event is thus always tagged with the innermost
        transaction, and is written in the transaction it was emitted in: a rolled-back
        savepoint cannot take earlier events with it.
        """
        if not transaction.nested or transaction.parent is None:
            return
        buffer = self._buffer(session, create=False)
        if buffer is not None and buffer.drafts:
            self._write(session, buffer, [], final=False, transaction=transaction.parent)

    def _after_soft_rollback(self, session: Session, previous: SessionTransaction) -> None:
        """Drop the buffered events of a rolled-back savepoint; flushed ones rolled back in SQL."""
        if not previous.nested:
            return  # The outermost rollback ends the transaction: after_transaction_end clears.
        buffer = self._buffer(session, create=False)
        if buffer is None:
            return
        buffer.drafts = [d for d in buffer.drafts if not _within(d.tx, previous)]
        if buffer.notified_in is not None and _within(buffer.notified_in, previous):
            buffer.notified_in = None  # That NOTIFY was rolled back with the savepoint.

    def _after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        """Forget the buffer when the outermost transaction ends (commit, rollback or close)."""
        if transaction.parent is None:
            session.info.pop(self, None)

    def _after_attach(self, session: Session, instance: object) -> None:
        """Move events recorded on a detached entity into the session it joins."""
        drafts = getattr(instance, "__dict__", {}).pop(_ENTITY_DRAFTS, None)
        if not drafts:
            return
        for draft in drafts:
            # The size cap of this outbox applies now that the outbox is known.
            serialize_payload(draft.payload, draft.type, self.max_payload_bytes)
            self._enqueue(session, draft)

    def _do_orm_execute(self, state: ORMExecuteState) -> None:
        """Warn that bulk statements on captured classes bypass the flush (and `capture`)."""
        if not self._captured or not (state.is_update or state.is_delete or state.is_insert):
            return
        mapper = state.bind_mapper
        if mapper is not None and issubclass(mapper.class_, self._captured):
            warnings.warn(
                f"ORM bulk statement on captured class {mapper.class_.__qualname__}: it bypasses "
                "the flush, so outbox.capture() records no event for it",
                CaptureBypassedWarning,
                stacklevel=4,
            )

    # -- capture --------------------------------------------------------------------------------

    def _capture_drafts(self, session: Session) -> list[_Draft]:
        drafts: list[_Draft] = []
        for op, objects in (
            ("created", session.new),
            ("updated", session.dirty),
            ("deleted", session.deleted),
        ):
            for obj in objects:
                if isinstance(obj, self._captured):
                    draft = self._capture_draft(obj, op)
                    if draft is not None:
                        drafts.append(draft)
        return drafts

    def _capture_draft(self, obj: object, op: str) -> _Draft | None:
        state, mapper = _mapper_of(obj)
        row: dict[str, Any] = {}
        changed: list[str] = []
        for prop in mapper.column_attrs:
            column = prop.columns[0]
            if not isinstance(column, sa.Column):
                continue  # column_property() over an expression: not a column of the row
            if prop.key in state.dict:
                value = state.dict[prop.key]
                if isinstance(value, bytes | bytearray | memoryview):
                    import base64

                    value = base64.b64encode(bytes(value)).decode("ascii")
                row[column.name] = value
            if op == "updated" and state.attrs[prop.key].history.has_changes():
                changed.append(column.name)
        if op == "updated" and not changed:
            return None  # Marked dirty without a column change (or a relationship-only change).
        payload: dict[str, Any] = {"row": row}
        if op == "updated":
            payload["changed"] = changed
        table = _table_name(mapper)
        event_type = f"{table}.{op}"
        return _make_draft(
            event_type,
            payload,
            max_bytes=self.max_payload_bytes,
            aggregate_type=table,
            aggregate_id=_identity_of(obj) or "",
            key=None,
            topic=table,
            headers=None,
        )

    # -- writing --------------------------------------------------------------------------------

    def _write(
        self,
        session: Session,
        buffer: _SessionBuffer,
        extra: list[_Draft],
        *,
        final: bool,
        transaction: SessionTransaction | None = None,
    ) -> None:
        """Insert the buffered events (plus `extra`) in emit order with multi-row INSERTs.

        The rows go to `transaction` (default: the session's current one).
        """
        rows: list[dict[str, Any]] = []
        sizes: list[int] = []
        kept: list[_Draft] = []
        drafts = sorted([*buffer.drafts, *extra], key=lambda d: d.id)
        for draft in drafts:
            if not self._resolve(draft):
                if final:
                    raise ConfigurationError(
                        f"event {draft.type!r} was recorded on {draft.entity!r}, which has no "
                        "primary key: add the entity to the session before committing"
                    )
                kept.append(draft)
                continue
            rows.append(
                {
                    "id": draft.id,
                    "aggregatetype": draft.aggregate_type,
                    "aggregateid": draft.aggregate_id,
                    "type": draft.type,
                    "payload": draft.payload,
                    "topic": draft.topic,
                    "key": draft.key,
                    "headers": draft.headers if draft.headers else sa.null(),
                    "created_at": draft.created_at,
                }
            )
            sizes.append(len(draft.payload or b""))
        if rows:
            clause = self.table.insert()
            connection = (
                session.connection(bind_arguments={"clause": clause})
                if transaction is None
                else transaction.connection(None, clause=clause)
            )
            notify = (
                self.notify
                and connection.dialect.name == "postgresql"
                and buffer.notified_in is None
            )
            self._insert(connection, rows, sizes, notify=notify)
            if notify:
                buffer.notified_in = transaction or _current_transaction(session)
        buffer.drafts = kept

    def _resolve(self, draft: _Draft) -> bool:
        """Fill an entity event's aggregate type and id; False while its key is unknown."""
        if draft.entity is None:
            return True
        if draft.aggregate_type is None:
            draft.aggregate_type = _table_name(_mapper_of(draft.entity)[1])
        if draft.aggregate_id is None:
            draft.aggregate_id = _identity_of(draft.entity)
            if draft.aggregate_id is None:
                return False
        return True

    def _insert(
        self,
        connection: sa.Connection,
        rows: list[dict[str, Any]],
        sizes: list[int],
        *,
        notify: bool = False,
    ) -> None:
        """Insert `rows` in order; with `notify`, also NOTIFY the relays (PostgreSQL), in the
        same statement as a single row (no extra round trip) or as one more statement."""
        max_rows = _rows_per_statement(connection.dialect)
        start = 0
        while start < len(rows):
            end, budget = start, 0
            while end < len(rows) and end - start < max_rows:
                if end > start and budget + sizes[end] > _STATEMENT_PAYLOAD_BUDGET:
                    break
                budget += sizes[end]
                end += 1
            try:
                if end - start == 1:
                    # One row, the common case: a statement built once, so that SQLAlchemy's
                    # compiled cache serves it (a multi-row VALUES clause is compiled every
                    # time). With `notify`, the relays' NOTIFY rides in the same round trip:
                    # `WITH i AS (INSERT ...) SELECT pg_notify(...)`.
                    statement = self._notifying_insert if notify else self._one_row_insert
                    values = {
                        f"p_{k}": (None if v is sa.null() else v) for k, v in rows[start].items()
                    }
                    connection.execute(statement, values)
                    notify = False
                else:
                    connection.execute(self.table.insert().values(rows[start:end]))
            except DBAPIError as exc:
                if _is_missing_table(exc):
                    raise TableMissingError(self._missing_message()) from exc
                raise
            start = end
        if notify:
            connection.execute(sa.select(sa.func.pg_notify(self.notify_channel, "")))

    @functools.cached_property
    def _one_row_insert(self) -> sa.Insert:
        """One row's INSERT with a parameter per column, built once so that SQLAlchemy's
        compiled cache serves it."""
        table = self.table
        return table.insert().values(
            {
                name: sa.bindparam(
                    f"p_{name}",
                    # none_as_null: a NULL headers column, not the JSON value 'null'.
                    type_=sa.JSON(none_as_null=True) if name == "headers" else table.c[name].type,
                )
                for name in _INSERTED_COLUMNS
            }
        )

    @functools.cached_property
    def _notifying_insert(self) -> sa.Select[Any]:
        """`_one_row_insert` and the relays' NOTIFY as one statement (PostgreSQL)."""
        channel = sa.literal(self.notify_channel)
        insert = self._one_row_insert.cte("outbox_insert")
        return sa.select(sa.func.pg_notify(channel, sa.literal(""))).add_cte(insert)

    def _record_entity_event(self, session: Session, draft: _Draft) -> None:
        self._enqueue(session, draft)
        # Makes the next flush visit the entity, even if none of its columns changed.
        flag_dirty(draft.entity)


#: The columns the write side fills (the rest have defaults or belong to the relay).
_INSERTED_COLUMNS = (
    "id",
    "aggregatetype",
    "aggregateid",
    "type",
    "payload",
    "topic",
    "key",
    "headers",
    "created_at",
)


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
    outbox = _outbox_for(session) if session is not None else None
    if session is not None and outbox is None:
        raise NotInstalledError(
            f"no Outbox is installed on {_describe(session)}: call outbox.install(...) with "
            "your sessionmaker, async_sessionmaker or Session class once at startup"
        )
    draft = _make_draft(
        event_type,
        payload,
        # Outside a session the outbox (and its size cap) is unknown until the entity is added.
        max_bytes=None if outbox is None else outbox.max_payload_bytes,
        aggregate_type=None
        if aggregate_type is None
        else _check_text(aggregate_type, "aggregate_type"),
        aggregate_id=None,
        key=key,
        topic=topic,
        headers=headers,
        entity=entity,
    )
    if session is None or outbox is None:
        entity.__dict__.setdefault(_ENTITY_DRAFTS, []).append(draft)
    else:
        outbox._record_entity_event(session, draft)
    return draft.id


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
