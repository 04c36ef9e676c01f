"""Scenario 3: the database drops the relay's connections (pg_terminate_backend, KILL) while it
publishes a stream."""

from __future__ import annotations

import contextlib
import random
import time

import pytest
import sqlalchemy as sa

from tests.faults.checker import Ledger, assert_exact, check, report
from tests.faults.harness import (
    FAST,
    App,
    Writers,
    backend_of,
    keys_of,
    read_back,
    simple_transaction,
    unique_topic,
    wait_until,
)
from tests.support import RelayProcess

pytestmark = pytest.mark.faults


def kill_other_connections(app: App) -> int:
    """Kill every connection to the database that is not the application's: the relay's."""
    pg = app.dialect == "postgresql"
    with app.engine.connect() as conn:
        if pg:
            query = (
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        else:
            query = (
                "SELECT id FROM information_schema.processlist "
                "WHERE db = database() AND id <> connection_id()"
            )
        victims = [int(r[0]) for r in conn.exec_driver_sql(query)]
        victims = [v for v in victims if v not in app.backend_ids]
        for victim in victims:
            if pg:
                conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": victim})
            else:
                with contextlib.suppress(sa.exc.DBAPIError):  # it may have gone meanwhile
                    conn.exec_driver_sql(f"KILL CONNECTION {victim}")
        conn.commit()
    return len(victims)


@pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)
def test_relay_connections_killed_mid_batch(
    db_url: str, kafka: str, relays: list[RelayProcess]
) -> None:
    backend = backend_of(db_url)
    topic = unique_topic("s3")
    # Writers and the killer share a pool opened up front: no application connection is made
    # while connections are being killed, so none is mistaken for the relay's.
    app = App(db_url, topic, pool_size=6, max_overflow=0)
    app.open_all_connections()
    ledger = Ledger()
    rng = random.Random(3)
    try:
        relay = RelayProcess(
            "--db-url", db_url, "--bootstrap-servers", kafka, *FAST, "--batch-size", "200"
        )
        relays.append(relay)
        relay.wait_for_log("lease acquired")
        writers = Writers(
            app,
            ledger,
            4,
            events_per_thread=2_000,
            make_transaction=lambda i: simple_transaction(app, keys_of(i, 4, 40), 8),
            pause=0.01,
        ).start()
        rounds = killed = 0
        while writers.alive():
            time.sleep(rng.uniform(0.2, 0.8))
            killed += kill_other_connections(app)
            rounds += 1
        writers.join()
        wait_until(lambda: app.pending() == 0, 120, "the relay to publish everything")
        assert relay.running(), relay.log[-3000:]
        assert relay.terminate() == 0, relay.log[-3000:]
        figures = check(ledger.by_key, read_back(kafka, topic, ledger.total))
        report(
            f"s3-db-connections-killed-{backend}",
            figures,
            kill_rounds=rounds,
            connections_killed=killed,
        )
        assert_exact(figures)
        assert rounds > 5 and killed > 5, "the relay's connections were not killed"
        assert "waiting for the database" in relay.log
    finally:
        app.close()
