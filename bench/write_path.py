"""Scenario 4, write-path overhead: what emitting an event costs the application's transaction.

Per database, two subjects on the same engine and table, interleaved: ORM transactions that
insert one row (the baseline), and the same transactions that also emit one event through an
installed `Outbox` (the event is written in the same transaction; on PostgreSQL it also runs
the NOTIFY that wakes the relay). No relay runs. Commits per second, one thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from bench.common import Context, interleaved, scenario
from bench.outboxdb import payload_text
from outbox.write.outbox import Outbox
from tests.support import write_engine

DATABASES = ("postgresql", "mariadb", "sqlite")


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "bench_orders"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(sa.String(40))


def _commits(factory: sessionmaker[sa.orm.Session], count: int, outbox: Outbox | None) -> float:
    pad = payload_text()[:240]
    started = time.perf_counter()
    for i in range(count):
        with factory.begin() as session:
            order = Order(status="placed")
            session.add(order)
            if outbox is not None:
                session.flush()
                outbox.emit(
                    session,
                    "OrderPlaced",
                    {"order_id": order.id, "status": "placed", "pad": pad},
                    aggregate_type="order",
                    aggregate_id=f"order-{i % 1000}",
                )
    return count / (time.perf_counter() - started)


@scenario("write", "Write-path overhead: insert one row vs insert one row + emit one event")
def write_path(ctx: Context) -> None:
    count = ctx.size(full=3000, quick=300)
    ctx.fact("transactions_per_sample", count)
    for kind in DATABASES:
        with ctx.database(kind) as url:
            engine = write_engine(url)
            try:
                outbox = Outbox()
                outbox.metadata.create_all(engine)
                Base.metadata.create_all(engine)
                plain = sessionmaker(engine)
                with_events = sessionmaker(engine)
                outbox.install(with_events)
                # The first transactions pay for connecting and compiling: not measured.
                _commits(plain, 50, None)
                _commits(with_events, 50, outbox)
                base = f"{kind}: insert one row"
                subject = f"{kind}: insert one row + emit one event"
                subjects: dict[str, Callable[[], float]] = {
                    base: lambda f=plain: _commits(f, count, None),  # type: ignore[misc]
                    subject: lambda f=with_events, o=outbox: _commits(f, count, o),  # type: ignore[misc]
                }
                samples = interleaved(subjects, ctx.repeats)
                ctx.record(base, samples[base], "commits/s")
                ctx.record(
                    subject,
                    samples[subject],
                    "commits/s",
                    baseline=base,
                    headline=kind == "postgresql",
                )
            finally:
                engine.dispose()
