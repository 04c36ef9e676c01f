"""Partitioned mode against real PostgreSQL and MariaDB (in-process relays with the in-memory
publisher; the broker-backed scenarios are in tests/faults/test_partitioned.py): the partition
leases and their fence, reads by partition, the fair share, the mode switch, the CLI, and
SQLite's refusal."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from outbox import InMemoryPublisher, LeaseLostError, RelayConfig
from outbox.errors import ConfigurationError
from outbox.partitioning import PARTITIONS, partition_of
from outbox.relay import Relay
from outbox.relay.partition_keeper import PartitionKeeper
from outbox.relay.store import OutboxStore, PartitionFence
from tests.integration.test_cli import assert_one_line_error, run
from tests.support import create_outbox_tables, fresh_database, insert_rows

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgresql", "mariadb"])
def url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    with fresh_database(request.param, str(tmp_path)) as database:
        yield database


@pytest.fixture
def store(url: str) -> Iterator[OutboxStore]:
    create_outbox_tables(url)
    store = OutboxStore.from_url(url)
    try:
        yield store
    finally:
        store.dispose()


def enabled(store: OutboxStore) -> OutboxStore:
    store.partitions.begin_enable()
    store.partitions.finish_enable()
    assert store.partitions.mode() == "partitioned"
    return store


def test_claims_need_partitioned_mode_and_never_take_from_a_live_owner(
    store: OutboxStore,
) -> None:
    leases = store.partitions
    assert leases.claim("a", 0, 30) is None  # single-active mode: nothing to claim
    enabled(store)
    first = leases.claim("a", 0, 30)
    assert first is not None
    assert leases.claim("b", 0, 30) is None  # a live owner keeps it
    leases.release("a", {0: first})
    second = leases.claim("b", 0, 30)
    assert second is not None and second > first  # epochs only grow
    # Expired: another relay takes it, and the old owner's renewal and fence fail.
    with store.engine.begin() as conn:
        conn.execute(sa.update(store.partitions_table).values(expires_at=0))
    third = leases.claim("a", 0, 30)
    assert third is not None and third > second
    assert leases.renew("b", {0: second}, 30) == {}
    with pytest.raises(LeaseLostError), store.executor.write() as conn:
        leases.fence(conn, PartitionFence("b", {0: second}), 30)


def test_a_mark_is_fenced_by_every_partition_of_its_batch(store: OutboxStore) -> None:
    """A completion whose batch spans two partitions commits only if both are still held: with
    one of them taken over, nothing of the batch is deleted."""
    enabled(store)
    keys = [k for k in (f"key-{i}" for i in range(200)) if partition_of(k) in (1, 2)][:4]
    insert_rows(
        store.engine.url.render_as_string(hide_password=False),
        store.table,
        [{"aggregateid": k, "p_partition": partition_of(k)} for k in keys],
    )
    one, two = store.partitions.claim("me", 1, 30), store.partitions.claim("me", 2, 30)
    assert one is not None and two is not None
    events = store.fetch_pending(100, partitions=[1, 2])
    assert {e.partition for e in events} == {1, 2} and len(events) == len(keys)
    assert store.fetch_pending(100, partitions=[3]) == []
    seqs = [e.seq for e in events]
    with store.engine.begin() as conn:  # partition 2 expires and another relay takes it
        conn.execute(
            sa.update(store.partitions_table)
            .where(store.partitions_table.c.partition == 2)
            .values(expires_at=0)
        )
    assert store.partitions.claim("other", 2, 30) is not None
    with pytest.raises(LeaseLostError):
        store.complete(PartitionFence("me", {1: one, 2: two}), 30, seqs)
    assert len(store.fetch_pending(100)) == len(keys)  # nothing deleted
    store.complete(PartitionFence("me", {1: one}), 30, [e.seq for e in events if e.partition == 1])
    assert {e.partition for e in store.fetch_pending(100)} == {2}


def test_late_commit_count_is_per_partition(store: OutboxStore) -> None:
    """The count of pending rows up to the cursor sees only the partitions read, so a backlog
    in someone else's partition is not taken for a late commit."""
    url = store.engine.url.render_as_string(hide_password=False)
    a = next(k for k in (f"a{i}" for i in range(500)) if partition_of(k) == 5)
    b = next(k for k in (f"b{i}" for i in range(500)) if partition_of(k) == 6)
    insert_rows(url, store.table, [{"aggregateid": b, "p_partition": 6}])
    insert_rows(url, store.table, [{"aggregateid": a, "p_partition": 5}] * 3)
    first = store.fetch_pending(1, partitions=[5])
    rest, below = store.fetch_after(first[0].seq, 10, count_limit=2, partitions=[5])
    assert below == 1 and len(rest) == 2  # partition 6's older row is not counted
    _, below_all = store.fetch_after(first[0].seq, 10, count_limit=3)
    assert below_all == 2


