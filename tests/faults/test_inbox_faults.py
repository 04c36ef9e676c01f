"""The inbox under faults: SIGKILL and restart, a database outage, rebalance, a zombie.

Each scenario prints its figures (sent, applied, lost, applied more than once, order
violations per key); docs/INBOX.md quotes them.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from outbox import InboxEvent
from tests.faults.proxy import TcpProxy
from tests.inbox_support import (
    ConsumerProcess,
    applied_ids,
    create_topic,
    effect_rows,
    effects_inbox,
    figures,
    make_events,
    new_topic,
    prepare_db,
    produce,
    running,
    wait_for,
)

pytestmark = pytest.mark.faults


def test_sigkill_mid_stream_and_repeats_at_new_offsets_apply_each_event_once(
    pg_url: str, kafka: str
) -> None:
    prepare_db(pg_url).dispose()
    topic = new_topic("kill")
    create_topic(kafka, topic, 2)
    sent = make_events(keys=4, per_key=15)
    repeats = sent[::4]
    produce(kafka, topic, sent[:30] + repeats[:5] + sent[30:] + repeats[5:])
    slow = {"INBOX_TEST_SLOW": "0.02"}
    first = ConsumerProcess(pg_url, kafka, [topic], env=slow)
    try:
        wait_for(lambda: len(applied_ids(pg_url)) >= 20, 60, "a third applied")
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
    finally:
        first.kill()
    killed_at = len(applied_ids(pg_url))
    second = ConsumerProcess(pg_url, kafka, [topic], env=slow)
    try:
        wait_for(lambda: len(applied_ids(pg_url)) >= len(sent), 90, "every event applied")
        time.sleep(1.0)  # room for a wrong second application to show
        assert second.terminate() == 0
    finally:
        second.kill()
    found = figures(pg_url, sent)
    print(found.line(f"SIGKILL after {killed_at} applied, restart"),
          f"repeats sent {len(repeats)}")  # fmt: skip
    assert (found.lost, found.applied_twice, found.order_violations) == (0, 0, 0)
    assert "Traceback" not in first.log + second.log


def _through(url: str, proxy: TcpProxy) -> str:
    return sa.make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)


def test_database_outage_retries_in_place_without_loss_or_parking(pg_url: str, kafka: str) -> None:
    prepare_db(pg_url).dispose()
    topic = new_topic("outage")
    create_topic(kafka, topic, 2)
    sent = make_events(keys=3, per_key=20)
    target = sa.make_url(pg_url)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        inbox = effects_inbox(_through(pg_url, proxy))
        slow_down = threading.Event()

        @inbox.handler()
        def pace(session: object, event: object) -> None:
            if slow_down.is_set():
                time.sleep(0.02)

        slow_down.set()
        with running(inbox, kafka, [topic]):
            produce(kafka, topic, sent)
            wait_for(lambda: len(applied_ids(pg_url)) >= 10, 60, "some applied")
            proxy.set_mode("refuse")
            during = len(applied_ids(pg_url))
            time.sleep(4.0)  # longer than the group's session timeout would allow a stall
            assert len(applied_ids(pg_url)) == during
            proxy.set_mode("forward")
            wait_for(lambda: len(applied_ids(pg_url)) >= len(sent), 60, "the rest applied")
    found = figures(pg_url, sent)
    attempts = {r.attempt for r in effect_rows(pg_url)}
    print(found.line(f"4 s database outage after {during} applied"),
          f"handler attempts seen {sorted(attempts)}")  # fmt: skip
    assert (found.lost, found.applied_twice, found.order_violations) == (0, 0, 0)
    assert attempts == {1}  # an outage counts no attempt, so nothing came near parking


def test_two_consumers_one_killed_the_other_takes_over(pg_url: str, kafka: str) -> None:
    prepare_db(pg_url).dispose()
    topic = new_topic("group")
    create_topic(kafka, topic, 4)
    sent = make_events(keys=16, per_key=8)
    produce(kafka, topic, sent)
    slow = {"INBOX_TEST_SLOW": "0.1"}
    # Both join in one rebalance (Tansu waits out the rebalance timeout for each join).
    a = ConsumerProcess(pg_url, kafka, [topic], env=slow)
    b: ConsumerProcess | None = ConsumerProcess(pg_url, kafka, [topic], env=slow)
    assert b is not None
    try:
        a.wait_for_log("claimed", 60)
        b.wait_for_log("claimed", 60)
        wait_for(lambda: len(applied_ids(pg_url)) >= 20, 60, "a share applied")
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(10)
        killed_at = len(applied_ids(pg_url))
        # The group notices the killed member after its session timeout, then rebalances
        # (Tansu waits out the rebalance timeout): on a loaded 2-core host that took over 90 s.
        wait_for(lambda: len(applied_ids(pg_url)) >= len(sent), 180, "the survivor finished")

        def taken() -> set[str]:
            assert b is not None
            return {ln.split("claimed ")[1].split(" ")[0] for ln in b.lines if "claimed " in ln}

        # The survivor claims the killed one's partitions too (once the group noticed).
        wait_for(lambda: len(taken()) == 4, 60, "the takeover")
        time.sleep(1.0)
        assert b.terminate() == 0
    finally:
        a.kill()
        if b is not None:
            b.kill()
    found = figures(pg_url, sent)
    print(found.line(f"two consumers, one SIGKILLed after {killed_at} applied"))
    assert (found.lost, found.applied_twice, found.order_violations) == (0, 0, 0)


def test_a_paused_consumer_cannot_commit_for_partitions_it_lost(pg_url: str, kafka: str) -> None:
    prepare_db(pg_url).dispose()
    topic = new_topic("zombie")
    create_topic(kafka, topic, 2)
    sent = make_events(keys=4, per_key=12)
    produce(kafka, topic, sent)
    slow = {"INBOX_TEST_SLOW": "0.1"}
    zombie = ConsumerProcess(pg_url, kafka, [topic], env=slow)
    other: ConsumerProcess | None = None
    try:
        wait_for(lambda: len(applied_ids(pg_url)) >= 5, 60, "the first consumer started")
        other = ConsumerProcess(pg_url, kafka, [topic], env=slow)
        os.kill(zombie.pid, signal.SIGSTOP)  # past its poll interval and session timeout
        paused_at = len(applied_ids(pg_url))
        time.sleep(14.0)
        os.kill(zombie.pid, signal.SIGCONT)
        wait_for(lambda: len(applied_ids(pg_url)) >= len(sent), 120, "every event applied")
        time.sleep(1.0)
        fenced = zombie.count("owned by a newer consumer")
    finally:
        zombie.kill()
        if other is not None:
            other.kill()
    found = figures(pg_url, sent)
    print(found.line(f"zombie paused 14 s after {paused_at} applied"),
          f"commits refused by the fence {fenced}")  # fmt: skip
    assert (found.lost, found.applied_twice, found.order_violations) == (0, 0, 0)
    assert fenced >= 1, zombie.log[-3000:]


def test_deadlocks_are_retried_in_place_and_count_no_attempt(pg_url: str, kafka: str) -> None:
    prepare_db(pg_url).dispose()
    topic = new_topic("deadlock")
    create_topic(kafka, topic, 1)
    sent = make_events(keys=3, per_key=4)
    produce(kafka, topic, sent)
    # One handler attempt only: a deadlock counted as a handler failure would park at once.
    inbox = effects_inbox(pg_url, handler_attempts=1)
    raised: dict[str, int] = {}

    @inbox.handler()
    def deadlock_twice(session: Session, event: InboxEvent) -> None:
        if raised.setdefault(event.id, 0) < 2:
            raised[event.id] += 1
            # The server's own deadlock error (SQLSTATE 40P01), as a real deadlock raises it.
            session.execute(sa.text(
                "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$"
            ))  # fmt: skip

    with running(inbox, kafka, [topic]):
        wait_for(lambda: len(applied_ids(pg_url)) >= len(sent), 60, "every event applied")
        time.sleep(1.0)
    found = figures(pg_url, sent)
    attempts = {r.attempt for r in effect_rows(pg_url)}
    print(found.line(f"{sum(raised.values())} deadlocks (2 per event)"),
          f"handler attempts seen {sorted(attempts)}")  # fmt: skip
    assert (found.lost, found.applied_twice, found.order_violations) == (0, 0, 0)
    assert attempts == {1} and sum(raised.values()) == 2 * len(sent)
