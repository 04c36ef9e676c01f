"""`scoped_session` (Flask-SQLAlchemy's `db.session`) is a session for the write side."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import scoped_session, sessionmaker

from outbox.errors import ConfigurationError
from outbox.write.outbox import Outbox
from tests.integration.test_write_side import Base, Customer, Order
from tests.support import async_url, write_engine

pytestmark = pytest.mark.integration


def _rows(engine: sa.Engine, outbox: Outbox) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(outbox.table).order_by("seq")))


def test_scoped_session_for_emit_flush_entities_and_capture(db_url: str) -> None:
    engine = write_engine(db_url)
    outbox = Outbox()
    outbox.metadata.create_all(engine)
    Base.metadata.create_all(engine)
    Session = scoped_session(sessionmaker(engine))
    outbox.install(Session)
    outbox.capture(Customer)
    try:
        event = outbox.emit(Session, "Direct", {"n": 1}, aggregate_type="order", aggregate_id="1")
        outbox.flush(Session)  # written now, in the scope's transaction
        assert Session.execute(sa.select(sa.func.count()).select_from(outbox.table)).scalar() == 1
        order = Order(total="2.50")
        Session.add(order)
        entity_event = order.place()
        Session.add(Customer(name="ann"))
        Session.commit()
        rows = _rows(engine, outbox)
        assert [r.id for r in rows[:2]] == [event.id, entity_event]
        assert [r.type for r in rows] == ["Direct", "OrderPlaced", "customers.created"]

        # Another thread has its own scope: its rollback discards only its own event.
        def other_scope() -> None:
            outbox.emit(Session, "Discarded", None, aggregate_type="order", aggregate_id="2")
            Session.rollback()
            Session.remove()

        worker = threading.Thread(target=other_scope)
        worker.start()
        worker.join()
        outbox.emit(Session, "Kept", None, aggregate_type="order", aggregate_id="3")
        Session.commit()
        assert [r.type for r in _rows(engine, outbox)][-1] == "Kept"
        assert "Discarded" not in [r.type for r in _rows(engine, outbox)]
    finally:
        Session.remove()
        outbox.uninstall(Session)
        engine.dispose()


def test_async_scoped_session(sqlite_url: str) -> None:
    from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker, create_async_engine

    sync_engine = write_engine(sqlite_url)
    outbox = Outbox()
    outbox.metadata.create_all(sync_engine)

    async def main() -> None:
        engine = create_async_engine(async_url(sqlite_url))
        Session = async_scoped_session(async_sessionmaker(engine), scopefunc=asyncio.current_task)
        outbox.install(Session)
        try:
            outbox.emit(Session, "AsyncScoped", b"x", aggregate_type="a", aggregate_id="1")
            await Session.commit()
        finally:
            await Session.remove()
            outbox.uninstall(Session)
            await engine.dispose()

    try:
        asyncio.run(main())
        assert [r.type for r in _rows(sync_engine, outbox)] == ["AsyncScoped"]
    finally:
        sync_engine.dispose()


def test_other_objects_are_refused_naming_what_is_accepted() -> None:
    with pytest.raises(ConfigurationError, match="Session, AsyncSession or scoped_session"):
        Outbox().emit(object(), "T", None, aggregate_type="a", aggregate_id="1")
