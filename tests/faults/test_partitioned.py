"""Partitioned relays (docs/PARTITIONING.md) against real PostgreSQL and MariaDB and the real
broker, each relay the shipped `outbox relay --partitioned` in its own process:

1. per-key order and no loss while relays join and leave under load (1 -> 3 -> 2);
2. a graceful leave (SIGTERM) moves its partitions with 0 duplicates; a SIGKILL repeats at most
   the dead relay's in-flight batches, and its partitions are taken over (figure reported);
3. a relay frozen (SIGSTOP) past its lease and woken marks nothing and stops sending;
4. a sampler reading the partition leases every 50 ms never sees two unexpired owners of one
   partition, nor an epoch that goes down, nor one epoch under two owners;
5. a hot key (about half the traffic) keeps its order and does not stall the other partitions;
plus switching a table between single-active and partitioned mode while the application writes.
Figures are printed and written to tests/faults/.results (see docs/PARTITIONING.md).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from outbox.partitioning import PARTITIONS
from outbox.relay.store.engine import db_epoch
from outbox.schema.tables import build_partitions_table
from tests.faults.checker import Ledger, assert_exact, check, raw_order_regressions, report
from tests.faults.harness import (
    App,
    Transaction,
    Writers,
    backend_of,
    read_back,
    unique_topic,
    wait_until,
)
from tests.support import OUTBOX, RelayProcess, clean_env, fresh_database

pytestmark = pytest.mark.faults

TTL = 3.0
BATCH = 100
PARTITIONED = ("--partitioned", "--lease-ttl", str(TTL), "--poll-interval", "0.05")
#: Keys besides the hot one.
KEYS = 100


@pytest.fixture(params=["postgresql", "mariadb"])
def url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    with fresh_database(request.param, str(tmp_path)) as database:
        yield database


def outbox_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OUTBOX, *args], capture_output=True, text=True, env=clean_env(), timeout=120
    )


def enable(url: str) -> None:
    done = outbox_command("partitions", "enable", "--db-url", url)
    assert done.returncode == 0, done.stderr


def hot_key_writers(app: App, ledger: Ledger, events: int, pause: float = 0.005) -> Writers:
    """Two writer threads at the same pace: one writes only the key "hot", the other 100 other
    keys, so the hot key gets half of the events (about 500 events/s in all here)."""

    def transaction(thread: int) -> Transaction:
        keys = ["hot"] if thread == 0 else [f"k{k}" for k in range(KEYS)]

        def run(session: Session, rng: random.Random, n: int) -> list[tuple[str, str]]:
            key = rng.choice(keys)
            return [(key, app.emit(session, key, n + i)) for i in range(rng.randint(1, 6))]

        return run

    return Writers(app, ledger, 2, events // 2, transaction, pause=pause)


@dataclass
class Sampler:
    """Reads the partition leases every 50 ms by the database's clock, and checks each sample:
    at most one unexpired owner per partition, epochs only grow, one owner per epoch."""

    engine: sa.Engine
    samples: int = 0
    violations: list[str] = field(default_factory=list)
    #: Per partition: the owners seen unexpired, in order (for the moves' count).
    owners: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._table = build_partitions_table(sa.MetaData(), "outbox", None)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._epochs: dict[int, tuple[int, str | None]] = {}

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        pt = self._table
        query = sa.select(pt.c.partition, pt.c.owner, pt.c.epoch, pt.c.expires_at - db_epoch())
        while not self._stop.wait(0.05):
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
            self.samples += 1
            unexpired: dict[int, set[str]] = defaultdict(set)
            for partition, owner, epoch, left in rows:
                if owner is not None and left > 0:
                    unexpired[partition].add(owner)
                    if not self.owners[partition] or self.owners[partition][-1] != owner:
                        self.owners[partition].append(owner)
                seen = self._epochs.get(partition)
                if seen is not None:
                    if epoch < seen[0]:
                        self.violations.append(f"p{partition}: epoch {seen[0]} -> {epoch}")
                    if epoch == seen[0] and owner is not None and seen[1] not in (None, owner):
                        self.violations.append(f"p{partition}: epoch {epoch} of two owners")
                if owner is not None or seen is None:
                    self._epochs[partition] = (int(epoch), owner)
            for partition, holders in unexpired.items():
                if len(holders) > 1:
                    self.violations.append(f"p{partition}: owners {sorted(holders)}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def moves(self) -> int:
        return sum(max(0, len(owners) - 1) for owners in self.owners.values())


def holdings(engine: sa.Engine) -> dict[str, int]:
    """Unexpired partitions per owner, by the database's clock."""
    pt = build_partitions_table(sa.MetaData(), "outbox", None)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(pt.c.owner, sa.func.count())
            .where(pt.c.owner.is_not(None), pt.c.expires_at > db_epoch())
            .group_by(pt.c.owner)
        ).all()
    return {owner: int(count) for owner, count in rows}


