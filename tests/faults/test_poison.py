"""Scenarios 7 and 8: poison events among good ones, and garbage rows inserted by hand."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from tests.faults.checker import Ledger, assert_exact, check, report
from tests.faults.harness import FAST, App, read_back, relay_env, unique_topic, wait_until
from tests.support import OUTBOX, RelayProcess

pytestmark = pytest.mark.faults

GOOD_KEYS = [f"g{i}" for i in range(10)]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OUTBOX, *args], capture_output=True, text=True, timeout=60, env=relay_env()
    )


def parked(url: str) -> list[dict[str, object]]:
    result = cli("parked", "list", "--db-url", url, "--json")
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, object]] = json.loads(result.stdout)
    return listed


def emit_good(app: App, ledger: Ledger, rounds: int, start: int = 0) -> None:
    for n in range(start, start + rounds):
        with app.factory.begin() as session:
            emitted = [(key, app.emit(session, key, n)) for key in GOOD_KEYS]
        ledger.committed(emitted)


def test_poison_events_are_parked_and_delivered_after_the_fix(
    pg_url: str, kafka: str, relays: list[RelayProcess]
) -> None:
    topic = unique_topic("s7")
    # No size cap at emit: the oversized event reaches the table, as from an older release.
    app = App(pg_url, topic, max_payload_bytes=None)
    ledger = Ledger()
    big = "x" * (2 * 1024 * 1024)
    try:
        emit_good(app, ledger, 20)
        with app.factory.begin() as session:
            too_large = app.outbox.emit(
                session, "Big", {"blob": big}, aggregate_type="tick", aggregate_id="big",
                topic=topic,
            )  # fmt: skip
            # No explicit topic: routed to its aggregate type, which is no valid topic name.
            bad_topic = app.outbox.emit(
                session, "Tick", {"n": 0}, aggregate_type="bad topic!", aggregate_id="bad"
            )
            followers = [("big", app.emit(session, "big", i)) for i in range(3)]
        ledger.committed([("big", str(too_large.id)), ("bad", str(bad_topic.id)), *followers])
        emit_good(app, ledger, 20, start=20)
        args = ("--db-url", pg_url, "--bootstrap-servers", kafka, *FAST, "--max-attempts", "2")
        relay = RelayProcess(*args)
        relays.append(relay)
        wait_until(lambda: len(parked(pg_url)) == 2, 60, "both poison events to be parked")
        wait_until(lambda: app.pending() == len(followers), 60, "the good events to flow")
        errors = {e["id"]: str(e["last_error"]) for e in parked(pg_url)}
        assert "MessageSizeTooLarge" in errors[str(too_large.id)], errors
        assert "topic" in errors[str(bad_topic.id)].lower(), errors
        assert relay.running()
        assert relay.terminate() == 0, relay.log[-3000:]
        good_before_fix = len(read_back(kafka, topic, 40 * len(GOOD_KEYS)))

        # The fixes: a producer (and broker) limit above the event's size; the topic set by hand.
        with app.engine.begin() as conn:
            t = app.outbox.table
            conn.execute(sa.update(t).where(t.c.id == bad_topic.id).values(topic=topic))
        requeued = cli("parked", "requeue", "--db-url", pg_url, "--all")
        assert requeued.returncode == 0 and "requeued 2" in requeued.stdout, requeued
        fixed = RelayProcess(*args, "-X", f"max_request_size={4 * 1024 * 1024}")
        relays.append(fixed)
        wait_until(lambda: app.rows() == 0, 60, "the requeued events to be delivered")
        assert fixed.terminate() == 0, fixed.log[-3000:]
        figures = check(ledger.by_key, read_back(kafka, topic, ledger.total))
        report(
            "s7-poison",
            figures,
            parked=len(errors),
            good_delivered_while_parked=good_before_fix,
        )
        assert good_before_fix == 40 * len(GOOD_KEYS)
        assert_exact(figures)
    finally:
        app.close()


def test_garbage_rows_are_parked_with_a_message_and_the_relay_goes_on(
    pg_url: str, kafka: str, relays: list[RelayProcess]
) -> None:
    topic = unique_topic("s8")
    app = App(pg_url, topic)
    ledger = Ledger()
    t = app.outbox.table
    try:
        # A hand-written migration forgot a NOT NULL: the table now accepts what it should not.
        with app.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE outbox ALTER COLUMN aggregateid DROP NOT NULL")
        emit_good(app, ledger, 10)
        garbage = {
            "headers-list": {"aggregateid": "junk1", "headers": [1, 2]},
            "headers-null-value": {"aggregateid": "junk2", "headers": {"tenant": None}},
            "headers-reserved": {"aggregateid": "junk3", "headers": {"event_id": "forged"}},
            "topic-invalid": {"aggregateid": "junk4", "topic": "no spaces allowed"},
            "aggregateid-null": {"aggregateid": None},
        }
        now = datetime.now(UTC)
        with app.engine.begin() as conn:
            for row in garbage.values():
                conn.execute(
                    t.insert().values(
                        id=uuid.uuid4(), aggregatetype="tick", type="Junk", payload=b"{}",
                        created_at=now, **{"topic": topic, **row},
                    )
                )  # fmt: skip
        emit_good(app, ledger, 10, start=10)
        relay = RelayProcess("--db-url", pg_url, "--bootstrap-servers", kafka, *FAST)
        relays.append(relay)
        try:
            wait_until(lambda: app.pending() == 0, 30, "the good events to flow past the garbage")
        finally:
            listed = parked(pg_url)
            print("parked:", json.dumps([(e["aggregate_id"], e["last_error"]) for e in listed]))
        assert relay.running(), relay.log[-3000:]
        assert len(listed) == len(garbage), listed
        assert all(e["last_error"] for e in listed), listed
        # One clear line per parking, naming why (not one per event).
        assert "parked" in relay.log and "cannot encode event" in relay.log
        assert "Traceback" not in relay.log
        assert relay.terminate() == 0, relay.log[-3000:]
        figures = check(ledger.by_key, read_back(kafka, topic, ledger.total))
        report("s8-garbage-rows", figures, garbage_rows=len(garbage), parked=len(listed))
        assert_exact(figures)
        assert figures.duplicates == 0
    finally:
        app.close()
