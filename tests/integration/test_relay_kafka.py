"""The relay end to end: real databases, the real broker, a real consumer."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from outbox.config import RelayConfig
from outbox.relay import Relay
from outbox.write.outbox import Outbox
from tests.support import consume, count_rows

pytestmark = pytest.mark.integration


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    note: Mapped[str] = mapped_column(sa.String(50), default="")


def unique_topic() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


class RunningRelay:
    """A relay running `run()` in a thread, as the sidecar does."""

    def __init__(self, config: RelayConfig) -> None:
        self.relay = Relay(config)
        self.thread = threading.Thread(target=self.relay.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.relay.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()
        self.relay.store.dispose()


@pytest.fixture
def app(db_url: str) -> Iterator[tuple[Outbox, sessionmaker[Session]]]:
    outbox = Outbox()
    engine = sa.create_engine(db_url)
    if engine.dialect.name == "sqlite":
        from outbox.write.outbox import fix_sqlite_transactions

        fix_sqlite_transactions(engine)
    outbox.metadata.create_all(engine)
    Base.metadata.create_all(engine)
    factory = sessionmaker(engine)
    outbox.install(factory)
    yield outbox, factory
    outbox.uninstall(factory)
    engine.dispose()


def test_events_reach_the_broker_with_key_headers_and_payload(
    db_url: str, kafka: str, app: tuple[Outbox, sessionmaker[Session]]
) -> None:
    outbox, factory = app
    topic = unique_topic()
    ids = []
    with factory.begin() as session:
        for i in range(30):
            session.add(Order(note=f"n{i}"))
            event = outbox.emit(
                session,
                "OrderPlaced",
                {"n": i},
                aggregate_type="order",
                aggregate_id=str(i % 3),
                topic=topic,
                headers={"tenant": "acme"},
            )
            ids.append(str(event.id))

    running = RunningRelay(RelayConfig(db_url=db_url, bootstrap_servers=kafka))
    try:
        received = consume(kafka, topic, 30, timeout=60)
    finally:
        running.stop()

    assert [r.headers["event_id"].decode() for r in received if r.key == b"0"] == ids[0::3]
    assert sorted(json.loads(r.value or b"")["n"] for r in received) == list(range(30))
    first = min(received, key=lambda r: (r.partition, r.offset) if r.key == b"0" else (99, 0))
    assert first.headers["event_type"] == b"OrderPlaced"
    assert first.headers["aggregate_type"] == b"order"
    assert first.headers["tenant"] == b"acme"
    assert count_rows(db_url, outbox.table) == 0


@pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)
def test_a_transaction_that_commits_late_is_still_published(
    db_url: str, kafka: str, app: tuple[Outbox, sessionmaker[Session]]
) -> None:
    """t0..t3 insert in that order; t2 commits, t3 rolls back, t1 then t0 commit late."""
    outbox, factory = app
    topic = unique_topic()
    sessions = [factory() for _ in range(4)]
    for i, session in enumerate(sessions):
        session.add(Order(note=f"t{i}"))
        outbox.emit(session, "Tx", {"t": i}, aggregate_type="tx", aggregate_id=str(i), topic=topic)
        session.flush()  # the INSERT runs now: t0 gets the smallest seq

    running = RunningRelay(RelayConfig(db_url=db_url, bootstrap_servers=kafka, poll_interval=0.05))
    try:
        sessions[2].commit()
        time.sleep(0.5)  # the relay publishes t2 while t0 and t1 are still open
        sessions[3].rollback()
        sessions[1].commit()
        time.sleep(0.3)
        sessions[0].commit()
        received = consume(kafka, topic, 3, timeout=60, settle=1.5)
    finally:
        for session in sessions:
            session.close()
        running.stop()

    assert sorted(json.loads(r.value or b"")["t"] for r in received) == [0, 1, 2]
