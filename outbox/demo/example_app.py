"""An example application: an ORM model that records its own domain events.

Placing an order inserts an ``example_orders`` row and records an ``OrderPlaced`` event in the
same transaction; some orders are declined and rolled back, and their events vanish with them.
`outbox demo` drives it from several threads; ``docker/compose.yaml`` runs it standalone::

    python -m outbox.demo.example_app --db-url URL --rate 5

The outbox tables must exist first (``outbox migrate``); the app creates its own table.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from types import FrameType
from typing import Any

import click
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from outbox._urls import resolve_db_url
from outbox.config import mask_url, parse_db_url
from outbox.write.entity import EventSource
from outbox.write.outbox import Outbox, fix_sqlite_transactions

logger = logging.getLogger("outbox.demo.example_app")

#: One order in this many is declined by the "payment provider" and rolled back.
DECLINE_EVERY = 10
CUSTOMERS = ("ada", "grace", "edsger", "barbara", "donald", "margaret", "ken", "frances")


class Base(DeclarativeBase):
    pass


class Order(Base, EventSource):
    __tablename__ = "example_orders"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    customer: Mapped[str] = mapped_column(sa.String(100))
    total: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2))
    placed_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))

    @classmethod
    def place(cls, customer: str, total: Decimal) -> Order:
        """A new order that records its OrderPlaced event (written when the session flushes)."""
        # A client-side id, so the event's payload can carry it before the row is flushed.
        order = cls(id=uuid.uuid4(), customer=customer, total=total, placed_at=datetime.now(UTC))
        order.record_event(
            "OrderPlaced",
            {"order_id": order.id, "customer": customer, "total": total},
            aggregate_type="orders",
        )
        return order


def is_declined(number: int) -> bool:
    """Whether order `number` (counting from 0) is declined: deterministic, so a caller knows
    in advance how many orders commit."""
    return number % DECLINE_EVERY == DECLINE_EVERY - 1


def committed_count(orders: int) -> int:
    """How many of the first `orders` orders commit."""
    return orders - orders // DECLINE_EVERY


class ExampleApp:
    """The application: its engine, a session factory with the outbox installed, the model."""

    def __init__(self, db_url: str, outbox: Outbox | None = None) -> None:
        # The example application is synchronous: an asyncio URL runs on its sync driver.
        url = resolve_db_url(parse_db_url(db_url), must_exist=False).url
        self.outbox = outbox or Outbox()
        if url.get_backend_name() == "sqlite":
            # Several writer threads on one file: wait for the write lock instead of failing.
            self.engine = sa.create_engine(url, connect_args={"timeout": 30})
            fix_sqlite_transactions(self.engine)
            event.listen(self.engine, "connect", _sqlite_wal)
        else:
            self.engine = sa.create_engine(url, pool_size=8, pool_pre_ping=True)
        # A private Session class: installing the outbox on it hooks only this app's sessions.
        session_class = type("ExampleSession", (Session,), {})
        self.sessions: sessionmaker[Session] = sessionmaker(
            self.engine, class_=session_class, expire_on_commit=False
        )
        self.outbox.install(self.sessions)

    def create_schema(self) -> None:
        """Create the app's own table; check that the outbox table exists (`outbox migrate`)."""
        self.outbox.check_table(self.engine)
        Base.metadata.create_all(self.engine)

    def place_order(self, number: int, rng: random.Random | None = None) -> tuple[Order, bool]:
        """Place order `number` in one transaction; return it and whether it committed."""
        rng = rng or random.Random(number)
        total = Decimal(rng.randrange(500, 50000)) / 100
        with self.sessions() as session:
            order = Order.place(rng.choice(CUSTOMERS), total)
            session.add(order)
            if is_declined(number):
                # The order row and its event row are written to the database...
                session.flush()
                # ...and disappear together: the relay never sees this event.
                session.rollback()
                return order, False
            session.commit()
            return order, True

    def place_orders(
        self, numbers: Iterable[int], on_result: Callable[[Order, bool], None] | None = None
    ) -> None:
        for number in numbers:
            order, committed = self.place_order(number)
            if on_result is not None:
                on_result(order, committed)

    def close(self) -> None:
        self.outbox.uninstall(self.sessions)
        self.engine.dispose()


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def run_forever(app: ExampleApp, rate: float, stop: threading.Event, limit: int | None) -> int:
    """Place about `rate` orders a second until `stop` is set (or `limit` orders); return the
    number placed. A database outage is logged and waited out, not fatal."""
    number = 0
    committed = 0
    next_at = time.monotonic()
    while not stop.is_set() and (limit is None or number < limit):
        try:
            _, ok = app.place_order(number)
        except sa.exc.OperationalError as exc:
            logger.warning("database unavailable, retrying in 1s: %s", str(exc.orig).strip())
            stop.wait(1.0)
            continue
        number += 1
        committed += ok
        if number % 100 == 0:
            logger.info("placed %d orders (%d committed, %d rolled back)", number, committed,
                        number - committed)  # fmt: skip
        next_at += 1.0 / rate
        stop.wait(max(0.0, next_at - time.monotonic()))
    return number


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db-url",
    envvar="OUTBOX_DB_URL",
    show_envvar=True,
    required=True,
    metavar="URL",
    help="SQLAlchemy database URL (the outbox tables must exist: run `outbox migrate`).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    envvar="OUTBOX_EXAMPLE_RATE",
    show_envvar=True,
    default=5.0,
    show_default=True,
    help="Orders placed per second.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many orders (default: run until SIGTERM or Ctrl-C).",
)
def example_app(db_url: str, rate: float, count: int | None) -> None:
    """Place orders that record OrderPlaced events through the outbox, one in ten rolled back."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    # As PID 1 in a container, SIGTERM is ignored unless the process handles it.
    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    app = ExampleApp(db_url)
    try:
        app.create_schema()
        logger.info("placing %s orders a second in %s", f"{rate:g}", mask_url(db_url))
        placed = run_forever(app, rate, stop, count)
        logger.info("stopped after %d orders", placed)
    finally:
        app.close()


def main(argv: list[str] | None = None) -> Any:
    from outbox.ops.entrypoint import run_command

    return run_command(example_app, argv, "example_app")


__all__ = [
    "Base",
    "ExampleApp",
    "Order",
    "committed_count",
    "is_declined",
    "main",
]

if __name__ == "__main__":
    main()
