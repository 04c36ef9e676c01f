"""Scenario 4, write-path overhead: what emitting an event costs the application's transaction.

Per database, subjects on the same engine and table, interleaved: ORM transactions that insert
one row, and the same transactions that also emit one event through an installed `Outbox` (the
event is written in the same transaction; on PostgreSQL it also runs the NOTIFY that wakes the
relay). On PostgreSQL the baseline is the floor of that design: the same transaction with the
same outbox statement (captured from the package once, the NOTIFY included) sent by hand on the
connection's own psycopg cursor, with the parameters an application would build itself (a
UUID, the JSON payload, the time) and no package or SQLAlchemy code. No relay runs. Commits per
second, one thread, and the application's CPU per transaction (`time.process_time`): the
package's client CPU per event is the difference to the floor's.

Each sample of a subject is `BLOCKS` blocks of transactions, the subjects' blocks alternating
(A B C, then C B A, ...), so that a sample of each spans the same stretch of time: on a shared
host the minute-to-minute drift is larger than the package's cost, and whole samples run one
after the other (seconds apart) compared it more than the subjects.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from bench.common import Context, scenario
from bench.outboxdb import payload_text
from outbox.write.outbox import Outbox
from tests.support import write_engine

DATABASES = ("postgresql", "mariadb", "sqlite")
#: Blocks per sample, alternating between the subjects.
BLOCKS = 10


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "bench_orders"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(sa.String(40))


#: (commits per second, application CPU per transaction in microseconds)
Sample = tuple[float, float]


def _commits(factory: sessionmaker[sa.orm.Session], count: int, outbox: Outbox | None) -> Sample:
    pad = payload_text()[:240]
    started = time.perf_counter()
    cpu = time.process_time()
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
    return _sample(count, started, cpu)


def _sample(count: int, started: float, cpu: float) -> Sample:
    return count / (time.perf_counter() - started), (time.process_time() - cpu) / count * 1e6


class Captured:
    """The outbox statement the package sends, captured once from the cursor, and its
    parameters' names: the floor sends the same text with parameters it builds by hand."""

    def __init__(self, url: str, outbox: Outbox):
        seen: list[tuple[str, dict[str, Any]]] = []

        def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
            if f"INSERT INTO {outbox.table.name}" in statement:
                seen.append((statement, dict(params)))

        # An engine of its own: a listener marks an engine as observed for good, and the
        # package then sends its INSERT through SQLAlchemy's execution (outbox.write.direct).
        engine = write_engine(url)
        try:
            factory = sessionmaker(engine)
            outbox.install(factory)
            sa.event.listen(engine, "before_cursor_execute", capture)
            _commits(factory, 1, outbox)
            outbox.uninstall(factory)
        finally:
            engine.dispose()
        self.sql, self.template = seen[-1]
        self.names = {name[2:]: name for name in self.template}  # p_<column> -> parameter


def _floor_commits(factory: sessionmaker[sa.orm.Session], count: int, insert: Captured) -> Sample:
    pad = payload_text()[:240]
    sql, names = insert.sql, insert.names
    started = time.perf_counter()
    cpu = time.process_time()
    for i in range(count):
        with factory.begin() as session:
            order = Order(status="placed")
            session.add(order)
            session.flush()
            params = dict(insert.template)
            params[names["id"]] = uuid.uuid4()
            params[names["aggregateid"]] = f"order-{i % 1000}"
            params[names["payload"]] = json.dumps(
                {"order_id": order.id, "status": "placed", "pad": pad}
            ).encode()
            params[names["created_at"]] = datetime.now(UTC)
            driver = session.connection().connection.driver_connection
            assert driver is not None
            driver.cursor().execute(sql, params)
    return _sample(count, started, cpu)


def _alternating(
    subjects: dict[str, Callable[[int], Sample]], repeats: int, count: int
) -> dict[str, list[Sample]]:
    """`repeats` samples of `count` transactions per subject, each made of `BLOCKS` blocks
    whose order alternates (forwards, then backwards), so that every subject's sample spans the
    same time and a drift hits each alike."""
    size = max(1, count // BLOCKS)
    names = list(subjects)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for _ in range(repeats):
        seconds = dict.fromkeys(names, 0.0)
        cpu = dict.fromkeys(names, 0.0)
        for block in range(BLOCKS):
            for name in names if block % 2 == 0 else reversed(names):
                rate, cpu_per_txn = subjects[name](size)
                seconds[name] += size / rate
                cpu[name] += cpu_per_txn * size
        for name in names:
            total = size * BLOCKS
            samples[name].append((total / seconds[name], cpu[name] / total))
    return samples


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
                floor = f"{kind}: floor, the same INSERT by hand on the psycopg cursor"
                subjects: dict[str, Callable[[int], Sample]] = {
                    base: lambda n, f=plain: _commits(f, n, None),  # type: ignore[misc]
                    subject: lambda n, f=with_events, o=outbox: _commits(f, n, o),  # type: ignore[misc]
                }
                if kind == "postgresql":
                    captured = Captured(url, outbox)
                    ctx.fact("floor statement", captured.sql)
                    _floor_commits(plain, 50, captured)
                    subjects[floor] = lambda n, f=plain, c=captured: _floor_commits(f, n, c)  # type: ignore[misc]
                samples = _alternating(subjects, ctx.repeats, count)
                rates = {name: [r for r, _ in runs] for name, runs in samples.items()}
                cpu = {name: [c for _, c in runs] for name, runs in samples.items()}
                ctx.record(base, rates[base], "commits/s")
                if kind == "postgresql":
                    ctx.record(floor, rates[floor], "commits/s", baseline=base)
                ctx.record(subject, rates[subject], "commits/s", baseline=base)
                if kind == "postgresql":
                    ctx.record(
                        f"{subject} vs the floor",
                        [s / f for s, f in zip(rates[subject], rates[floor], strict=True)],
                        "x",
                        headline=True,
                        note="sample by sample, alternating",
                    )
                    for name in (base, floor, subject):
                        ctx.record(f"{name}: client CPU", cpu[name], "µs/txn")
                    ctx.record(
                        f"{kind}: package CPU per event above the floor",
                        [s - f for s, f in zip(cpu[subject], cpu[floor], strict=True)],
                        "µs",
                        headline=True,
                    )
            finally:
                engine.dispose()
