"""Scenario 2: the broker is unreachable for 30 s in the middle of a stream."""

from __future__ import annotations

import time

import pytest

from outbox.demo.broker import free_port
from tests.faults.checker import Ledger, assert_exact, check, report
from tests.faults.harness import (
    FAST,
    App,
    ProxiedBroker,
    Writers,
    keys_of,
    read_back,
    simple_transaction,
    unique_topic,
    wait_until,
)
from tests.support import RelayProcess, http_status

pytestmark = pytest.mark.faults

#: The issue's bound: delivery resumes within 5 s of the broker returning.
RESUME_BOUND = 5.0
#: Margin for this 2-core machine, where the test, the writers, the relay, the broker and both
#: databases share the CPUs: scheduling delays, not the relay, make up anything beyond the bound.
RESUME_MARGIN = 2.5
STALL = 10.0
REFUSE = 20.0


def test_broker_unreachable_for_30s(
    pg_url: str, proxied_kafka: ProxiedBroker, relays: list[RelayProcess]
) -> None:
    broker = proxied_kafka
    topic = unique_topic("s2")
    app = App(pg_url, topic, pool_size=4)
    ledger = Ledger()
    health = free_port()
    try:
        relay = RelayProcess(
            "--db-url", pg_url, "--bootstrap-servers", broker.bootstrap_servers, *FAST,
            "--health-port", str(health),
        )  # fmt: skip
        relays.append(relay)
        relay.wait_for_log("lease acquired")
        writers = Writers(
            app,
            ledger,
            4,
            events_per_thread=3_000,
            make_transaction=lambda i: simple_transaction(app, keys_of(i, 4, 40)),
            pause=0.02,
        ).start()
        wait_until(lambda: ledger.total > 500, 30, "the stream to start")
        ready_during: set[int] = set()
        live_during: set[int] = set()

        def watch(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                ready_during.add(http_status(health, "/readyz"))
                live_during.add(http_status(health, "/healthz"))
                time.sleep(0.5)

        # A black hole first (requests time out), then connections reset and refused.
        broker.proxy.set_mode("stall")
        watch(STALL)
        broker.proxy.set_mode("refuse")
        watch(REFUSE)
        assert relay.running(), relay.log[-3000:]
        backlog = app.pending()
        oldest = app.oldest_pending()
        broker.proxy.set_mode("forward")
        try:
            resume = wait_until(
                lambda: app.oldest_pending() != oldest, 30, "delivery to resume after the outage"
            )
        except AssertionError:
            print(relay.log[-6000:])
            raise
        writers.join()
        wait_until(lambda: app.pending() == 0, 120, "the relay to publish everything")
        assert relay.running(), relay.log[-3000:]
        assert http_status(health, "/readyz") == 200
        assert relay.terminate() == 0, relay.log[-3000:]
        figures = check(ledger.by_key, read_back(broker.bootstrap_servers, topic, ledger.total))
        report(
            "s2-broker-outage-30s",
            figures,
            outage_s=STALL + REFUSE,
            backlog_at_return=backlog,
            resume_s=round(resume, 2),
            readyz_during=sorted(ready_during),
        )
        assert_exact(figures)
        assert "waiting for the broker" in relay.log
        assert 503 in ready_during, "never reported not ready during the outage"
        assert live_during == {200}, "the liveness probe failed during the outage"
        assert resume <= RESUME_BOUND + RESUME_MARGIN, f"resumed after {resume:.1f}s"
    finally:
        app.close()
