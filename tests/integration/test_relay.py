"""The relay loop against real databases, with the in-memory publisher standing in for Kafka."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
import sqlalchemy as sa

from outbox.config import RelayConfig
from outbox.errors import BrokerUnavailableError, LeaseLostError, PublishError
from outbox.relay import Relay
from outbox.relay.publisher import InMemoryPublisher, Message, reject
from outbox.relay.store import OutboxStore
from tests.support import count_rows, create_outbox_tables, insert_rows

pytestmark = pytest.mark.integration


@pytest.fixture
def table(db_url: str) -> sa.Table:
    return create_outbox_tables(db_url)


@pytest.fixture
def store(db_url: str) -> Iterator[OutboxStore]:
    """The relay's store on the test database, for tests of its statements."""
    store = OutboxStore.from_url(db_url)
    try:
        yield store
    finally:
        store.dispose()


@pytest.fixture
def relays() -> Iterator[list[Relay]]:
    made: list[Relay] = []
    yield made
    for relay in made:
        relay.close()
        relay.store.dispose()


def make_relay(
    relays: list[Relay], db_url: str, publisher: InMemoryPublisher, **settings: object
) -> Relay:
    relay = Relay(RelayConfig(db_url=db_url, **settings), publisher=publisher)  # type: ignore[arg-type]
    relays.append(relay)
    return relay


def values(messages: list[Message]) -> list[int]:
    return [json.loads(m.value or b"null")["n"] for m in messages]


def events(n: int, keys: int = 5, start: int = 0) -> list[dict[str, object]]:
    return [
        {"aggregateid": f"k{i % keys}", "payload": json.dumps({"n": i}).encode()}
        for i in range(start, start + n)
    ]


def test_publishes_everything_in_insert_order_then_deletes(
    db_url: str, table: sa.Table, relays: list[Relay]
) -> None:
    insert_rows(db_url, table, events(2500))
    publisher = InMemoryPublisher()
    relay = make_relay(relays, db_url, publisher, batch_size=300)

    assert relay.run_once() == 2500
    assert values(publisher.messages) == list(range(2500))
    assert count_rows(db_url, table) == 0
    assert relay.run_once() == 0


def test_routing_key_topic_and_headers(db_url: str, table: sa.Table, relays: list[Relay]) -> None:
    insert_rows(
        db_url,
        table,
        [
            {"aggregateid": "7", "payload": b"a"},
            {"aggregateid": "8", "payload": b"b", "topic": "explicit", "key": "custom"},
            {"aggregateid": "9", "payload": None, "headers": {"tenant": "acme"}},
        ],
    )
    publisher = InMemoryPublisher()
    make_relay(relays, db_url, publisher, topic_prefix="shop.").run_once()

    first, second, third = publisher.messages
    assert (first.topic, first.key, first.value) == ("shop.order", b"7", b"a")
    assert (second.topic, second.key) == ("explicit", b"custom")
    assert third.value is None
    headers = dict(third.headers)
    assert headers["event_type"] == b"OrderPlaced"
    assert headers["aggregate_type"] == b"order"
    assert headers["aggregate_id"] == b"9"
    assert headers["tenant"] == b"acme"
    assert len(headers["event_id"]) == 36


def test_outage_keeps_events_and_counts_no_attempts(
    db_url: str, table: sa.Table, relays: list[Relay]
) -> None:
    insert_rows(db_url, table, events(50))
    publisher = InMemoryPublisher(available=False)
    relay = make_relay(relays, db_url, publisher)

    with pytest.raises(BrokerUnavailableError):
        relay.run_once()
    assert count_rows(db_url, table) == 50
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.max(table.c.attempts))).scalar_one() == 0
    engine.dispose()

    publisher.available = True
    assert relay.run_once() == 50
    assert values(publisher.messages) == list(range(50))


