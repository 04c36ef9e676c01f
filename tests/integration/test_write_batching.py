"""The write path is cheap: one multi-row INSERT per flush (chunked under driver limits), plus
one pg_notify per transaction on PostgreSQL, and nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import outbox.write.writer
from outbox.write.outbox import Outbox
from tests.support import write_engine

pytestmark = pytest.mark.integration


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)


class Statements:
    """Every SQL statement sent to the database, as the driver got it."""

    def __init__(self, engine: sa.Engine) -> None:
        self.seen: list[str] = []
        self.engine = engine
        sa.event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen.append(" ".join(statement.split()))

    def outbox_inserts(self) -> list[str]:
        # On PostgreSQL a lone row shares its statement with the NOTIFY: WITH ... INSERT.
        return [
            s
            for s in self.seen
            if (s.upper().startswith("INSERT INTO") and "outbox" in s[:30])
            or s.startswith("WITH outbox_insert AS")
        ]

    def notifies(self) -> list[str]:
        return [s for s in self.seen if "pg_notify" in s]

    def clear(self) -> None:
        self.seen.clear()


def emit_many(outbox: Outbox, session: Session, count: int, payload: bytes = b"{}") -> None:
    for i in range(count):
        outbox.emit(session, f"E{i}", payload, aggregate_type="item", aggregate_id=str(i))


@pytest.fixture
def setup(db_url: str) -> Iterator[tuple[sa.Engine, Outbox, sessionmaker[Session]]]:
    engine = write_engine(db_url)
    box = Outbox()
    box.metadata.create_all(engine)
    Base.metadata.create_all(engine)
    maker = sessionmaker(engine)
    box.install(maker)
    yield engine, box, maker
    engine.dispose()


def stored_types(engine: sa.Engine, box: Outbox) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(box.table.c.type).order_by(box.table.c.seq)).scalars())


def test_one_insert_for_many_events_and_no_other_round_trip(setup: Any) -> None:
    engine, box, maker = setup
    statements = Statements(engine)
    with maker() as session:
        emit_many(box, session, 50)
        session.commit()
    assert len(statements.outbox_inserts()) == 1
    others = [
        s
        for s in statements.seen
        if s not in statements.outbox_inserts() + statements.notifies() and s != "BEGIN"
    ]
    assert others == []  # no SELECT, no per-event statement
    expected_notifies = 1 if engine.dialect.name == "postgresql" else 0
    assert len(statements.notifies()) == expected_notifies
    assert stored_types(engine, box) == [f"E{i}" for i in range(50)]


def test_one_insert_per_flush_and_one_notify_per_transaction(setup: Any) -> None:
    engine, box, maker = setup
    statements = Statements(engine)
    with maker() as session:
        for flush in range(3):
            emit_many(box, session, 10)
            session.add(Item())
            session.flush()
            assert len(statements.outbox_inserts()) == flush + 1
        session.commit()
    assert len(statements.notifies()) == (1 if engine.dialect.name == "postgresql" else 0)
    assert len(stored_types(engine, box)) == 30


def test_large_batches_are_chunked_in_order(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, box, maker = setup
    monkeypatch.setattr(outbox.write.writer, "_rows_per_statement", lambda dialect: 10)
    statements = Statements(engine)
    with maker() as session:
        emit_many(box, session, 25)
        session.commit()
    assert len(statements.outbox_inserts()) == 3
    assert stored_types(engine, box) == [f"E{i}" for i in range(25)]


def test_statements_stay_under_a_payload_budget(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, box, maker = setup
    monkeypatch.setattr(outbox.write.writer, "_STATEMENT_PAYLOAD_BUDGET", 100)
    statements = Statements(engine)
    with maker() as session:
        emit_many(box, session, 5, payload=b"x" * 40)  # two rows fit in 100 bytes, not three
        box.emit(session, "Big", b"y" * 500, aggregate_type="item", aggregate_id="big")
        session.commit()
    assert len(statements.outbox_inserts()) == 4  # [2, 2, 1] and the oversized row alone
    assert stored_types(engine, box) == [f"E{i}" for i in range(5)] + ["Big"]


def test_notify_wakes_listeners_at_commit_only(pg_url: str) -> None:
    engine = write_engine(pg_url)
    box = Outbox()
    box.metadata.create_all(engine)
    Base.metadata.create_all(engine)
    maker = sessionmaker(engine)
    box.install(maker)
    conninfo = (
        sa.make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        with psycopg.connect(conninfo, autocommit=True) as listener:
            listener.execute(f'LISTEN "{box.notify_channel}"')
            with maker() as session:
                emit_many(box, session, 2)
                session.add(Item())
                session.flush()  # notified inside a transaction that then rolls back
                session.rollback()
            with psycopg.connect(conninfo, autocommit=True) as other:
                other.execute("SELECT pg_notify(%s, 'marker')", (box.notify_channel,))
            with maker() as session:
                savepoint = session.begin_nested()
                emit_many(box, session, 1)
                session.add(Item())
                session.flush()  # this NOTIFY rolls back with the savepoint...
                savepoint.rollback()
                emit_many(box, session, 1)
                session.commit()  # ...so the commit must notify again
            received = [(n.channel, n.payload) for n in listener.notifies(timeout=30, stop_after=2)]
        assert received == [(box.notify_channel, "marker"), (box.notify_channel, "")]
    finally:
        engine.dispose()


def test_notify_can_be_turned_off(pg_url: str) -> None:
    engine = write_engine(pg_url)
    box = Outbox(notify=False)
    box.metadata.create_all(engine)
    maker = sessionmaker(engine)
    box.install(maker)
    statements = Statements(engine)
    with maker() as session:
        emit_many(box, session, 3)
        session.commit()
    assert statements.notifies() == []
    assert len(statements.outbox_inserts()) == 1
    engine.dispose()
