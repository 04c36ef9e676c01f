"""The per-session buffer: events waiting in ``session.info`` for the session's next write.

One buffer per (session, Outbox), kept in the session itself: no shared state, so the write side
is thread-safe by construction. Each event remembers the innermost transaction it was emitted in,
which is what lets a rolled-back savepoint drop exactly its own events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from sqlalchemy.orm import Session, SessionTransaction

from outbox.write.draft import Draft


@dataclass(slots=True, eq=False)
class SessionBuffer:
    """The outbox's state for one session transaction, kept in ``session.info``."""

    drafts: list[Draft] = field(default_factory=list)
    #: The transaction that ran pg_notify (None: none yet, or it rolled back with a savepoint).
    notified_in: SessionTransaction | None = None


def buffer_of(session: Session, owner: object, *, create: bool = True) -> SessionBuffer | None:
    """`owner`'s buffer in `session` (made now with `create`); `owner` is the info key."""
    buffer = session.info.get(owner)
    if buffer is None and create:
        buffer = session.info[owner] = SessionBuffer()
    return cast("SessionBuffer | None", buffer)


def enqueue(session: Session, owner: object, draft: Draft) -> None:
    draft.tx = current_transaction(session)
    buffer = buffer_of(session, owner)
    assert buffer is not None
    buffer.drafts.append(draft)


def within(tx: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while tx is not None:
        if tx is ancestor:
            return True
        tx = tx.parent
    return False


def current_transaction(session: Session) -> SessionTransaction:
    """The innermost transaction of `session`, begun now if the session has none yet.

    Beginning mirrors `Session.add()`, which also autobegins: every buffered event then belongs
    to a transaction whose end (commit, rollback, close) the session events report.
    """
    tx = session.get_nested_transaction() or session.get_transaction()
    return tx if tx is not None else session.begin()
