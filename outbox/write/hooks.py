"""The session hooks: which session events write the buffered events, and why each is safe.

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

import warnings
from typing import Any

from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, UOWTransaction
from sqlalchemy.orm.attributes import flag_dirty

from outbox.write.buffer import SessionBuffer, buffer_of, enqueue, within
from outbox.write.capture import CaptureBypassedWarning, CaptureRegistry
from outbox.write.draft import Draft
from outbox.write.serialization import serialize_payload
from outbox.write.writer import OutboxWriter

#: Where an entity keeps the events it recorded before it was added to a session.
ENTITY_DRAFTS = "_outbox_pending_events"


class SessionHooks:
    """One Outbox's session event listeners, its per-session buffers and its entity events.

    `owner` (the Outbox) keys the buffer in ``session.info``, so several Outboxes on different
    factories never share one. `listeners` is what `SessionInstaller` registers and removes.
    """

    def __init__(
        self,
        owner: object,
        writer: OutboxWriter,
        capture: CaptureRegistry,
        *,
        max_payload_bytes: int | None,
    ) -> None:
        self.owner = owner
        self.writer = writer
        self.capture = capture
        self.max_payload_bytes = max_payload_bytes
        # One object per listener so that event.remove finds exactly what event.listen got.
        self.listeners: tuple[tuple[str, Any], ...] = (
            ("after_flush", self.after_flush),
            ("before_commit", self.before_commit),
            ("after_transaction_create", self.after_transaction_create),
            ("after_soft_rollback", self.after_soft_rollback),
            ("after_transaction_end", self.after_transaction_end),
            ("after_attach", self.after_attach),
            ("do_orm_execute", self.do_orm_execute),
        )

    def buffer(self, session: Session, *, create: bool = True) -> SessionBuffer | None:
        return buffer_of(session, self.owner, create=create)

    def enqueue(self, session: Session, draft: Draft) -> None:
        enqueue(session, self.owner, draft)

    def record_entity_event(self, session: Session, draft: Draft) -> None:
        self.enqueue(session, draft)
        # Makes the next flush visit the entity, even if none of its columns changed.
        flag_dirty(draft.entity)

    # -- the listeners (see the module docs for why each is the safe event) -------------------

    def after_flush(self, session: Session, flush_context: UOWTransaction) -> None:
        """Write buffered events and capture events inside the flush (see the module docs)."""
        captured = self.capture.drafts(session)
        buffer = self.buffer(session, create=bool(captured))
        if buffer is not None and (buffer.drafts or captured):
            self.writer.write(session, buffer, captured, final=False)

    def before_commit(self, session: Session) -> None:
        """Write what is still buffered: a clean session's commit skips the flush."""
        buffer = self.buffer(session, create=False)
        if buffer is None or not buffer.drafts:
            return
        # Entity events need their rows' primary keys: flush first (a no-op when clean).
        session.flush()
        if buffer.drafts:
            self.writer.write(session, buffer, [], final=True)

    def after_transaction_create(self, session: Session, transaction: SessionTransaction) -> None:
        """Write buffered events before a savepoint starts, as ``begin_nested()`` flushes first.

        The SAVEPOINT itself is emitted lazily, so the rows go to the enclosing transaction's
        connection ahead of it. Every buffered event is thus always tagged with the innermost
        transaction, and is written in the transaction it was emitted in: a rolled-back
        savepoint cannot take earlier events with it.
        """
        if not transaction.nested or transaction.parent is None:
            return
        buffer = self.buffer(session, create=False)
        if buffer is not None and buffer.drafts:
            self.writer.write(session, buffer, [], final=False, transaction=transaction.parent)

    def after_soft_rollback(self, session: Session, previous: SessionTransaction) -> None:
        """Drop the buffered events of a rolled-back savepoint; flushed ones rolled back in SQL."""
        if not previous.nested:
            return  # The outermost rollback ends the transaction: after_transaction_end clears.
        buffer = self.buffer(session, create=False)
        if buffer is None:
            return
        buffer.drafts = [d for d in buffer.drafts if not within(d.tx, previous)]
        if buffer.notified_in is not None and within(buffer.notified_in, previous):
            buffer.notified_in = None  # That NOTIFY was rolled back with the savepoint.

    def after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        """Forget the buffer when the outermost transaction ends (commit, rollback or close)."""
        if transaction.parent is None:
            session.info.pop(self.owner, None)

    def after_attach(self, session: Session, instance: object) -> None:
        """Move events recorded on a detached entity into the session it joins."""
        drafts = getattr(instance, "__dict__", {}).pop(ENTITY_DRAFTS, None)
        if not drafts:
            return
        for draft in drafts:
            # The size cap of this outbox applies now that the outbox is known.
            serialize_payload(draft.payload, draft.type, self.max_payload_bytes)
            self.enqueue(session, draft)

    def do_orm_execute(self, state: ORMExecuteState) -> None:
        """Warn that bulk statements on captured classes bypass the flush (and `capture`)."""
        if not (state.is_update or state.is_delete or state.is_insert):
            return
        mapper = state.bind_mapper
        if mapper is not None and self.capture.covers(mapper.class_):
            warnings.warn(
                f"ORM bulk statement on captured class {mapper.class_.__qualname__}: it bypasses "
                "the flush, so outbox.capture() records no event for it",
                CaptureBypassedWarning,
                stacklevel=4,
            )
