"""The lease keeper's own threads: renewal on a timer, independent of the publish path, and a
watchdog that stops sending before a lease that could not be renewed may expire.

* `RenewalTimer` (thread ``outbox-lease-keeper``) renews the held lease every ``lease_ttl / 3``
  seconds through its own database connection (a store of its own with a one-connection pool),
  so neither a broker outage (the loop waiting for acknowledgements) nor a loop busy in its
  own database calls delays it. On the same timer it writes the relay's heartbeat (active and
  standby alike) and, while active, samples the backlog for the observer, so the lag gauge keeps
  rising during a broker outage instead of freezing. A failed renewal is retried every
  `RETRY_INTERVAL` seconds; `LeaseLostError` (another relay took over) forgets the lease.
* `Watchdog` (thread ``outbox-lease-watchdog``) waits for the local deadline of the held lease
  (``0.8 * lease_ttl`` after the start of the last successful renewal, before the database's
  expiry at ``1.0 * lease_ttl``). When it passes without a renewal, the lease is forgotten: the
  relay's lease-change callback aborts the producer, so nothing buffered is sent after another
  relay may have taken over. It never makes a database call, so a renewal stuck on a dead
  connection cannot hold it up.

Fencing is unchanged: every mark is checked against the epoch by the database itself.
"""

from __future__ import annotations

import logging
import threading
import time

from outbox.errors import LeaseLostError
from outbox.relay.heartbeat import Heartbeat
from outbox.relay.housekeeping import BACKLOG_INTERVAL, report_backlog
from outbox.relay.lease import DEADLINE_FRACTION, LeaseKeeper, first_line
from outbox.relay.observer import RelayObserver
from outbox.relay.store import OutboxStore

logger = logging.getLogger("outbox.relay")

#: Seconds between attempts while renewals fail (the database is unreachable).
RETRY_INTERVAL = 0.2
#: Longest sleep of either thread, so that a stop request is honoured quickly.
MAX_SLEEP = 1.0


class RenewalTimer:
    """Renews the lease, beats and samples the backlog on a thread of its own."""

    def __init__(
        self,
        keeper: LeaseKeeper,
        store: OutboxStore,
        heartbeat: Heartbeat,
        observer: RelayObserver,
    ) -> None:
        self._keeper = keeper
        #: The timer's own store (own engine and connection), see `OutboxStore.companion`.
        self.store = store
        self._heartbeat = heartbeat
        self._observer = observer
        self._stop = threading.Event()
        self._retry_at = 0.0
        self._next_backlog = 0.0
        self._failing_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="outbox-lease-keeper", daemon=True)
        self._watchdog = Watchdog(keeper, self._stop)

    def start(self) -> None:
        self._keeper.timed = True
        self._thread.start()
        self._watchdog.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads; the loop renews again itself (`timed` cleared)."""
        self._stop.set()
        self._keeper.changed.set()
        for thread in (self._thread, self._watchdog.thread):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout)
        self._keeper.timed = False

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as error:  # never let the keeper die: it is retried next tick
                logger.debug("lease keeper: %s", first_line(error))
            self._stop.wait(self._sleep())

    def _tick(self) -> None:
        now = time.monotonic()
        lease = self._keeper.renewal_due()
        if lease is not None and now >= self._retry_at:
            self._renew(now)
        if self._heartbeat.due():
            self._heartbeat.beat()
        if self._keeper.current is not None and time.monotonic() >= self._next_backlog:
            self._next_backlog = time.monotonic() + BACKLOG_INTERVAL
            try:
                report_backlog(self.store, self._observer)
            except Exception as error:
                logger.debug("backlog sample failed: %s", first_line(error))

    def _renew(self, started: float) -> None:
        keeper = self._keeper
        lease = keeper.current
        try:
            keeper.renew(started, via=self.store)
        except LeaseLostError as error:
            logger.debug("lease keeper: %s", error)
            if lease is not None:
                keeper.forget(lease)
            return
        except Exception as error:
            # The database is unreachable (or slow): retried soon; the watchdog stops sending
            # before the lease may expire. The loop reports the outage itself.
            self._retry_at = time.monotonic() + RETRY_INTERVAL
            if self._failing_since is None:
                self._failing_since = started
            logger.debug("lease renewal failed, retrying: %s", first_line(error))
            return
        if self._failing_since is not None:
            failing = time.monotonic() - self._failing_since
            # A hiccup (one reconnect) is detail; failures that ate into the lease are news.
            level = logging.INFO if failing >= keeper.ttl / 3 else logging.DEBUG
            logger.log(level, "lease renewed again after %.1fs of failed renewals", failing)
            self._failing_since = None

    def _sleep(self) -> float:
        keeper = self._keeper
        waits = [MAX_SLEEP, self._heartbeat.seconds_to_beat()]
        if keeper.current is not None:
            waits.append(max(keeper.seconds_to_renewal(), self._retry_at - time.monotonic()))
            waits.append(self._next_backlog - time.monotonic())
        return max(0.01, min(waits))


class Watchdog:
    """Forgets the held lease when its local deadline passes without a renewal."""

    def __init__(self, keeper: LeaseKeeper, stop: threading.Event) -> None:
        self._keeper = keeper
        self._stop = stop
        self.thread = threading.Thread(target=self._run, name="outbox-lease-watchdog", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        keeper = self._keeper
        while not self._stop.is_set():
            keeper.changed.clear()
            held = keeper.deadline()
            if held is None:
                keeper.changed.wait(MAX_SLEEP)
                continue
            lease, deadline = held
            remaining = deadline - time.monotonic()
            if remaining > 0:
                keeper.changed.wait(min(remaining, MAX_SLEEP))
                continue
            silent = time.monotonic() - (deadline - keeper.ttl * DEADLINE_FRACTION)
            if keeper.current is not lease:
                continue
            logger.warning(
                "no lease renewal for %.1fs (database unreachable or this process paused): "
                "stopping sending before the lease (epoch %d) can expire",
                silent,
                lease.epoch,
                extra={"lease": "expiring"},
            )
            keeper.forget(lease)


__all__ = ["RETRY_INTERVAL", "RenewalTimer", "Watchdog"]