def test_relays_share_the_partitions_and_publish_every_event_once(
    store: OutboxStore, url: str
) -> None:
    enabled(store)
    keys = [f"order-{i}" for i in range(50)]
    insert_rows(
        url,
        store.table,
        [{"aggregateid": k, "p_partition": partition_of(k)} for k in keys * 4],
    )
    publishers = [InMemoryPublisher(), InMemoryPublisher()]
    config = RelayConfig(db_url=url, partitioned=True, lease_ttl=30, batch_size=50)
    relays = [Relay(config, publisher=p, owner=f"relay-{i}") for i, p in enumerate(publishers)]
    try:
        for relay in relays:
            relay._heartbeat.beat()  # both are members before the first round
        for _ in range(2):  # relay-0 releases its surplus in its second round, relay-1 claims
            for relay in relays:
                keeper = relay._lease
                assert isinstance(keeper, PartitionKeeper)
                relay._heartbeat.beat()  # as the loop does before each round
                keeper._round_at = 0.0  # a round now, not after ttl / 3
                keeper.hold()
        held = [set(r._lease.partitions() or []) for r in relays]
        assert [len(h) for h in held] == [32, 32] and not held[0] & held[1]
        for relay in relays:
            relay._start()
            relay._cycle()
        sent = [m for p in publishers for m in p.messages]
        assert sorted(m.key.decode() for m in sent) == sorted(keys * 4)
        for relay, publisher in zip(relays, publishers, strict=True):
            mine = set(relay._lease.partitions() or [])
            assert {partition_of(m.key.decode()) for m in publisher.messages} <= mine
        assert store.status().pending == 0
    finally:
        for relay in relays:
            relay.close()
            relay.store.dispose()


def test_status_json_lists_each_relays_partitions(store: OutboxStore, url: str) -> None:
    enabled(store)
    store.beat("r1", "h", 1, "partitioned", 30)
    for p in range(PARTITIONS):
        assert store.partitions.claim("r1" if p < 40 else "r2", p, 30) is not None
    shown = run("status", "--db-url", url, "--json", "--lease-ttl", "30")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["mode"] == "partitioned"
    (r1,) = status["relays"]
    assert r1["relay_id"] == "r1" and r1["partitions"] == list(range(40)) and r1["active"]
    text = run("status", "--db-url", url, "--lease-ttl", "30")
    assert text.returncode == 0 and "0-39" in text.stdout, text.stdout


def test_enable_and_disable_commands(store: OutboxStore, url: str) -> None:
    done = run("partitions", "enable", "--db-url", url)
    assert done.returncode == 0 and "partitioned mode" in done.stdout, done.stderr
    assert store.lease_holder() is not None and store.try_acquire("single", 5) is None
    again = run("partitions", "enable", "--db-url", url)
    assert "already" in again.stdout
    epoch = store.partitions.claim("r1", 7, 30)
    assert epoch is not None
    busy = run("partitions", "disable", "--db-url", url, "--timeout", "0.5")
    assert_one_line_error(busy, "still held")
    assert store.partitions.mode() == "draining"
    assert store.partitions.claim("r2", 8, 30) is None  # no claims while draining
    store.partitions.release("r1", {7: epoch})
    done = run("partitions", "disable", "--db-url", url)
    assert done.returncode == 0, done.stderr
    lease = store.try_acquire("single", 5)
    assert lease is not None  # a single-active relay takes the table back


def test_sqlite_is_refused_with_one_line(sqlite_url: str) -> None:
    create_outbox_tables(sqlite_url)
    with pytest.raises(ConfigurationError, match="not supported on SQLite"):
        RelayConfig(db_url=sqlite_url, partitioned=True)
    assert_one_line_error(
        run("relay", "--db-url", sqlite_url, "--partitioned"), "not supported on SQLite"
    )
    assert_one_line_error(
        run("partitions", "enable", "--db-url", sqlite_url), "not supported on SQLite"
    )
    assert_one_line_error(
        run("relay", "--db-url", sqlite_url, "--workers", "2"), "needs partitioned mode"
    )


def test_relay_workers_run_as_members_and_stop_on_sigterm(url: str, kafka: str) -> None:
    """`--workers 2`: two member processes, each its own relay id in the relays table."""
    import subprocess
    import time

    from tests.support import OUTBOX, clean_env

    create_outbox_tables(url)
    store = enabled(OutboxStore.from_url(url))
    proc = subprocess.Popen(
        [OUTBOX, "relay", "--db-url", url, "--bootstrap-servers", kafka, "--partitioned",
         "--workers", "2", "--lease-ttl", "3"],
        env=clean_env(), stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            live = [m for m in store.live_relays(3) if m.mode == "partitioned"]
            owners = {r.owner for r in store.partitions.rows() if r.held}
            if len(live) == 2 and len(owners) == 2:
                break
            assert time.monotonic() < deadline, "two workers did not share the partitions"
            assert proc.poll() is None
            time.sleep(0.1)
        assert {m.pid for m in live} != {proc.pid} and len({m.pid for m in live}) == 2
        proc.terminate()
        assert proc.wait(60) == 0
        assert store.live_relays(3) == []  # each worker left
        assert not any(r.held for r in store.partitions.rows())  # and released
    finally:
        if proc.poll() is None:
            proc.kill()
        store.dispose()


def test_partitioned_relay_in_single_mode_waits(store: OutboxStore, url: str) -> None:
    relay = Relay(RelayConfig(db_url=url, partitioned=True), publisher=InMemoryPublisher())
    try:
        assert relay.run_once() == 0 and relay.lease is None
    finally:
        relay.close()
        relay.store.dispose()
