"""The write side against real PostgreSQL, MariaDB and SQLite: events live and die with the
application's transaction, in emit order, with the exact bytes the relay will send."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pydantic
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from outbox.errors import ConfigurationError, TableMissingError
from outbox.write.entity import EventSource
from outbox.write.outbox import CaptureBypassedWarning, Outbox
from tests.support import write_engine

pytestmark = pytest.mark.integration


class Base(DeclarativeBase):
    pass


class Order(Base, EventSource):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    total: Mapped[str] = mapped_column(sa.String(20), default="0")

    def place(self) -> uuid.UUID:
        return self.record_event("OrderPlaced", {"total": self.total})


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    photo: Mapped[bytes | None] = mapped_column(sa.LargeBinary, nullable=True)


@dataclass
class World:
    engine: sa.Engine
    outbox: Outbox
    maker: sessionmaker[Session]

    def rows(self) -> list[sa.Row[Any]]:
        """The outbox rows as another connection sees them, in seq order."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(self.outbox.table).order_by("seq")))

    def types(self) -> list[str]:
        return [r.type for r in self.rows()]


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    engine = write_engine(db_url)
    outbox = Outbox()
    outbox.metadata.create_all(engine)
    Base.metadata.create_all(engine)
    maker = sessionmaker(engine)
    outbox.install(maker)
    try:
        yield World(engine, outbox, maker)
    finally:
        outbox.uninstall(maker)
        engine.dispose()


def emit(world: World, session: Session, type: str, payload: Any = None, **kw: Any) -> uuid.UUID:
    kw.setdefault("aggregate_type", "order")
    kw.setdefault("aggregate_id", "1")
    return world.outbox.emit(session, type, payload, **kw).id


def test_events_become_visible_exactly_at_commit(world: World) -> None:
    with world.maker() as session:
        emit(world, session, "A", {"n": 1})
        session.add(Customer(name="ann"))
        emit(world, session, "B", {"n": 2})
        session.flush()  # the flush writes both events, in this transaction only
        assert world.rows() == []
        assert (
            session.execute(sa.select(sa.func.count()).select_from(world.outbox.table)).scalar()
            == 2
        )
        session.commit()
    assert world.types() == ["A", "B"]


def test_rollback_leaves_no_event(world: World) -> None:
    with world.maker() as session:
        emit(world, session, "Flushed")
        session.add(Customer(name="ann"))
        session.flush()
        emit(world, session, "Buffered")
        session.rollback()
        emit(world, session, "Closed")  # a session closed without commit rolls back too
    with world.maker() as session:
        emit(world, session, "Kept")
        session.commit()
    assert world.types() == ["Kept"]


def test_rolled_back_savepoint_discards_exactly_its_events(world: World) -> None:
    with world.maker() as session:
        emit(world, session, "before")  # buffered across the savepoint
        savepoint = session.begin_nested()
        emit(world, session, "flushed-inside")
        session.add(Customer(name="ann"))
        session.flush()
        emit(world, session, "buffered-inside")
        savepoint.rollback()
        emit(world, session, "after")
        with session.begin_nested():  # released: its events stay
            emit(world, session, "released")
        outer = session.begin_nested()
        inner = session.begin_nested()
        emit(world, session, "inner-of-rolled-back")
        inner.commit()
        outer.rollback()
        session.commit()
    assert world.types() == ["before", "after", "released"]
    with world.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Customer)).scalar() == 0


def test_emit_only_transaction_is_written(world: World) -> None:
    with world.maker() as session:  # clean session: commit() runs no flush
        emit(world, session, "Only")
        session.commit()
    with world.maker.begin() as session:
        emit(world, session, "InBegin")
    with world.maker() as session:  # with other pending changes too
        session.add(Customer(name="bob"))
        emit(world, session, "WithChanges")
        session.commit()
    assert world.types() == ["Only", "InBegin", "WithChanges"]


def test_order_within_and_across_transactions(world: World) -> None:
    expected: list[uuid.UUID] = []
    with world.maker() as session:
        for i in range(3):
            expected.append(emit(world, session, f"t1-{i}"))
        session.add(Customer(name="c"))
        session.flush()  # written here
        for i in range(3, 6):
            expected.append(emit(world, session, f"t1-{i}"))  # written at commit
        session.commit()
    with world.maker() as session:
        expected.append(emit(world, session, "t2"))
        session.commit()
    rows = world.rows()
    assert [r.id for r in rows] == expected
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)
    assert expected == sorted(expected)  # ids are time-ordered too


def test_emit_through_async_style_begin_and_session_close(world: World) -> None:
    session = world.maker()
    emit(world, session, "Dropped")
    session.close()  # the transaction ends: the buffer goes with it
    session = world.maker()
    emit(world, session, "Kept")
    session.commit()
    session.close()
    assert world.types() == ["Kept"]


