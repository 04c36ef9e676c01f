"""The lease keeper's threads (outbox.relay.timer) against a store double: renewal goes on by
itself, a watchdog forgets a lease that could not be renewed before it may expire, and the
loss is reported once (the relay aborts its producer on that report)."""

from __future__ import annotations

import threading
import time
from typing import Any

from outbox.errors import LeaseLostError
from outbox.relay.heartbeat import Heartbeat
from outbox.relay.lease import DEADLINE_FRACTION, LeaseKeeper
from outbox.relay.observer import RelayObserver
from outbox.relay.records import Status
from outbox.relay.store import Lease
from outbox.relay.timer import RenewalTimer

TTL = 0.3


class StoreDouble:
    """The few store methods the lease keeper and the heartbeat use, recorded."""

    def __init__(self) -> None:
        self.renewals: list[float] = []
        self.beats = 0
        self.fail: BaseException | None = None
        self.lock = threading.Lock()

    def try_acquire(self, owner: str, ttl: float) -> Lease:
        return Lease("relay", owner, 1)

    def renew(self, lease: Lease, ttl: float) -> None:
        started = time.monotonic()
        if self.fail is not None:
            raise self.fail
        with self.lock:
            self.renewals.append(started)

    def beat(self, *args: Any) -> list[Any]:
        self.beats += 1
        return []

    def status(self) -> Status:
        return Status(0, None, 0)

    def leave(self, relay_id: str) -> None: ...


class Changes(RelayObserver):
    def __init__(self) -> None:
        self.changes: list[tuple[bool, bool, float]] = []

    def __call__(self, held: bool, released: bool) -> None:
        self.changes.append((held, released, time.monotonic()))


def started_timer(store: StoreDouble) -> tuple[LeaseKeeper, RenewalTimer, Changes]:
    changes = Changes()
    keeper = LeaseKeeper(store, "me", TTL, changes)  # type: ignore[arg-type]
    heartbeat = Heartbeat(store, "me", TTL, RelayObserver())  # type: ignore[arg-type]
    timer = RenewalTimer(keeper, store, heartbeat, RelayObserver())  # type: ignore[arg-type]
    assert keeper.acquire()
    timer.start()
    return keeper, timer, changes


def test_the_timer_keeps_the_lease_while_nothing_else_happens() -> None:
    store = StoreDouble()
    keeper, timer, changes = started_timer(store)
    try:
        time.sleep(TTL * 4)  # the loop would be waiting for the broker all this time
        assert keeper.current is not None
        assert keeper.sendable() is keeper.current
    finally:
        timer.stop()
    assert len(store.renewals) >= 6, store.renewals
    assert store.beats >= 6
    assert [c[:2] for c in changes.changes] == [(True, False)]
    assert not keeper.timed


def test_the_watchdog_forgets_a_lease_it_cannot_renew_before_it_may_expire() -> None:
    store = StoreDouble()
    keeper, timer, changes = started_timer(store)
    try:
        time.sleep(TTL / 2)
        store.fail = ConnectionError("database unreachable")
        deadline = time.monotonic() + TTL * 5
        while keeper.current is not None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        timer.stop()
    assert keeper.current is None
    (acquired, lost) = changes.changes
    assert acquired[:2] == (True, False)
    assert lost[:2] == (False, False)  # a loss, not a release: the relay aborts its producer
    last_renewal = max([acquired[2], *store.renewals])
    # Forgotten before the database's expiry (one TTL after the last renewal started).
    assert lost[2] - last_renewal < TTL, (lost[2] - last_renewal, TTL * DEADLINE_FRACTION)


def test_a_renewal_the_database_refuses_forgets_the_lease_at_once() -> None:
    store = StoreDouble()
    keeper, timer, changes = started_timer(store)
    try:
        store.fail = LeaseLostError("another relay took it")
        deadline = time.monotonic() + TTL * 5
        while keeper.current is not None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        timer.stop()
    assert keeper.current is None
    assert [c[:2] for c in changes.changes] == [(True, False), (False, False)]


def late_keeper(store: StoreDouble) -> tuple[LeaseKeeper, Changes]:
    """A lease held in timed mode whose timer never came: its local deadline has passed."""
    changes = Changes()
    keeper = LeaseKeeper(store, "me", TTL, changes)  # type: ignore[arg-type]
    assert keeper.acquire()
    keeper.timed = True
    time.sleep(TTL * DEADLINE_FRACTION + 0.05)
    return keeper, changes


def test_a_send_past_the_local_deadline_asks_the_database_and_goes_on_if_still_ours() -> None:
    store = StoreDouble()
    keeper, changes = late_keeper(store)
    lease = keeper.current
    assert keeper.sendable() is lease
    assert len(store.renewals) == 1  # renewed from the loop, once
    assert keeper.sendable() is lease  # the deadline moved: no second renewal
    assert keeper.fresh() is lease
    assert len(store.renewals) == 1
    assert [c[:2] for c in changes.changes] == [(True, False)]


def test_a_send_past_the_local_deadline_stops_when_the_database_cannot_confirm() -> None:
    for failure in (ConnectionError("database unreachable"), LeaseLostError("taken over")):
        store = StoreDouble()
        keeper, _ = late_keeper(store)
        store.fail = failure
        for check in (keeper.sendable, keeper.fresh):
            try:
                check()
            except LeaseLostError:
                pass
            else:
                raise AssertionError(f"{check.__name__} sent past the deadline after {failure!r}")
        assert store.renewals == []


def test_a_cycle_past_the_local_deadline_keeps_a_lease_the_database_confirms() -> None:
    store = StoreDouble()
    keeper, changes = late_keeper(store)
    lease = keeper.current
    assert keeper.hold()
    assert keeper.current is lease  # the same epoch: not forgotten and taken again
    assert [c[:2] for c in changes.changes] == [(True, False)]
