"""The two-service example end to end: orders -> relay -> billing's inbox -> billing's outbox
-> relay, with billing's consumer SIGKILLed mid-stream and the orders relay's repeats."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from decimal import Decimal

import pytest
import sqlalchemy as sa
from kafka import KafkaProducer
from sqlalchemy.orm import sessionmaker

from outbox import Outbox
from outbox.demo.billing import Invoice, place_order
from tests.inbox_support import ConsumerProcess, create_topic, run_outbox, wait_for
from tests.support import RelayProcess, consume

pytestmark = pytest.mark.integration

ORDERS = 80


def _invoices(url: str) -> Counter[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return Counter(r[0] for r in conn.execute(sa.select(Invoice.order_id)))
    except sa.exc.ProgrammingError:
        return Counter()  # billing has not created its table yet
    finally:
        engine.dispose()


def test_every_order_gets_one_invoice_and_one_invoice_event(
    pg_url: str, mariadb_url: str, kafka: str, relays: list[RelayProcess]
) -> None:
    orders_db, billing_db = pg_url, mariadb_url
    for url in (orders_db, billing_db):
        result = run_outbox("migrate", "--db-url", url)
        assert result.returncode == 0, result.stderr
    prefix = f"shop{uuid.uuid4().hex[:8]}."
    # The consumer subscribes before the first order: its topic must exist by then.
    create_topic(kafka, prefix + "orders", 2)
    relay_args = ("--bootstrap-servers", kafka, "--topic-prefix", prefix)
    relays.append(RelayProcess("--db-url", orders_db, *relay_args))
    relays.append(RelayProcess("--db-url", billing_db, *relay_args))

    engine = sa.create_engine(orders_db)
    orders_outbox = Outbox()
    sessions = sessionmaker(engine)
    orders_outbox.install(sessions)
    order_ids = [f"o{n:03d}" for n in range(ORDERS)]

    def place_all() -> None:
        for order_id in order_ids:
            with sessions.begin() as session:
                place_order(session, orders_outbox, order_id, Decimal("9.90"))
            time.sleep(0.1)

    placing = threading.Thread(target=place_all)
    env = {"BILLING_DB_URL": billing_db}
    app = "outbox.demo.billing:inbox"
    first = ConsumerProcess(billing_db, kafka, [prefix + "orders"], env=env, app=app)
    try:
        first.wait_for_log("claimed", 60)
        placing.start()
        wait_for(lambda: sum(_invoices(billing_db).values()) >= 10, 60, "first invoices")
        first.process.send_signal(signal.SIGKILL)  # mid-stream: orders keep coming
        first.process.wait(10)
    finally:
        first.kill()
    killed_at = sum(_invoices(billing_db).values())
    placing.join(60)
    orders_outbox.uninstall(sessions)
    engine.dispose()
    # The orders relay repeating itself: the first records again, at new offsets.
    sent = consume(kafka, prefix + "orders", ORDERS, timeout=60)
    assert len({r.headers["event_id"] for r in sent}) == ORDERS
    producer = KafkaProducer(bootstrap_servers=kafka)
    for r in sent[:15]:
        producer.send(r.topic, key=r.key, value=r.value, headers=list(r.headers.items()))
    producer.flush(30)
    producer.close(5)

    second = ConsumerProcess(billing_db, kafka, [prefix + "orders"], env=env, app=app)
    try:
        wait_for(lambda: len(_invoices(billing_db)) >= ORDERS, 90, "every order invoiced")
        time.sleep(1.0)
        assert second.terminate() == 0
    finally:
        second.kill()
    invoices = _invoices(billing_db)
    events = consume(kafka, prefix + "invoices", ORDERS, timeout=60, settle=1.0)
    unique = {r.headers["event_id"]: r for r in events}
    per_order = Counter(r.key.decode() for r in unique.values() if r.key is not None)
    print(
        f"orders -> billing: {ORDERS} orders, billing SIGKILLed after {killed_at} invoices, "
        f"15 OrderPlaced repeats; invoices per order {sorted(set(invoices.values()))}, "
        f"InvoiceCreated records {len(events)} ({len(events) - len(unique)} relay repeats), "
        f"per order after dedup {sorted(set(per_order.values()))}"
    )
    assert set(invoices) == set(order_ids) and set(invoices.values()) == {1}
    assert set(per_order) == set(order_ids) and set(per_order.values()) == {1}