@dataclasses.dataclass
class Placed:
    order_id: uuid.UUID
    at: dt.datetime
    total: Decimal


class PlacedModel(pydantic.BaseModel):
    order_id: uuid.UUID
    day: dt.date


ORDER_ID = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")
AT = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("payload", "stored"),
    [
        (
            {"id": ORDER_ID, "total": Decimal("9.90"), "name": "Zoë"},
            '{"id":"01890a5d-ac96-774b-bcce-b302099a8057","total":"9.90","name":"Zoë"}'.encode(),
        ),
        ([1, AT], b'[1,"2024-05-06T07:08:09.123456+00:00"]'),
        ("text é", "text é".encode()),
        (b"\x00\xff\x10binary", b"\x00\xff\x10binary"),
        (
            Placed(ORDER_ID, AT, Decimal("1.5")),
            b'{"order_id":"01890a5d-ac96-774b-bcce-b302099a8057",'
            b'"at":"2024-05-06T07:08:09.123456+00:00","total":"1.5"}',
        ),
        (
            PlacedModel(order_id=ORDER_ID, day=dt.date(2024, 5, 6)),
            b'{"order_id":"01890a5d-ac96-774b-bcce-b302099a8057","day":"2024-05-06"}',
        ),
        (None, None),
    ],
    ids=["dict", "list", "str", "bytes", "dataclass", "pydantic", "tombstone"],
)
def test_payload_is_stored_as_the_exact_bytes(
    world: World, payload: Any, stored: bytes | None
) -> None:
    with world.maker() as session:
        event = world.outbox.emit(session, "E", payload, aggregate_type="order", aggregate_id=7)
        session.commit()
    (row,) = world.rows()
    assert row.payload == stored == event.payload


def test_row_contents(world: World) -> None:
    before = dt.datetime.now(dt.UTC)
    with world.maker() as session:
        full = world.outbox.emit(
            session,
            "Full",
            {"a": 1},
            aggregate_type="order",
            aggregate_id=42,
            key="customer-9",
            topic="orders.v1",
            headers={"tenant": "acme", "raw": b"bytes"},
        )
        bare = world.outbox.emit(session, "Bare", None, aggregate_type="order", aggregate_id="43")
        empty = world.outbox.emit(session, "Empty", b"", aggregate_type="order", aggregate_id="4")
        text = world.outbox.emit(session, "Text", "h\u00e9", aggregate_type="o", aggregate_id="5")
        own = world.outbox.emit(
            session,
            "Own",
            "x",
            aggregate_type="o",
            aggregate_id="6",
            headers={"Content-Type": "a/b"},
        )
        session.commit()
    first, second, third, fourth, fifth = world.rows()
    assert (first.id, first.aggregatetype, first.aggregateid, first.type) == (
        full.id,
        "order",
        "42",
        "Full",
    )
    assert (first.key, first.topic, first.headers) == (
        "customer-9",
        "orders.v1",
        {"tenant": "acme", "raw": "bytes"},
    )
    assert (second.id, second.key, second.topic, second.headers, second.payload) == (
        bare.id,
        None,
        None,
        None,
        None,
    )
    # Text and bytes say what they are (JSON, the default, needs no header); the caller's wins.
    assert (third.id, third.payload, third.headers) == (
        empty.id,
        b"",
        {"content-type": "application/octet-stream"},
    )
    assert (fourth.id, fourth.payload, fourth.headers) == (
        text.id,
        "h\u00e9".encode(),
        {"content-type": "text/plain; charset=utf-8"},
    )
    assert (fifth.id, fifth.headers) == (own.id, {"Content-Type": "a/b"})
    assert dict(text.headers) == {"content-type": "text/plain; charset=utf-8"}
    assert (first.attempts, first.published_at, first.parked_at) == (0, None, None)
    # A transaction's only event takes the one-row statement: no headers are SQL NULL there
    # too, not the JSON value 'null'.
    with world.maker() as session:
        world.outbox.emit(session, "Alone", {"a": 2}, aggregate_type="order", aggregate_id="44")
        session.commit()
    table = world.outbox.table
    with world.engine.connect() as conn:
        no_headers = sa.select(table.c.type).where(table.c.headers.is_(None)).order_by("seq")
        assert conn.execute(no_headers).scalars().all() == ["Bare", "Alone"]
    # Stored in UTC; SQLite and MariaDB return naive values.
    created = first.created_at.replace(tzinfo=first.created_at.tzinfo or dt.UTC)
    assert created == full.created_at
    assert before <= created <= before + dt.timedelta(minutes=1)


