"""Scenarios 5 and 6: rollbacks, savepoints and a long transaction; exactly the committed events
are delivered."""

from __future__ import annotations

import random
import threading

import pytest
from sqlalchemy.orm import Session

from tests.faults.checker import Ledger, assert_exact, check, report
from tests.faults.harness import (
    FAST,
    App,
    Transaction,
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

THREADS = 8
KEYS = 100


def savepoint_transaction(app: App, keys: list[str], ledger: Ledger) -> Transaction:
    """Half of the transactions roll back; one in three runs part of its events in a savepoint
    that itself rolls back half of the time (flushed to the database first, or still buffered)."""

    def run(session: Session, rng: random.Random, n: int) -> list[tuple[str, str]] | None:
        key = rng.choice(keys)
        emitted = [(key, app.emit(session, key, n + i)) for i in range(rng.randint(1, 3))]
        if rng.random() < 1 / 3:
            savepoint = session.begin_nested()
            inner = [(key, app.emit(session, key, n + 10 + i)) for i in range(rng.randint(1, 2))]
            if rng.random() < 0.5:
                app.outbox.flush(session)  # the rows are in the database, inside the savepoint
            if rng.random() < 0.5:
                savepoint.rollback()
                ledger.discarded(len(inner))
            else:
                savepoint.commit()
                emitted += inner
            after = [(key, app.emit(session, key, n + 20))]
            emitted += after
        if rng.random() < 0.5:
            ledger.discarded(len(emitted))
            return None
        return emitted

    return run


@pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)
def test_rollbacks_and_savepoints_deliver_exactly_the_committed_events(
    db_url: str, kafka: str, relays: list[RelayProcess]
) -> None:
    backend = backend_of(db_url)
    topic = unique_topic("s5")
    app = App(db_url, topic, pool_size=THREADS)
    ledger = Ledger()
    try:
        relays.append(RelayProcess("--db-url", db_url, "--bootstrap-servers", kafka, *FAST))
        writers = Writers(
            app,
            ledger,
            THREADS,
            events_per_thread=250,
            make_transaction=lambda i: savepoint_transaction(
                app, keys_of(i, THREADS, KEYS), ledger
            ),
        ).start()
        writers.join()
        wait_until(lambda: app.pending() == 0, 120, "the relay to publish everything")
        assert relays[0].terminate() == 0, relays[0].log[-3000:]
        figures = check(ledger.by_key, read_back(kafka, topic, ledger.total))
        report(
            f"s5-rollbacks-savepoints-{backend}",
            figures,
            rolled_back_events=ledger.rolled_back,
            commits=writers.commits,
            rollbacks=writers.rollbacks,
        )
        assert_exact(figures)
        assert figures.duplicates == 0, figures.line()
        assert ledger.rolled_back > 0 and writers.rollbacks > 0
    finally:
        app.close()


@pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)
def test_a_long_transaction_is_delivered_after_later_ones(
    db_url: str, kafka: str, relays: list[RelayProcess]
) -> None:
    backend = backend_of(db_url)
    topic = unique_topic("s6")
    app = App(db_url, topic, pool_size=6)
    ledger = Ledger()
    try:
        relays.append(RelayProcess("--db-url", db_url, "--bootstrap-servers", kafka, *FAST))
        long_session = app.factory()
        long_id = app.emit(long_session, "long", 0)
        app.outbox.flush(long_session)  # inserted now: its row has the smallest seq
        writers = Writers(
            app,
            ledger,
            4,
            events_per_thread=250,
            make_transaction=lambda i: simple_transaction(app, keys_of(i, 4, 20)),
        ).start()
        writers.join()
        # Every later transaction is relayed while the long one is still open.
        wait_until(lambda: app.pending() == 0, 120, "the later transactions to be relayed")
        later = ledger.total
        threading.Event().wait(0.5)  # a few more relay passes with the long transaction open
        long_session.commit()
        long_session.close()
        ledger.committed([("long", long_id)])
        wait_until(lambda: app.pending() == 0, 60, "the long transaction's event")
        assert relays[0].terminate() == 0, relays[0].log[-3000:]
        figures = check(ledger.by_key, read_back(kafka, topic, ledger.total))
        report(f"s6-long-transaction-{backend}", figures, later_events=later)
        assert_exact(figures)
    finally:
        app.close()