def balanced(engine: sa.Engine, relays: int) -> bool:
    counts = holdings(engine)
    fair = PARTITIONS // relays
    return (
        len(counts) == relays
        and sum(counts.values()) == PARTITIONS
        and all(fair <= c <= fair + 1 for c in counts.values())
    )


def start_relay(url: str, kafka: str, relays: list[RelayProcess]) -> RelayProcess:
    relay = RelayProcess(
        "--db-url", url, "--bootstrap-servers", kafka, *PARTITIONED, "--batch-size", str(BATCH)
    )  # fmt: skip
    relays.append(relay)
    return relay


def test_relays_join_and_leave_under_load_with_a_hot_key(
    url: str, kafka: str, relays: list[RelayProcess]
) -> None:
    """1 -> 3 -> 2 relays while about 400 events/s over 101 keys stream in, half on one key;
    every leave is a SIGTERM, so nothing may be repeated."""
    topic = unique_topic("p1")
    app = App(url, topic, pool_size=4)
    ledger = Ledger()
    enable(url)
    sampler = Sampler(app.engine).start()
    balance_s: list[float] = []
    try:
        first = start_relay(url, kafka, relays)
        wait_until(lambda: balanced(app.engine, 1), 30, "one relay to hold every partition")
        writers = hot_key_writers(app, ledger, 10_000).start()
        writing = time.monotonic()
        time.sleep(2)
        joiners = [start_relay(url, kafka, relays) for _ in range(2)]
        for joiner in joiners:  # counted from their start-up, not the interpreters' import
            joiner.wait_for_log("started on", timeout=60)
        joined = time.monotonic()
        wait_until(lambda: balanced(app.engine, 3), 30, "three relays to share the partitions")
        balance_s.append(time.monotonic() - joined)
        time.sleep(2)
        left = time.monotonic()
        assert first.terminate() == 0, first.log[-3000:]  # SIGTERM: releases, then leaves
        wait_until(lambda: balanced(app.engine, 2), 30, "two relays to share the partitions")
        balance_s.append(time.monotonic() - left)
        writers.join()
        rate = ledger.total / (time.monotonic() - writing)
        wait_until(lambda: app.pending() == 0, 120, "the relays to publish everything")
        for relay in relays:
            if relay.running():
                assert relay.terminate() == 0, relay.log[-3000:]
        sampler.stop()
        losses = sum(r.count("(paused past the lease?)") for r in relays)
        deliveries = read_back(kafka, topic, ledger.total)
        figures = check(ledger.by_key, deliveries)
        hot = len(ledger.by_key["hot"])
        report(
            f"p1-join-leave-{backend_of(url)}",
            figures,
            raw_order_violations=raw_order_regressions(ledger.by_key, deliveries),
            events_per_s=round(rate),
            hot_key_share=round(hot / ledger.total, 2),
            seconds_to_balance_1_to_3=round(balance_s[0], 2),
            seconds_to_balance_3_to_2=round(balance_s[1], 2),
            partition_moves=sampler.moves,
            leases_lost=losses,
            lease_samples=sampler.samples,
            lease_violations=len(sampler.violations),
        )
        assert_exact(figures)
        if not losses:
            assert figures.duplicates == 0, figures.line()  # every move was graceful
        else:
            # A relay starved of CPU past its lease (this machine is shared) lost partitions:
            # those moves were not graceful, and repeat at most its in-flight batches.
            assert figures.duplicates <= 2 * BATCH * losses, figures.line()
        assert sampler.samples > 0 and sampler.violations == [], sampler.violations[:5]
    finally:
        sampler.stop()
        app.close()


def owner_pid(owner: str) -> int:
    return int(owner.split(":")[-2])  # relay ids are host:pid:random