def test_failure_mid_key_resends_the_key_from_its_first_unacknowledged_event(
    db_url: str, table: sa.Table, relays: list[Relay]
) -> None:
    insert_rows(db_url, table, events(20, keys=2))
    failed_once: set[int] = set()

    def flaky(message: Message) -> PublishError | None:
        n = json.loads(message.value or b"")["n"]
        if n == 4 and n not in failed_once:
            failed_once.add(n)
            return BrokerUnavailableError("leader moved")
        return None

    publisher = InMemoryPublisher(fail_with=flaky)
    relay = make_relay(relays, db_url, publisher)
    with pytest.raises(BrokerUnavailableError):
        relay.run_once()
    # Key k0 (even numbers) stopped at 4: its later events were not marked, k1 is complete.
    assert count_rows(db_url, table) == len(range(4, 20, 2))
    publisher.clear()
    assert relay.run_once() == len(range(4, 20, 2))
    assert values(publisher.messages) == list(range(4, 20, 2))


def test_rejected_event_is_parked_and_holds_back_its_key(
    db_url: str, table: sa.Table, relays: list[Relay]
) -> None:
    insert_rows(db_url, table, events(30, keys=3))
    poison = {"ok": False}

    def rejects_n3(message: Message) -> PublishError | None:
        n = json.loads(message.value or b"")["n"]
        return reject("message too large") if n == 3 and not poison["ok"] else None

    publisher = InMemoryPublisher(fail_with=rejects_n3)
    relay = make_relay(relays, db_url, publisher, max_attempts=2)
    for _ in range(3):
        relay.run_once()

    store = relay.store
    parked = store.list_parked()
    assert [p.aggregateid for p in parked] == ["k0"]
    assert parked[0].attempts == 2
    assert "message too large" in (parked[0].last_error or "")
    assert store.status().failed == 1
    # Every other key flowed; k0 stopped before 3.
    delivered = values(publisher.messages)
    assert [n for n in delivered if n % 3 == 0] == [0]
    assert sorted(n for n in delivered if n % 3) == [n for n in range(30) if n % 3]
    assert store.status().pending == len(range(6, 30, 3))

    poison["ok"] = True
    publisher.clear()
    assert store.requeue([parked[0].id]) == 1
    relay.run_once()
    assert values(publisher.messages) == list(range(3, 30, 3))
    assert store.status().pending == 0


def test_parked_key_can_be_let_through(db_url: str, table: sa.Table, relays: list[Relay]) -> None:
    insert_rows(db_url, table, events(6, keys=1))
    publisher = InMemoryPublisher(
        fail_with=lambda m: reject("bad") if json.loads(m.value or b"")["n"] == 1 else None
    )
    relay = make_relay(relays, db_url, publisher, max_attempts=1, hold_parked_keys=False)
    relay.run_once()
    relay.run_once()
    assert values(publisher.messages) == [0, 2, 3, 4, 5]
    assert relay.store.drop() == 1
    assert count_rows(db_url, table) == 0


def test_garbage_row_is_parked_with_a_message_and_the_relay_goes_on(
    db_url: str, table: sa.Table, relays: list[Relay]
) -> None:
    insert_rows(
        db_url,
        table,
        [
            {"aggregateid": "a", "payload": b"1"},
            {"aggregateid": "b", "payload": b"2", "headers": [1, 2]},
            {"aggregateid": "b", "payload": b"3"},
            {"aggregateid": "c", "payload": b"4", "headers": {"x": {"nested": True}}},
            {"aggregateid": "d", "payload": b"5"},
        ],
    )
    publisher = InMemoryPublisher()
    relay = make_relay(relays, db_url, publisher)
    relay.run_once()
    assert [m.value for m in publisher.messages] == [b"1", b"5"]
    parked = relay.store.list_parked()
    assert [p.aggregateid for p in parked] == ["b", "c"]
    assert all("cannot encode" in (p.last_error or "") for p in parked)
    # b's later event waits behind the parked one.
    assert relay.store.status().pending == 1


