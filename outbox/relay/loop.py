"""The relay loop: read pending events, publish them, mark them, in order, with one active relay
per table. It contains no SQL (see `outbox.relay.store`) and does not import kafka-python (see
`outbox.kafka`).

Design
------
* **One active relay per table.** Relays elect a leader through a lease row in the database,
  judged by the database's clock. The holder renews it every ``lease_ttl / 3`` seconds;
  standbys try to take it every second, so after a holder dies a standby takes over within
  ``lease_ttl + 1`` seconds (7 s by default). A single publisher per table is what keeps every
  key's events in outbox order however many sidecars run.
* **Fencing.** Taking the lease bumps its epoch. Every mark (delete / park) runs in one
  transaction with an update of the lease row that matches only our epoch while unexpired, so a
  relay that was paused past its lease cannot mark anything, and before each send the relay
  checks a local deadline that ends before the database's expiry.
* **At least once.** A row is deleted only after the broker acknowledged it. On any failure the
  rows of that key that follow the failed one are not marked either, so the next pass resends
  the key from its first unacknowledged event.
* **No skipped rows, no overtaking.** Each pass reads from the first pending row. Within a pass
  a read continues after the last seq read only while no lower seq has become visible (a
  transaction that committed late); when one has, the pass ends and the next starts from the
  first row again: the late event is published, and no later event of its key goes first.
* **Outages are not poison.** An unavailable broker or database pauses the relay with jittered
  exponential backoff (tenacity) and never counts an attempt against an event. Only a permanent
  rejection of one event counts; after ``max_attempts`` the event is parked and, by default,
  later events of its key wait until it is requeued or dropped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from outbox.config import RelayConfig
from outbox.errors import (
    BrokerUnavailableError,
    LeaseLostError,
    OutboxError,
    PublishError,
)
from outbox.relay.envelope import make_encoder
from outbox.relay.observer import RelayObserver
from outbox.relay.publisher import Delivery, Message, Publisher
from outbox.relay.records import PendingEvent
from outbox.relay.store import Lease, OutboxStore, Waker, create_relay_engine, is_transient_db_error
from outbox.retry import retry_transient

logger = logging.getLogger("outbox.relay")

#: Batches kept in flight: the next batch is read while earlier ones are being sent. A crash
#: repeats at most about this many batches' worth of events.
PIPELINE_DEPTH = 2
#: Small batches (a trickle of commits) may overlap more, so that a new event does not wait
#: for the acknowledgement of the one before it.
MAX_INFLIGHT_BATCHES = 16
#: Batches per pass; the next pass re-reads the parked keys and the backlog figures.
BATCHES_PER_PASS = 50
#: Seconds between backlog samples (a COUNT query) reported to the observer.
BACKLOG_INTERVAL = 5.0
#: Seconds between purges of retained published events.
PURGE_INTERVAL = 60.0
#: Seconds to wait for a wake-up between checks of the head batch's acknowledgements.
NEW_EVENTS_POLL = 0.001
#: Seconds after its send before a trickle's acknowledged batch is marked: the batches
#: acknowledged meanwhile are marked with it, one statement for several, and a commit that
#: arrives meanwhile is read and sent at once instead of waiting behind the mark.
SETTLE_DELAY = 0.01
#: Seconds the set of keys held back by parked events is cached.
HELD_KEYS_TTL = 5.0
#: Seconds a batch's acknowledgements are awaited per slice (the stop flag is checked between).
WAIT_SLICE = 0.5
#: Seconds without acknowledgement after which the broker is reported down (readiness).
SILENT_BROKER = 10.0
#: Seconds after which a batch is given up; beyond the producer's own delivery timeout.
ACK_TIMEOUT = 150.0


@dataclass
class RelayState:
    """What the health endpoints report."""

    #: None until first checked, so that the first state is reported too.
    database: bool | None = None
    broker: bool | None = None
    lease: bool = False
    started: bool = False
    last_loop: float = field(default_factory=time.monotonic)
    detail: str = ""


@dataclass
class _InFlight:
    events: list[PendingEvent]
    messages: list[Message]
    delivery: Delivery
    started: float
    #: Wall-clock time the relay saw every message acknowledged (None: not seen yet).
    acked_at: float | None = None


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
    unacknowledged events stay in the table).
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
        self.store = store or OutboxStore(
            create_relay_engine(config.db_url), config.table, config.schema
        )
        self.observer = observer or RelayObserver()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.state = RelayState()
        self._publisher = publisher
        self._publisher_factory = publisher_factory
        # Only a publisher the relay built itself is closed and rebuilt when it wedges.
        self._owns_publisher = publisher is None
        self._encode = make_encoder(config)
        self._stop = threading.Event()
        self._lease: Lease | None = None
        self._renew_at = 0.0
        self._deadline = 0.0
        self._waker: Waker | None = None
        self._next_backlog = 0.0
        self._held: frozenset[str] | None = None
        self._held_until = 0.0
        self._next_purge = 0.0

    # -- public ------------------------------------------------------------------------------

    @property
    def lease(self) -> Lease | None:
        return self._lease

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
        return time.monotonic() - self.state.last_loop < max(30.0, self.config.lease_ttl * 5)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Database and broker reachable (readiness probe), with the lease state."""
        s = self.state
        info = {
            "database": s.database,
            "broker": s.broker,
            "lease": "active" if s.lease else "standby",
        }
        return bool(s.started and s.database and s.broker), info

    def run_once(self) -> int:
        """Start if needed, take the lease if free, and publish what is pending once."""
        self._start()
        if not self._hold_lease():
            return 0
        self._held = None  # a single pass sees requeues and drops made just before it
        return self._pass()

    def run(self) -> None:
        """Publish until stopped. Waits (with backoff, saying what for) for the database and the
        broker at start-up; configuration mistakes and a missing table raise at once."""
        try:
            self._retry(self._start)
            while not self._stop.is_set():
                self.state.last_loop = time.monotonic()
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
        if self._lease is not None:
            try:
                self.store.release(self._lease)
                released = True
            except Exception as error:
                logger.warning("could not release the lease: %s", _first_line(error))
                released = False
            self._set_lease(None, released=released)
        if self._publisher is not None:
            try:
                self._publisher.close(self.config.shutdown_timeout)
            except OutboxError as error:
                logger.warning("closing the publisher: %s", error)
        if self._waker is not None:
            self._waker.close()
            self._waker = None

    # -- start-up and the lease --------------------------------------------------------------

    def _retry(self, fn: Callable[[], int | None]) -> int:
        result = retry_transient(
            fn,
            is_transient=_is_transient,
            stop=self._stop,
            describe=self._describe,
            logger=logger,
            maximum=5.0,
            on_retry=self._on_failure,
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

    def _hold_lease(self) -> bool:
        """Keep or take the lease; False while another relay holds it."""
        now = time.monotonic()
        ttl = self.config.lease_ttl
        if self._lease is not None:
            if now < self._renew_at:
                return True
            try:
                self.store.renew(self._lease, ttl)
                self._set_deadlines(now)
                return True
            except LeaseLostError:
                # Logged once by the observer (LoggingObserver); the epoch is debug detail.
                logger.debug("lost the lease (epoch %d): now standby", self._lease.epoch)
                self._set_lease(None)
        lease = self.store.try_acquire(self.owner, ttl)
        if lease is None:
            return False
        self._set_deadlines(now)
        self._set_lease(lease)
        # Logged once by the observer (LoggingObserver); the epoch is debug detail.
        logger.debug("acquired the lease (epoch %d): now the active relay", lease.epoch)
        return True

    def _set_deadlines(self, started: float) -> None:
        ttl = self.config.lease_ttl
        self._renew_at = started + ttl / 3
        # Ends before the database's expiry (counted from after `started`), with a margin for
        # clock drift: past it this relay must not send without renewing first.
        self._deadline = started + ttl * 0.8

    def _set_lease(self, lease: Lease | None, released: bool = False) -> None:
        changed = (lease is None) != (self._lease is None)
        if changed:
            self._held = None  # another relay may have parked events meanwhile
        self._lease = lease
        self.state.lease = lease is not None
        if changed:
            self.observer.lease(lease is not None, released=released)

    def _ensure_fresh_lease(self) -> Lease:
        """Renew before sending when due; raise LeaseLostError if the lease is gone."""
        if self._lease is None:
            raise LeaseLostError("no lease")
        now = time.monotonic()
        if now >= self._renew_at:
            self.store.renew(self._lease, self.config.lease_ttl)
            self._set_deadlines(now)
        elif now >= self._deadline:
            raise LeaseLostError("local lease deadline passed")
        return self._lease

    # -- the loop ----------------------------------------------------------------------------

    def _cycle(self) -> int:
        if not self._hold_lease():
            return 0
        try:
            published = self._pass()
        except LeaseLostError as error:
            logger.warning("lease lost while publishing (%s): now standby", error)
            self._set_lease(None)
            return 0
        self._housekeeping()
        return published

    def _idle(self) -> None:
        if self._lease is None:
            # Standby: try to take over about once a second.
            self._stop.wait(min(1.0, self.config.lease_ttl / 4))
            return
        timeout = min(self.config.poll_interval, max(0.0, self._renew_at - time.monotonic()))
        if self._waker is not None:
            self._waker.wait(timeout)
        else:
            self._stop.wait(timeout)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_backlog:
            self._next_backlog = now + BACKLOG_INTERVAL
            status = self.store.status()
            self.observer.backlog(status.pending, status.oldest_pending_age_seconds)
        if self.config.retention > 0 and now >= self._next_purge:
            self._next_purge = now + PURGE_INTERVAL
            purged = self.store.purge(self.config.retention)
            if purged:
                logger.info(
                    "purged %d published events older than %ss", purged, self.config.retention
                )

    def _pass(self) -> int:
        """Publish pending events until none are left (or a pass's worth); return the count."""
        assert self._publisher is not None
        publisher = self._publisher
        config = self.config
        held = self._held_keys()
        # Keys that must not be sent again in this pass: a failure or garbage in their line.
        blocked: set[str] = set()
        inflight: deque[_InFlight] = deque()
        # The highest seq read in this pass, and how many events are in flight: a read after
        # the cursor is sent only if no lower seq became visible meanwhile (a transaction that
        # committed late); otherwise the pass ends and the next one reads from the start.
        cursor: int | None = None
        in_flight = 0
        outage: PublishError | None = None
        exhausted = False
        batches = 0
        published = 0
        last_fetch = 0.0
        while True:
            fetch = (
                outage is None
                and not exhausted
                and not self._stop.is_set()
                and batches < BATCHES_PER_PASS
                and self._room(inflight)
            )
            if fetch:
                started = last_fetch = time.monotonic()
                self._ensure_fresh_lease()
                excluded = held | blocked if blocked else held
                if cursor is None:
                    events = self.store.fetch_pending(config.batch_size, excluded)
                    below = in_flight
                else:
                    events, below = self.store.fetch_after(
                        cursor, config.batch_size, excluded, count_limit=in_flight + 1
                    )
                exhausted = len(events) < config.batch_size
                batches += 1
                if events and below != in_flight:
                    # A lower seq became visible late: its key's later events must not go
                    # first. Send nothing more; the next pass starts from the first row.
                    events, exhausted, batches = [], True, BATCHES_PER_PASS
                if events:
                    cursor = events[-1].seq
                    sendable, messages = self._encode_batch(events, blocked)
                    if sendable:
                        delivery = publisher.publish(messages)
                        inflight.append(_InFlight(sendable, messages, delivery, started))
                        in_flight += len(sendable)
                    continue
            if not inflight:
                break
            head = inflight[0]
            if (
                exhausted
                and outage is None
                and self._room(inflight)
                and batches < BATCHES_PER_PASS
                and not self._stop.is_set()
                and (waited := time.monotonic() - head.started) < WAIT_SLICE
                and (_stamp_acks(inflight) is None or waited < SETTLE_DELAY)
            ):
                # Until the head batch is acknowledged and due to be marked, watch for new
                # commits (a NOTIFY, or the poll interval): they are read and sent at once.
                # Acknowledgements are looked for every moment (their time is the published
                # delay), the mark waits for SETTLE_DELAY.
                until_due = SETTLE_DELAY - waited if head.acked_at is not None else 0.0
                if self._new_events_likely(last_fetch, until_due):
                    exhausted = False
                continue
            # The head batch, and the acknowledged ones behind it: marked together, one
            # statement for several batches when the relay runs behind.
            settled = [inflight.popleft()]
            while inflight and inflight[0].delivery.done():
                settled.append(inflight.popleft())
            marked, failure = self._settle(settled, blocked)
            # Marked events are gone; unmarked ones belong to blocked keys, left out by key.
            in_flight -= sum(len(batch.events) for batch in settled)
            published += marked
            outage = outage or failure
        if outage is not None:
            raise outage
        return published

    def _room(self, inflight: deque[_InFlight]) -> bool:
        """Whether another batch may be sent before the oldest one is acknowledged: always up
        to PIPELINE_DEPTH batches, more only while they hold less than one batch of events."""
        if len(inflight) < PIPELINE_DEPTH:
            return True
        if len(inflight) >= MAX_INFLIGHT_BATCHES:
            return False
        return sum(len(batch.events) for batch in inflight) < self.config.batch_size

    def _new_events_likely(self, last_fetch: float, until_due: float) -> bool:
        """Wait for a wake-up, until the head batch is due to be marked (at least a moment);
        True when it is worth reading again."""
        if self._waker is not None and self._waker.wait(max(until_due, NEW_EVENTS_POLL)):
            return True
        return time.monotonic() - last_fetch >= self.config.poll_interval

    def _held_keys(self) -> frozenset[str]:
        """Keys with a parked event (their later events wait), cached: only the lease holder
        parks, so the cache is dropped when this relay parks or takes the lease, and refreshed
        every `HELD_KEYS_TTL` seconds: a running relay sees an operator's requeue or drop
        within that time."""
        if not self.config.hold_parked_keys:
            return frozenset()
        now = time.monotonic()
        if self._held is None or now >= self._held_until:
            self._held = self.store.parked_keys()
            self._held_until = now + HELD_KEYS_TTL
        return self._held

    def _encode_batch(
        self, events: list[PendingEvent], blocked: set[str]
    ) -> tuple[list[PendingEvent], list[Message]]:
        """Messages for the events that may go now; unencodable rows are parked at once."""
        sendable: list[PendingEvent] = []
        messages: list[Message] = []
        garbage: list[tuple[int, str]] = []
        encode = self._encode
        for event in events:
            key = event.partition_key
            if blocked and key in blocked:
                continue
            try:
                message = encode(event)
            except Exception as error:  # garbage in the row: park it, never stop the relay
                garbage.append((event.seq, f"cannot encode event {event.id}: {error}"))
                if self.config.hold_parked_keys:
                    blocked.add(key)
                continue
            sendable.append(event)
            messages.append(message)
        if garbage:
            self._held = None
            assert self._lease is not None
            self.store.record_rejections(
                self._lease, self.config.lease_ttl, garbage, 1, park_now=True
            )
            self.observer.parked("<unencodable>", len(garbage), garbage[0][1])
        return sendable, messages

    def _await(self, delivery: Delivery) -> list[PublishError | None]:
        """Wait for a delivery in short slices: a stop request is honoured within a slice, and
        a broker silent for `SILENT_BROKER` seconds is reported down (/readyz) while the
        producer keeps retrying. After `ACK_TIMEOUT` the delivery is given up (its events stay
        pending) and a publisher the relay built itself is replaced."""
        started = time.monotonic()
        while not delivery.done():
            waited = time.monotonic() - started
            if self._stop.is_set() or waited >= ACK_TIMEOUT:
                break
            if waited >= SILENT_BROKER:
                self._mark(
                    "broker",
                    False,
                    f"waiting for the broker at {self.config.bootstrap_servers}: "
                    f"no acknowledgement for {waited:.0f}s",
                )
            delivery.wait(min(WAIT_SLICE, ACK_TIMEOUT - waited))
        outcomes = delivery.wait(0)
        if not delivery.done() and not self._stop.is_set() and self._owns_publisher:
            logger.warning("no acknowledgement for %.0fs: replacing the publisher", ACK_TIMEOUT)
            self._replace_publisher()
        return outcomes

    def _replace_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        self.state.started = False  # _start builds a new one on the next cycle
        if publisher is not None:
            try:
                publisher.close(0)
            except OutboxError as error:
                logger.warning("closing the publisher: %s", error)

    def _settle(
        self, batches: list[_InFlight], blocked: set[str]
    ) -> tuple[int, PublishError | None]:
        """Wait for the acknowledgements of `batches` (in send order), then mark what may be
        marked. Returns the number marked and the outage that failed some sends, if any."""
        config = self.config
        done: list[int] = []
        done_topics: dict[str, list[float]] = defaultdict(list)
        rejected: list[tuple[int, str]] = []
        rejected_topics: dict[str, int] = defaultdict(int)
        unavailable: dict[str, int] = defaultdict(int)
        outage: PublishError | None = None
        for batch in batches:
            outcomes = self._await(batch.delivery)
            now = batch.acked_at or time.time()
            for event, message, outcome in zip(batch.events, batch.messages, outcomes, strict=True):
                key = event.partition_key
                if outcome is None:
                    # Landed, but an earlier event of its key failed: leave it, it goes again.
                    if key not in blocked:
                        done.append(event.seq)
                        done_topics[message.topic].append(now - event.created_at.timestamp())
                    continue
                if key in blocked:
                    continue  # a follower of the key's failed event: it waits, not at fault
                blocked.add(key)
                if outcome.retriable:
                    outage = outcome
                    unavailable[message.topic] += 1
                else:
                    rejected.append((event.seq, f"{type(outcome).__name__}: {outcome}"))
                    rejected_topics[message.topic] += 1
        lease = self._lease
        if lease is None:
            raise LeaseLostError("lease lost while publishing")
        # Fenced: raises LeaseLostError, and marks nothing, if another relay took over.
        self.store.complete(lease, config.lease_ttl, done, retain=config.retention > 0)
        if done:
            self._mark("broker", True)
        for topic, delays in done_topics.items():
            self.observer.published(topic, len(delays), delays)
        for topic, count in unavailable.items():
            self.observer.publish_failed(topic, "unavailable", count)
        if rejected:
            for topic, count in rejected_topics.items():
                self.observer.publish_failed(topic, "rejected", count)
            parked = self.store.record_rejections(
                lease, config.lease_ttl, rejected, config.max_attempts
            )
            if parked:
                self._held = None
                reason = f"rejected {config.max_attempts} times: {rejected[0][1]}"
                self.observer.parked(next(iter(rejected_topics)), len(parked), reason)
        finished = time.monotonic()
        for batch in batches:
            self.observer.batch(len(batch.events), finished - batch.started)
        return len(done), outage

    # -- health and logs ---------------------------------------------------------------------

    def _mark(self, component: str, up: bool, detail: str = "") -> None:
        # Logged by the observer (LoggingObserver): one line per change, not per batch.
        if getattr(self.state, component) is not up:
            setattr(self.state, component, up)
            self.observer.state(component, up, detail)

    def _on_failure(self, error: BaseException) -> None:
        component = "broker" if isinstance(error, PublishError) else "database"
        self._mark(component, False, self._describe(error))

    def _describe(self, error: BaseException) -> str:
        if isinstance(error, PublishError):
            return f"waiting for the broker at {self.config.bootstrap_servers}: {error}"
        return f"waiting for the database {self.config.masked_db_url}: {_first_line(error)}"


def _stamp_acks(inflight: deque[_InFlight]) -> float | None:
    """Stamp the batches seen acknowledged, in send order up to the first one still waiting;
    return the head batch's stamp (None while it waits)."""
    for batch in inflight:
        if batch.acked_at is None:
            if not batch.delivery.done():
                break
            batch.acked_at = time.time()
    return inflight[0].acked_at


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip()
    return text.splitlines()[0] if text else type(error).__name__


__all__ = ["Relay", "RelayState", "default_publisher"]
