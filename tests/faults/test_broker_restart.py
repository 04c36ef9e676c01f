"""The broker restarts with an empty memory (the embedded Tansu, on the same port): the relay's
idempotent producer id is unknown to it. The relay must build a new producer as soon as the
broker answers so, not keep resending until the producer's delivery timeout (2 minutes).

The trap is a topic the producer never had an acknowledgement on: kafka-python takes the
broker's "unknown producer id" there for retention (KAFKA-5793), resets the sequence and
resends, every 100 ms, for the whole delivery timeout."""

from __future__ import annotations

import pytest

from outbox.demo.broker import start_broker
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

#: Far below the producer's delivery timeout (120 s), which the relay must not wait out.
RESUME_TIMEOUT = 30.0


def test_broker_restart_with_an_empty_memory(pg_url: str, relays: list[RelayProcess]) -> None:
    broker = start_broker()
    port = broker.port
    topic = unique_topic("restart")
    app = App(pg_url, topic, pool_size=2)
    fresh = App(pg_url, topic + "-new", pool_size=4)
    try:
        relay = RelayProcess(
            "--db-url", pg_url, "--bootstrap-servers", broker.bootstrap_servers, *FAST
        )  # fmt: skip
        relays.append(relay)
        relay.wait_for_log("lease acquired")
        Writers(
            app, Ledger(), 2, events_per_thread=200,
            make_transaction=lambda i: simple_transaction(app, keys_of(i, 2, 20)),
        ).start().join()  # fmt: skip
        wait_until(lambda: app.pending() == 0, 60, "the first events to be published")

        # The restart: everything the broker knew (topics, producer ids) is gone. Then a stream
        # to a topic this producer never used, starting while the broker is still down.
        broker.stop()
        ledger = Ledger()
        writers = Writers(
            fresh, ledger, 2, events_per_thread=400,
            make_transaction=lambda i: simple_transaction(fresh, keys_of(i, 2, 20)),
            pause=0.005,
        ).start()  # fmt: skip
        wait_until(lambda: ledger.total > 50, 30, "events committed while the broker is down")
        broker = start_broker(port=port)
        try:
            resume = wait_until(
                lambda: fresh.pending() == 0 and not writers.alive(),
                RESUME_TIMEOUT,
                "delivery to resume after the broker restart",
            )
        except AssertionError:
            print(relay.log[-6000:])
            raise
        writers.join()
        assert relay.running(), relay.log[-3000:]
        assert relay.terminate() == 0, relay.log[-3000:]
        figures = check(
            ledger.by_key, read_back(broker.bootstrap_servers, fresh.topic, ledger.total)
        )
        report(
            "broker-restart-empty-memory",
            figures,
            resume_s=round(resume, 2),
            producers_replaced=relay.count("replacing the Kafka producer"),
        )
        assert_exact(figures)
    finally:
        broker.stop()
        fresh.close()
        app.close()
