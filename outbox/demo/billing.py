"""Two services, one library: orders emits OrderPlaced, billing applies it once and reacts.

Orders writes an order and its ``OrderPlaced`` event in one transaction (the outbox); its relay
publishes the event. Billing's inbox applies each ``OrderPlaced`` once: in one transaction it
records the event id, inserts the invoice and emits ``InvoiceCreated`` through billing's own
outbox, which billing's relay publishes. A crash anywhere repeats work, never an effect::

    outbox migrate --db-url $ORDERS_DB && outbox migrate --db-url $BILLING_DB
    outbox relay --db-url $ORDERS_DB --bootstrap-servers kafka:9092 --topic-prefix shop.
    BILLING_DB_URL=$BILLING_DB outbox consume --app outbox.demo.billing:inbox \\
        --bootstrap-servers kafka:9092 --topic shop.orders
    outbox relay --db-url $BILLING_DB --bootstrap-servers kafka:9092 --topic-prefix shop.
"""

from __future__ import annotations

import os
import uuid
from decimal import Decimal
from functools import cache

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from outbox.errors import ConfigurationError
from outbox.inbox import Inbox, InboxEvent
from outbox.write.outbox import Outbox


class Base(DeclarativeBase):
    pass


class Invoice(Base):
    """Billing's table. No unique order id on purpose: the inbox alone keeps it to one."""

    __tablename__ = "billing_invoices"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    order_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2))


def place_order(session: Session, orders_outbox: Outbox, order_id: str, total: Decimal) -> None:
    """The orders service's write: its row (elided here) and its event in one transaction."""
    orders_outbox.emit(
        session, "OrderPlaced", {"order_id": order_id, "total": str(total)},
        aggregate_type="orders", aggregate_id=order_id,
    )  # fmt: skip


def build_billing(db_url: str) -> Inbox:
    """Billing's inbox on `db_url`; its handler invoices the order and emits InvoiceCreated."""
    engine = sa.create_engine(db_url, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine)
    billing_outbox = Outbox()
    billing_outbox.install(sessions)
    inbox = Inbox(sessions, consumer="billing")

    @inbox.handler("OrderPlaced")
    def invoice(session: Session, event: InboxEvent) -> None:
        order = event.json()
        invoice = Invoice(order_id=order["order_id"], amount=Decimal(order["total"]))
        session.add(invoice)
        # Same session, same transaction as the dedup row: consume -> react -> publish.
        billing_outbox.emit(
            session, "InvoiceCreated",
            {"order_id": order["order_id"], "amount": order["total"], "caused_by": event.id},
            aggregate_type="invoices", aggregate_id=order["order_id"],
        )  # fmt: skip

    return inbox


@cache
def _inbox_from_env() -> Inbox:
    url = os.environ.get("BILLING_DB_URL")
    if not url:
        raise ConfigurationError("set BILLING_DB_URL to billing's database URL")
    return build_billing(url)


def __getattr__(name: str) -> Inbox:
    # `outbox consume --app outbox.demo.billing:inbox` builds it on first use, from the env.
    if name == "inbox":
        return _inbox_from_env()
    raise AttributeError(name)
