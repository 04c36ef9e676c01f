"""The same guarantees through AsyncSession, with asyncpg and aiosqlite."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from outbox.errors import TableMissingError
from outbox.write.entity import EventSource
from outbox.write.outbox import Outbox, fix_sqlite_transactions
from tests.support import async_url

pytestmark = pytest.mark.integration


class Base(DeclarativeBase):
    pass


class Order(Base, EventSource):
    __tablename__ = "async_orders"
    id: Mapped[int] = mapped_column(primary_key=True)


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    base: str = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    yield async_url(base)


def make_engine(url: str) -> AsyncEngine:
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        fix_sqlite_transactions(engine)
    return engine


async def setup(engine: AsyncEngine, box: Outbox) -> async_sessionmaker[AsyncSession]:
    async with engine.begin() as conn:
        await conn.run_sync(box.metadata.create_all)
        await conn.run_sync(Base.metadata.create_all)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    box.install(maker)
    return maker


async def stored(engine: AsyncEngine, box: Outbox) -> list[sa.Row[Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(sa.select(box.table).order_by(box.table.c.seq))
        return list(result)


def emit(box: Outbox, session: AsyncSession, type: str) -> None:
    box.emit(session, type, {"t": type}, aggregate_type="order", aggregate_id="1")


def test_commit_rollback_and_savepoints(url: str) -> None:
    async def scenario() -> None:
        engine = make_engine(url)
        box = Outbox()
        try:
            maker = await setup(engine, box)
            async with maker() as session:
                emit(box, session, "RolledBack")
                session.add(Order())
                await session.flush()
                await session.rollback()
            async with maker() as session:
                emit(box, session, "before")
                savepoint = await session.begin_nested()
                emit(box, session, "flushed-inside")
                session.add(Order())
                await session.flush()
                emit(box, session, "buffered-inside")
                await savepoint.rollback()
                order = Order()
                session.add(order)
                order.record_event("OrderPlaced", None)
                await session.flush()
                assert await stored(engine, box) == []  # not visible before commit
                emit(box, session, "emit-only-tail")
                await session.commit()
            async with maker.begin() as session:  # a clean session's commit still writes
                emit(box, session, "only")
            rows = await stored(engine, box)
            assert [r.type for r in rows] == ["before", "OrderPlaced", "emit-only-tail", "only"]
            assert rows[1].aggregateid == str(order.id)
            assert rows[1].aggregatetype == "async_orders"
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_missing_table_fails_clearly(url: str) -> None:
    async def scenario() -> None:
        engine = make_engine(url)
        box = Outbox()
        maker = async_sessionmaker(engine)
        box.install(maker)
        try:
            async with maker() as session:
                emit(box, session, "Lost")
                with pytest.raises(TableMissingError, match="does not exist"):
                    await session.commit()
                await session.rollback()
        finally:
            await engine.dispose()

    asyncio.run(scenario())
