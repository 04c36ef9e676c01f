"""Several relays against one table, as when every replica runs its sidecar: one is active, the
others stand by; killing or pausing the active one neither loses events nor breaks per-key order."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from outbox.relay.store import OutboxStore
from outbox.write.outbox import Outbox
from tests.support import Received, RelayProcess, consume

pytestmark = pytest.mark.integration

KEYS = 50
#: The documented bound: with the default lease TTL a standby takes over within 10 s.
TAKEOVER_BOUND = 10.0


class Writer(threading.Thread):
    """An application thread committing events for KEYS keys, numbered per key."""

    def __init__(self, factory: sessionmaker[Session], outbox: Outbox, topic: str, total: int):
        super().__init__(daemon=True)
        self.factory, self.outbox, self.topic, self.total = factory, outbox, topic, total
        self.committed: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        counters: dict[int, int] = defaultdict(int)
        try:
            for start in range(0, self.total, 10):
                ids = []
                with self.factory.begin() as session:
                    for i in range(start, min(start + 10, self.total)):
                        key = i % KEYS
                        event = self.outbox.emit(
                            session, "Tick", {"k": key, "n": counters[key]},
                            aggregate_type="tick", aggregate_id=str(key), topic=self.topic,
                        )  # fmt: skip
                        counters[key] += 1
                        ids.append(str(event.id))
                self.committed.extend(ids)
                time.sleep(0.01)
        except BaseException as error:  # reported by the test
            self.error = error


def check(committed: list[str], received: list[Received]) -> tuple[int, int]:
    """(lost, duplicates); asserts no phantom and per-key order of first occurrences."""
    delivered = [r.headers["event_id"].decode() for r in received]
    unique = set(delivered)
    assert unique <= set(committed), "phantom events"
    seen: set[str] = set()
    last: dict[int, int] = {}
    for record, event_id in zip(received, delivered, strict=True):
        if event_id in seen:
            continue
        seen.add(event_id)
        body = json.loads(record.value or b"")
        assert body["n"] == last.get(body["k"], -1) + 1, f"key {body['k']} out of order"
        last[body["k"]] = body["n"]
    return len(set(committed) - unique), len(delivered) - len(unique)


@pytest.fixture
def app(pg_url: str) -> Iterator[tuple[Outbox, sessionmaker[Session]]]:
    outbox = Outbox()
    engine = sa.create_engine(pg_url)
    outbox.metadata.create_all(engine)
    factory = sessionmaker(engine)
    outbox.install(factory)
    yield outbox, factory
    outbox.uninstall(factory)
    engine.dispose()


def active_pid(store: OutboxStore) -> tuple[int, int] | None:
    """(pid, epoch) of the relay holding an unexpired lease."""
    holder = store.lease_holder()
    if holder is None or holder[0] is None or holder[2] <= 0:
        return None
    return int(holder[0].split(":")[1]), holder[1]


def wait_for_active(store: OutboxStore, timeout: float, not_pid: int | None = None) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = active_pid(store)
        if active is not None and active[0] != not_pid:
            return active[0]
        time.sleep(0.05)
    raise AssertionError(f"no relay (other than {not_pid}) took the lease within {timeout}s")


def test_three_relays_one_killed_mid_stream(
    pg_url: str, kafka: str, app: tuple[Outbox, sessionmaker[Session]], relays: list[RelayProcess]
) -> None:
    outbox, factory = app
    topic = f"failover{uuid.uuid4().hex[:8]}"
    args = ["--db-url", pg_url, "--bootstrap-servers", kafka, "--batch-size", "50"]
    relays.extend(RelayProcess(*args, "--poll-interval", "0.05") for _ in range(3))
    store = OutboxStore.from_url(pg_url)
    try:
        writer = Writer(factory, outbox, topic, total=3000)
        writer.start()
        victim_pid = wait_for_active(store, timeout=30)
        while len(writer.committed) < 1000:
            time.sleep(0.05)
        victim = next(r for r in relays if r.process.pid == victim_pid)
        os.kill(victim_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        successor = wait_for_active(store, timeout=TAKEOVER_BOUND, not_pid=victim_pid)
        print(f"takeover by pid {successor} after {time.monotonic() - killed_at:.1f}s")
        assert victim.process.wait(5) == -signal.SIGKILL

        writer.join(60)
        assert writer.error is None and not writer.is_alive()
        received = consume(kafka, topic, len(writer.committed), timeout=90, settle=1.0)
    finally:
        store.dispose()

    lost, duplicates = check(writer.committed, received)
    print(f"committed {len(writer.committed)}, delivered {len(received)}, duplicates {duplicates}")
    assert lost == 0
    # At most the batches the killed relay had in flight come again.
    assert duplicates <= 2 * 50 * 2


def test_a_paused_relay_loses_its_lease_and_stays_fenced_when_it_wakes(
    pg_url: str, kafka: str, app: tuple[Outbox, sessionmaker[Session]], relays: list[RelayProcess]
) -> None:
    """SIGSTOP stands for a long GC pause or a network stall of the active relay."""
    outbox, factory = app
    topic = f"paused{uuid.uuid4().hex[:8]}"
    args = ["--db-url", pg_url, "--bootstrap-servers", kafka, "--lease-ttl", "2"]
    relays.extend(RelayProcess(*args, "--poll-interval", "0.05") for _ in range(2))
    store = OutboxStore.from_url(pg_url)
    try:
        writer = Writer(factory, outbox, topic, total=2000)
        writer.start()
        paused_pid = wait_for_active(store, timeout=30)
        while len(writer.committed) < 500:
            time.sleep(0.05)
        os.kill(paused_pid, signal.SIGSTOP)
        try:
            wait_for_active(store, timeout=10, not_pid=paused_pid)
            time.sleep(1.0)  # the new relay publishes while the old one is frozen
        finally:
            os.kill(paused_pid, signal.SIGCONT)
        paused = next(r for r in relays if r.process.pid == paused_pid)
        paused.wait_for_log("lease lost", timeout=30)
        assert active_pid(store) not in (None, paused_pid)

        writer.join(60)
        assert writer.error is None and not writer.is_alive()
        received = consume(kafka, topic, len(writer.committed), timeout=90, settle=1.0)
    finally:
        store.dispose()

    lost, duplicates = check(writer.committed, received)
    print(f"committed {len(writer.committed)}, delivered {len(received)}, duplicates {duplicates}")
    assert lost == 0
