"""Scenario 10: a large backlog (1,000,000 events on demand) drains with bounded memory."""

from __future__ import annotations

import hashlib
import os
import time
import uuid

import pytest
import sqlalchemy as sa

from tests.faults.checker import Ledger, assert_exact, check, report
from tests.faults.harness import FAST, App, read_back, unique_topic, wait_until
from tests.support import RelayProcess

pytestmark = pytest.mark.faults

#: The issue's size is 1,000,000 (OUTBOX_FAULTS_BACKLOG=1000000, about 10 minutes here: the relay
#: drained 1.9k events/s on this machine). The default keeps the suite within its CI budget.
EVENTS = int(os.environ.get("OUTBOX_FAULTS_BACKLOG", "200000"))
KEYS = 1000
#: The relay's peak resident memory must stay under this however large the backlog is.
MEMORY_BOUND_MIB = 250


def event_id(i: int) -> str:
    return str(uuid.UUID(hashlib.md5(str(i).encode()).hexdigest()))


@pytest.mark.timeout(1500)
def test_a_million_event_backlog_drains_with_bounded_memory(
    pg_url: str, kafka: str, relays: list[RelayProcess]
) -> None:
    topic = unique_topic("s10")
    app = App(pg_url, topic)
    ledger = Ledger()
    try:
        # One statement, in the database: the same ids as event_id(i), keys k0..k999 in turn.
        with app.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, topic, "
                    "created_at) SELECT md5(i::text)::uuid, 'tick', 'k' || mod(i, :keys), 'Tick', "
                    "convert_to('{\"n\":' || i || '}', 'UTF8'), :topic, now() "
                    "FROM generate_series(0, :count - 1) AS i ORDER BY i"
                ),
                {"keys": KEYS, "topic": topic, "count": EVENTS},
            )
        ledger.committed((f"k{i % KEYS}", event_id(i)) for i in range(EVENTS))
        assert app.pending() == EVENTS
        started = time.monotonic()
        relay = RelayProcess("--db-url", pg_url, "--bootstrap-servers", kafka, *FAST)
        relays.append(relay)
        wait_until(lambda: app.pending() == 0, 1200, "the backlog to drain")
        drained = time.monotonic() - started
        peak_mib = relay.peak_rss_kib() / 1024
        assert relay.terminate() == 0, relay.log[-3000:]
        read_started = time.monotonic()
        deliveries = read_back(kafka, topic, EVENTS, timeout=600)
        read_s = time.monotonic() - read_started
        figures = check(ledger.by_key, deliveries)
        report(
            "s10-million-backlog",
            figures,
            peak_rss_mib=round(peak_mib, 1),
            drain_s=round(drained, 1),
            events_per_s=round(EVENTS / drained),
            read_back_s=round(read_s, 1),
        )
        assert_exact(figures)
        assert peak_mib < MEMORY_BOUND_MIB, f"peak RSS {peak_mib:.0f} MiB"
    finally:
        app.close()
