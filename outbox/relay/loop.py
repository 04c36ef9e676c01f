"""The relay loop: read pending events, publish them, mark them, in order, with one active relay
per table. It contains no SQL (see `outbox.relay.store`) and does not import kafka-python (see
`outbox.kafka`).

Design (the guarantees; each role's module holds the details of its own)
------
* **One active relay per table.** Relays elect a leader through a lease row in the database,
  judged by the database's clock; a standby takes over within ``lease_ttl + 1`` seconds (7 s
  by default) after the holder dies. A single publisher per table is what keeps every key's
  events in outbox order however many sidecars run. See `outbox.relay.lease`.
* **Or partitioned** (``partitioned=True``, docs/PARTITIONING.md): the relays of a table share
  its 64 partitions, each a lease of its own, and every key keeps its order because a key lives
  in one partition. See `outbox.relay.partition_keeper`; the loop below is the same.
* **Fencing.** Taking the lease bumps its epoch; every mark (delete / park) is checked by the
  database against that epoch in the same transaction, and before each send the relay checks
  a local deadline that ends before the database's expiry. The lease is renewed on its own
  thread and connection, so a broker outage never moves it; a watchdog forgets it at the local
  deadline, and losing it aborts the producer (nothing buffered goes out after a takeover).
  See `outbox.relay.lease` and `outbox.relay.timer`.
* **At least once.** A row is deleted only after the broker acknowledged it; on a failure the
  rows of its key that follow it are not marked either. See `outbox.relay.pipeline`.
* **No skipped rows, no overtaking.** Each pass reads from the first pending row. Within a pass
  a read continues after the last seq read only while no lower seq has become visible (a
  transaction that committed late); when one has, the pass ends and the next starts from the
  first row again: the late event is published, and no later event of its key goes first.
  See `outbox.relay.reader`.
* **Outages are not poison.** An unavailable broker or database pauses the relay with jittered
  exponential backoff (tenacity, `outbox.retry`) and never counts an attempt against an event.
  Only a permanent rejection of one event counts; after ``max_attempts`` the event is parked
  and, by default, later events of its key wait until it is requeued or dropped (see
  `outbox.relay.pipeline` and `outbox.relay.parked`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

from outbox.config import RelayConfig
from outbox.errors import BrokerUnavailableError, LeaseLostError, OutboxError
from outbox.relay.heartbeat import Heartbeat
from outbox.relay.housekeeping import Housekeeping
from outbox.relay.lease import LeaseHolder, LeaseKeeper
from outbox.relay.observer import RelayObserver
from outbox.relay.parked import ParkedKeys
from outbox.relay.partition_keeper import keeper_for
from outbox.relay.passes import Passes
from outbox.relay.pipeline import Pipeline
from outbox.relay.publisher import Publisher
from outbox.relay.state import RelayHealth, RelayState
from outbox.relay.store import Fence, OutboxStore, Waker, create_relay_engine, is_transient_db_error
from outbox.relay.timer import RenewalTimer
from outbox.retry import retry_transient

logger = logging.getLogger("outbox.relay")


def default_publisher(config: RelayConfig) -> Publisher:
    """The Kafka publisher, imported only when a relay is built without one."""
    from outbox.kafka import KafkaPublisher

    return KafkaPublisher(config.bootstrap_servers, config.producer_config)


def _is_transient(error: BaseException) -> bool:
    return isinstance(error, BrokerUnavailableError) or is_transient_db_error(error)


class Relay:
    """Publishes an outbox table to the broker.

    ``run()`` runs until ``stop()`` (thread-safe, also from a signal handler). ``run_once()``
    does a single pass and returns how many events it published; it raises
    `BrokerUnavailableError` when the broker failed during the pass (nothing is lost: the
    unacknowledged events stay in the table). As a context manager (``with Relay(...) as
    relay:``) it closes on exit: the lease is released at once, so the next relay (the next
    test) takes over without waiting out ``lease_ttl``.
    """

    def __init__(
        self,
        config: RelayConfig,
        *,
        publisher: Publisher | None = None,
        store: OutboxStore | None = None,
        observer: RelayObserver | None = None,
        owner: str | None = None,
        publisher_factory: Callable[[RelayConfig], Publisher] = default_publisher,
    ) -> None:
        self.config = config
        self._owns_store = store is None
        # Partitioned mode: a frozen relay's open transaction must not hold partition rows.
        idle = config.lease_ttl if config.partitioned else None
        self.store = store or OutboxStore(
            create_relay_engine(config.db_url, idle_transaction_timeout=idle),
            config.table,
            config.schema,
        )
        self.observer = observer or RelayObserver()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._health = RelayHealth(config, self.observer)
        self._mark = self._health.mark
        #: What the health endpoints report (`RelayState`).
        self.state: RelayState = self._health.state
        self._publisher = publisher
        self._publisher_factory = publisher_factory
        # Only a publisher the relay built itself is closed and rebuilt when it wedges.
        self._owns_publisher = publisher is None
        self._stop = threading.Event()
        self._waker: Waker | None = None
        self._housekeeping = Housekeeping(config, self.store, self.observer)
        self._parked = ParkedKeys(self.store, config.hold_parked_keys)
        mode = "partitioned" if config.partitioned else "single"
        self._heartbeat = Heartbeat(self.store, self.owner, config.lease_ttl, self.observer, mode)
        self._lease: LeaseHolder = keeper_for(
            config, self.store, self.owner, self._heartbeat, self._lease_changed, self._moved
        )
        self._timer: RenewalTimer | None = None
        self._standby_told = False
        self._pipeline = Pipeline(
            config,
            self.store,
            self._lease,
            self._parked,
            self.observer,
            stop=self._stop,
            mark=self._mark,
            replace_publisher=self._replace_publisher if self._owns_publisher else None,
            turned=self._health.turned,
        )
        self._passes = Passes(self._pipeline, self._stop)

    # -- public ------------------------------------------------------------------------------

    @property
    def lease(self) -> Fence | None:
        return self._lease.current

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the relay to finish the batch in flight and return from `run`."""
        self._stop.set()
        if self._waker is not None:
            self._waker.interrupt()

    def alive(self) -> bool:
        """The loop has turned recently (liveness probe)."""
        return self._health.alive()

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Database and broker reachable (readiness probe), with the lease state."""
        return self._health.ready()

    def run_once(self) -> int:
        """Start if needed, take the lease if free, and publish what is pending once."""
        self._start()
        self._heartbeat.maybe_beat()
        if not self._lease.hold():
            return 0
        self._parked.invalidate()  # a single pass sees requeues and drops made just before it
        return self._pass()

    def run(self) -> None:
        """Publish until stopped. Waits (with backoff, saying what for) for the database and the
        broker at start-up; configuration mistakes and a missing table raise at once."""
        try:
            self._retry(self._start)
            self._start_timer()
            while not self._stop.is_set():
                self._health.turned()
                published = self._retry(self._cycle)
                if published == 0 and not self._stop.is_set():
                    self._idle()
        except Exception as error:
            if self._stop.is_set() and _is_transient(error):
                return  # stopped while waiting out an outage: a normal exit
            raise
        finally:
            self.close()

    def close(self) -> None:
        """Release the lease, flush and close the publisher. Called by `run` on exit."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.stop()
        self._lease.release()
        if self.state.started:
            self._heartbeat.leave()
        if timer is not None:
            timer.store.dispose()
        if self._publisher is not None:
            try:
                self._publisher.close(self.config.shutdown_timeout)
            except OutboxError as error:
                logger.warning("closing the publisher: %s", error)
        if self._waker is not None:
            self._waker.close()
            self._waker = None

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
        if self._owns_store:
            self.store.dispose()

    # -- start-up ----------------------------------------------------------------------------

    def _retry(self, fn: Callable[[], int | None]) -> int:
        result = retry_transient(
            fn,
            is_transient=_is_transient,
            stop=self._stop,
            describe=self._health.describe,
            logger=logger,
            maximum=5.0,
            on_retry=self._health.failed,
        )
        return result or 0

    def _start(self) -> None:
        if self.state.started:
            return
        self.store.check_table()
        self._mark("database", True)
        if self._publisher is None:
            self._publisher = self._publisher_factory(self.config)
        self._mark("broker", True)
        if self._waker is None:
            self._waker = self.store.waker()
        self.state.started = True
        logger.info(
            "relay %s started on %s table %s",
            self.owner,
            self.config.masked_db_url,
            self.store.table.fullname,
        )

    def _start_timer(self) -> None:
        """Renew the lease, beat and sample the backlog on the lease keeper's own thread and
        connection from now on (`outbox.relay.timer`)."""
        # Partitioned mode renews and rebalances from the loop, between passes (its rounds
        # must not run beside a pass: release-then-claim needs nothing in flight).
        if self._timer is not None or not isinstance(self._lease, LeaseKeeper):
            return
        companion = self.store.companion()
        if companion is None:  # an in-memory database: the loop renews, as in `run_once`
            return
        self._heartbeat.store = companion
        self._timer = RenewalTimer(self._lease, companion, self._heartbeat, self.observer)
        self._timer.start()

    def _lease_changed(self, held: bool, released: bool) -> None:
        # Called from the thread that noticed: the loop's, the lease keeper's or the watchdog's.
        if not held and not released:
            self._abort_sending()
        self._parked.invalidate()  # another relay may have parked events meanwhile
        self.state.lease = held
        self.observer.lease(held, released=released)

    def _abort_sending(self) -> None:
        """The lease is lost (or may expire): records still buffered in the producer must not
        reach the broker after another relay took over. A publisher that offers `abort` drops
        them and fails their deliveries (docs/RELIABILITY.md says what window remains)."""
        abort = getattr(self._publisher, "abort", None)
        if abort is None:
            return
        try:
            abort()
        except OutboxError as error:
            logger.warning("aborting the publisher: %s", error)

    def _moved(self, held: int, claimed: int, released: int, lost: int) -> None:
        self._parked.invalidate()  # the last owner of a claimed partition may have parked
        self.observer.partitions(held, claimed, released, lost)

    def _replace_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        self.state.started = False  # _start builds a new one on the next cycle
        if publisher is not None:
            try:
                publisher.close(0)
            except OutboxError as error:
                logger.warning("closing the publisher: %s", error)

    # -- the loop ----------------------------------------------------------------------------

    def _cycle(self) -> int:
        if self._timer is None:
            self._heartbeat.maybe_beat()
        if not self._lease.hold():
            if not self._standby_told:  # once: a relay that starts as a standby says so
                self._standby_told = True
                self.observer.lease(False)
            return 0
        try:
            published = self._pass()
        except LeaseLostError as error:
            # The observer logs the loss once (a warning); this is its cause.
            logger.info("stopped publishing: %s", error)
            self._lease.lost()
            return 0
        self._housekeeping.run(sample=self._timer is None)
        return published

    def _idle(self) -> None:
        if self._lease.current is None:
            # Standby: try to take over about once a second.
            self._stop.wait(min(1.0, self.config.lease_ttl / 4))
            return
        timeout = self.config.poll_interval
        if self._timer is None:  # the loop renews itself: wake up in time for it
            timeout = min(timeout, self._lease.seconds_to_renewal())
        if self._waker is not None:
            self._waker.wait(timeout)
        else:
            self._stop.wait(timeout)

    def _pass(self) -> int:
        """Publish pending events until none are left (or a pass's worth); return the count."""
        assert self._publisher is not None
        return self._passes.run(self._publisher, self._waker)


__all__ = ["Relay", "RelayState", "default_publisher"]
