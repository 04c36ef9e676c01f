"""Scenarios 1 and 4: relays killed with SIGKILL at random moments while events stream in."""

from __future__ import annotations

import random
import time

import pytest
import sqlalchemy as sa

from outbox.schema.tables import build_lease_table
from tests.faults.checker import Ledger, assert_exact, check, report
from tests.faults.harness import (
    FAST,
    App,
    Writers,
    keys_of,
    read_back,
    simple_transaction,
    unique_topic,
    wait_until,
)
from tests.support import RelayProcess

pytestmark = pytest.mark.faults

BATCH = 100
WRITERS = 4


def writers_for(app: App, ledger: Ledger, events: int, pause: float) -> Writers:
    return Writers(
        app,
        ledger,
        WRITERS,
        events_per_thread=events // WRITERS,
        make_transaction=lambda i: simple_transaction(app, keys_of(i, WRITERS, 40), 5),
        pause=pause,
    )


def test_relay_killed_20_times_during_a_20000_event_stream(
    pg_url: str, kafka: str, relays: list[RelayProcess]
) -> None:
    topic = unique_topic("s1")
    app = App(pg_url, topic, pool_size=WRITERS)
    ledger = Ledger()
    args = ("--db-url", pg_url, "--bootstrap-servers", kafka, *FAST, "--batch-size", str(BATCH))
    rng = random.Random(20)
    try:
        writers = writers_for(app, ledger, 20_000, pause=0.02).start()
        kills = 0
        killed_with_backlog = 0
        while kills < 20:
            relay = RelayProcess(*args)
            relays.append(relay)
            relay.wait_for_log("lease acquired", timeout=60)
            time.sleep(rng.uniform(0.0, 1.0))
            killed_with_backlog += app.pending() > 0
            relay.kill()
            kills += 1
        final = RelayProcess(*args)
        relays.append(final)
        writers.join()
        final.wait_for_log("lease acquired", timeout=60)
        wait_until(lambda: app.pending() == 0, 120, "the last relay to publish everything")
        assert final.terminate() == 0, final.log[-3000:]
        figures = check(ledger.by_key, read_back(kafka, topic, ledger.total))
        report(
            "s1-sigkill-20",
            figures,
            kills=kills,
            kills_with_backlog=killed_with_backlog,
            batch_size=BATCH,
            duplicate_bound=kills * BATCH,
        )
        assert_exact(figures)
        assert figures.duplicates <= kills * BATCH, figures.line()
    finally:
        app.close()


def lease_holder_pid(engine: sa.Engine) -> int | None:
    lease = build_lease_table(sa.MetaData(), "outbox", None)
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(lease.c.owner).where(
                lease.c.owner.is_not(None),
                lease.c.expires_at > sa.func.extract("epoch", sa.func.clock_timestamp()),
            )
        ).first()
    if row is None:
        return None
    return int(row[0].split(":")[-2])  # owner is host:pid:random


def test_three_relays_with_the_active_one_killed_repeatedly(
    pg_url: str, kafka: str, relays: list[RelayProcess]
) -> None:
    topic = unique_topic("s4")
    app = App(pg_url, topic, pool_size=WRITERS)
    ledger = Ledger()
    args = ("--db-url", pg_url, "--bootstrap-servers", kafka, *FAST, "--batch-size", str(BATCH))
    rng = random.Random(4)
    kills = 0
    takeovers: list[float] = []
    try:
        relays.extend(RelayProcess(*args) for _ in range(3))
        writers = writers_for(app, ledger, 6_000, pause=0.02).start()
        while kills < 8:
            running = {r.pid: r for r in relays if r.running()}
            holder_pid = lease_holder_pid(app.engine)
            if holder_pid not in running:
                time.sleep(0.05)
                continue
            time.sleep(rng.uniform(0.0, 1.5))
            running[holder_pid].kill()
            killed_at = time.monotonic()
            kills += 1
            relays.append(RelayProcess(*args))  # back to three relays
            wait_until(
                lambda pid=holder_pid: lease_holder_pid(app.engine) not in (None, pid),
                30,
                "a standby to take over",
            )
            takeovers.append(time.monotonic() - killed_at)
        writers.join()
        wait_until(lambda: app.pending() == 0, 120, "the relays to publish everything")
        for relay in relays:
            if relay.running():
                assert relay.terminate() == 0, relay.log[-3000:]
        figures = check(ledger.by_key, read_back(kafka, topic, ledger.total))
        report(
            "s4-three-relays",
            figures,
            kills=kills,
            max_takeover_s=round(max(takeovers), 2),
        )
        assert_exact(figures)
    finally:
        app.close()