def test_sigkill_is_taken_over_and_a_sigstopped_relay_cannot_mark(
    url: str, kafka: str, relays: list[RelayProcess]
) -> None:
    """Three relays under load: one is killed (SIGKILL), its partitions are taken over; then
    another is frozen (SIGSTOP) past its lease, the last one takes its partitions, and once
    woken (SIGCONT) the frozen one's marks fail their fence and it stops sending."""
    topic = unique_topic("p2")
    app = App(url, topic, pool_size=4)
    ledger = Ledger()
    enable(url)
    sampler = Sampler(app.engine).start()
    try:
        for _ in range(3):
            start_relay(url, kafka, relays)
        wait_until(lambda: balanced(app.engine, 3), 60, "three relays to share the partitions")
        by_pid = {r.pid: r for r in relays}
        writers = hot_key_writers(app, ledger, 10_000).start()
        time.sleep(2)
        victim, frozen, survivor = (by_pid[owner_pid(o)] for o in sorted(holdings(app.engine)))
        victim.kill()
        killed = time.monotonic()
        wait_until(
            lambda: (
                owner_of(app.engine, victim.pid) == 0
                and sum(holdings(app.engine).values()) == PARTITIONS
            ),
            30,
            "the survivors to take the killed relay's partitions over",
        )
        takeover = time.monotonic() - killed
        time.sleep(1)
        frozen.process.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            wait_until(
                lambda: balanced(app.engine, 1), 60, "the last relay to take every partition"
            )
        except AssertionError as error:  # say who holds what, and what the survivor did
            tail = "\n".join(survivor.lines[-30:])
            raise AssertionError(f"{error}: {holdings(app.engine)}\n{tail}") from None
        stop_takeover = time.monotonic() - stopped
        frozen.process.send_signal(signal.SIGCONT)
        frozen.wait_for_log("lost", timeout=30)  # its first renewal: the partitions are gone
        writers.join()
        wait_until(lambda: app.pending() == 0, 120, "the relays to publish everything")
        wait_until(lambda: balanced(app.engine, 2), 30, "the woken relay to get its share back")
        for relay in (frozen, survivor):
            assert relay.terminate() == 0, relay.log[-3000:]
        sampler.stop()
        deliveries = read_back(kafka, topic, ledger.total)
        figures = check(ledger.by_key, deliveries)
        report(
            f"p2-kill-stop-{backend_of(url)}",
            figures,
            raw_order_violations=raw_order_regressions(ledger.by_key, deliveries),
            sigkill_takeover_s=round(takeover, 2),
            sigstop_takeover_s=round(stop_takeover, 2),
            lease_ttl_s=TTL,
            duplicate_bound=4 * BATCH,
            lease_samples=sampler.samples,
            lease_violations=len(sampler.violations),
        )
        assert_exact(figures)
        # At most the in-flight batches (two batches' worth) of each of the two faulty relays.
        assert figures.duplicates <= 4 * BATCH, figures.line()
        assert sampler.samples > 0 and sampler.violations == [], sampler.violations[:5]
    finally:
        sampler.stop()
        app.close()


def owner_of(engine: sa.Engine, pid: int) -> int:
    """Partitions the relay with process id `pid` holds, unexpired."""
    return sum(n for owner, n in holdings(engine).items() if owner_pid(owner) == pid)


def test_switching_modes_while_the_application_writes(
    url: str, kafka: str, relays: list[RelayProcess]
) -> None:
    """A single-active relay publishes; `outbox partitions enable` hands the table to two
    partitioned relays (`outbox status --json` lists their partitions), and `disable` hands it
    back, all while the application writes: nothing lost, per-key order kept."""
    topic = unique_topic("p3")
    app = App(url, topic, pool_size=4)
    ledger = Ledger()
    common = ("--db-url", url, "--bootstrap-servers", kafka, "--lease-ttl", str(TTL))
    try:
        single = RelayProcess(*common, "--poll-interval", "0.05", "--batch-size", str(BATCH))
        relays.append(single)
        single.wait_for_log("lease acquired", timeout=60)
        writers = hot_key_writers(app, ledger, 8000).start()
        parted = [start_relay(url, kafka, relays) for _ in range(2)]
        for relay in parted:
            relay.wait_for_log("waiting for `outbox partitions enable`", timeout=60)
        time.sleep(1)
        enable(url)  # while the single relay publishes: it is fenced, then waited out
        wait_until(lambda: balanced(app.engine, 2), 30, "two relays to share the partitions")
        shown = outbox_command("status", "--db-url", url, "--json", "--lease-ttl", str(TTL))
        assert shown.returncode == 0, shown.stderr
        status = json.loads(shown.stdout)
        listed = {r["pid"]: r["partitions"] for r in status["relays"] if r["partitions"]}
        assert status["mode"] == "partitioned" and set(listed) == {r.pid for r in parted}
        assert sorted(p for ps in listed.values() for p in ps) == list(range(PARTITIONS))
        time.sleep(2)
        done = outbox_command("partitions", "disable", "--db-url", url, "--timeout", "30")
        assert done.returncode == 0, done.stderr
        single.wait_for_log("lease acquired", timeout=30, times=2)  # active again
        writers.join()
        wait_until(lambda: app.pending() == 0, 120, "the single relay to publish everything")
        for relay in relays:
            if relay.running():
                assert relay.terminate() == 0, relay.log[-3000:]
        deliveries = read_back(kafka, topic, ledger.total)
        figures = check(ledger.by_key, deliveries)
        report(
            f"p3-mode-switch-{backend_of(url)}",
            figures,
            raw_order_violations=raw_order_regressions(ledger.by_key, deliveries),
        )
        assert_exact(figures)
        # Taking the lease from the running single relay repeats at most its in-flight batches.
        assert figures.duplicates <= 2 * BATCH, figures.line()
    finally:
        app.close()