def test_only_the_lease_holder_publishes(db_url: str, table: sa.Table, relays: list[Relay]) -> None:
    insert_rows(db_url, table, events(10))
    first, second = InMemoryPublisher(), InMemoryPublisher()
    active = make_relay(relays, db_url, first)
    standby = make_relay(relays, db_url, second)
    assert active.run_once() == 10
    insert_rows(db_url, table, events(5, start=10))
    assert standby.run_once() == 0
    assert second.messages == []
    assert active.run_once() == 5

    # A graceful stop hands the lease over at once.
    active.close()
    assert standby.run_once() == 0
    insert_rows(db_url, table, events(3, start=15))
    assert standby.run_once() == 3
    assert values(second.messages) == [15, 16, 17]


def test_a_relay_that_lost_its_lease_is_fenced(
    db_url: str, table: sa.Table, store: OutboxStore
) -> None:
    insert_rows(db_url, table, events(4))
    old = store.try_acquire("paused-relay", ttl=0.5)
    assert old is not None
    assert store.try_acquire("other", ttl=0.5) is None
    time.sleep(0.8)  # the paused relay's lease expires (by the database's clock)
    new = store.try_acquire("other", ttl=30)
    assert new is not None and new.epoch == old.epoch + 1

    pending = store.fetch_pending(10)
    with pytest.raises(LeaseLostError):
        store.complete(old, 30, [e.seq for e in pending])
    with pytest.raises(LeaseLostError):
        store.renew(old, 30)
    assert count_rows(db_url, table) == 4
    store.complete(new, 30, [e.seq for e in pending])
    assert count_rows(db_url, table) == 0


def test_a_read_after_a_seq_counts_the_pending_events_up_to_it(
    db_url: str, table: sa.Table, store: OutboxStore
) -> None:
    insert_rows(db_url, table, events(6, keys=3))  # keys k0 k1 k2 k0 k1 k2
    first = store.fetch_pending(10)
    seqs = [e.seq for e in first]
    assert len(seqs) == 6
    after, below = store.fetch_after(seqs[2], 2)
    assert [e.seq for e in after] == seqs[3:5] and below == 3
    after, below = store.fetch_after(seqs[2], 10, exclude_keys={"k0"})
    assert [e.seq for e in after] == [seqs[4], seqs[5]] and below == 2
    # Nothing after the last seq: no rows, and no count is needed.
    assert store.fetch_after(seqs[-1], 10) == ([], 0)
    # The count stops at its limit: one more than the relay has in flight is all it needs.
    assert store.fetch_after(seqs[2], 2, count_limit=2)[1] == 2


def test_completing_with_retention_stamps_the_rows_and_purge_removes_them(
    db_url: str, table: sa.Table, store: OutboxStore
) -> None:
    insert_rows(db_url, table, events(4))
    lease = store.try_acquire("retaining-relay", ttl=30)
    assert lease is not None
    pending = store.fetch_pending(10)
    store.complete(lease, 30, [e.seq for e in pending[:3]], retain=True)
    assert [e.seq for e in store.fetch_pending(10)] == [pending[3].seq]
    assert count_rows(db_url, table) == 4
    with store.engine.connect() as conn:
        stamps = conn.execute(
            sa.select(table.c.published_at).where(table.c.published_at.is_not(None))
        ).scalars()
        assert all(isinstance(stamp, datetime) for stamp in stamps)
    # Stamped with the column's own type: a purge window longer than the rows' age keeps
    # them, one in the future takes the three published rows and leaves the pending one.
    assert store.purge(older_than=3600) == 0
    assert store.purge(older_than=-60) == 3
    assert [e.seq for e in store.fetch_pending(10)] == [pending[3].seq]


def test_missing_table_is_reported_with_the_command_to_run(db_url: str) -> None:
    from outbox.errors import TableMissingError

    relay = Relay(RelayConfig(db_url=db_url), publisher=InMemoryPublisher())
    try:
        with pytest.raises(TableMissingError, match="outbox migrate"):
            relay.run_once()
    finally:
        relay.store.dispose()