def test_missing_table_fails_clearly(world: World) -> None:
    world.outbox.metadata.drop_all(world.engine)
    with pytest.raises(
        TableMissingError, match="run `outbox migrate --db-url URL` or `alembic upgrade heads`"
    ):
        world.outbox.check_table(world.engine)
    with world.maker() as session:
        emit(world, session, "Lost")
        with pytest.raises(TableMissingError, match="outbox table 'outbox' does not exist"):
            session.commit()
        session.rollback()
    world.outbox.metadata.create_all(world.engine)
    with world.engine.connect() as conn:
        world.outbox.check_table(conn)


def test_entity_events_default_to_table_and_primary_key(world: World) -> None:
    with world.maker() as session:
        order = Order(total="9.90")
        first = order.place()  # before add: waits on the entity
        session.add(order)
        direct = emit(world, session, "Direct")
        second = order.record_event("Custom", None, aggregate_type="sale", key="k", topic="sales")
        session.commit()
        order_id = order.id
    with world.maker() as session:
        order = session.get(Order, order_id)
        assert order is not None
        third = order.place()  # a persistent entity with no column change still writes
        session.commit()
    with world.maker() as session:
        order = session.get(Order, order_id)
        assert order is not None
        session.delete(order)
        fourth = order.record_event("OrderDeleted", None)
        session.commit()
    rows = world.rows()
    assert [r.id for r in rows] == [first, direct, second, third, fourth]
    assert [(r.aggregatetype, r.aggregateid) for r in rows] == [
        ("orders", str(order_id)),
        ("order", "1"),
        ("sale", str(order_id)),
        ("orders", str(order_id)),
        ("orders", str(order_id)),
    ]
    assert (rows[2].key, rows[2].topic) == ("k", "sales")
    assert rows[0].payload == b'{"total":"9.90"}'


def test_entity_event_on_a_rolled_back_savepoint_is_dropped(world: World) -> None:
    with world.maker() as session:
        order = Order(total="1")
        session.add(order)
        session.flush()
        savepoint = session.begin_nested()
        order.place()
        savepoint.rollback()
        kept = order.record_event("Kept", None)
        session.commit()
    assert [r.id for r in world.rows()] == [kept]


def test_entity_never_added_fails_the_commit(world: World) -> None:
    with world.maker() as session:
        order = Order(total="1")
        session.add(order)
        order.place()
        session.expunge(order)
        with pytest.raises(ConfigurationError, match="has no primary key"):
            session.commit()
        session.rollback()
    assert world.rows() == []


def test_capture_records_inserts_updates_and_deletes(world: World) -> None:
    world.outbox.capture(Customer)
    with world.maker() as session:
        customer = Customer(name="ann", photo=b"\x01\x02")
        session.add(customer)
        session.commit()
        customer_id = customer.id
        customer.name = "anne"
        session.commit()
        session.get(Customer, customer_id)  # loaded, unchanged: no event
        session.commit()
        session.delete(customer)
        session.commit()
    rows = world.rows()
    assert [r.type for r in rows] == ["customers.created", "customers.updated", "customers.deleted"]
    assert {(r.topic, r.aggregatetype, r.aggregateid) for r in rows} == {
        ("customers", "customers", str(customer_id))
    }
    created, updated, deleted = (json.loads(r.payload) for r in rows)
    assert created == {"row": {"id": customer_id, "name": "ann", "photo": "AQI="}}
    assert updated == {
        "row": {"id": customer_id, "name": "anne", "photo": "AQI="},
        "changed": ["name"],
    }
    assert deleted["row"]["id"] == customer_id


def test_capture_cannot_see_bulk_statements_and_says_so(world: World) -> None:
    world.outbox.capture(Customer)
    with world.maker() as session:
        session.add(Customer(name="ann"))
        session.commit()
        with pytest.warns(CaptureBypassedWarning, match="bypasses the flush"):
            session.execute(sa.update(Customer).values(name="bulk"))
        session.commit()
    assert world.types() == ["customers.created"]


def test_custom_table_name(db_url: str) -> None:
    engine = write_engine(db_url)
    outbox = Outbox(table_name="events_outbox")
    outbox.metadata.create_all(engine)
    maker = sessionmaker(engine)
    outbox.install(maker)
    try:
        with maker() as session:
            outbox.emit(session, "E", {}, aggregate_type="a", aggregate_id="1")
            session.commit()
        with engine.connect() as conn:
            assert conn.execute(sa.select(outbox.table.c.type)).scalars().all() == ["E"]
    finally:
        outbox.metadata.drop_all(engine)
        engine.dispose()


def test_outer_rollback_discards_a_released_savepoint(world: World) -> None:
    # On SQLite this needs fix_sqlite_transactions: the SAVEPOINT is the first statement.
    with world.maker() as session:
        with session.begin_nested():
            emit(world, session, "InReleasedSavepoint")
            session.add(Customer(name="ann"))
        session.rollback()
    assert world.rows() == []
