"""The relay's in-flight pipeline: batches sent and not yet marked, and how each one ends.

* **At least once.** A row is deleted only after the broker acknowledged it. On any failure the
  rows of that key that follow the failed one are not marked either, so the next pass resends
  the key from its first unacknowledged event.
* **Outages are not poison.** A send that failed because the broker is unavailable counts no
  attempt against its event; only a permanent rejection of one event counts, and after
  ``max_attempts`` the event is parked. A row that cannot be encoded is parked at once.
* Every mark is fenced: `OutboxStore.complete` and `record_rejections` carry the lease and
  mark nothing (raising `LeaseLostError`) once another relay took over.

`InFlightBatches` is one pass's queue of batches in send order; `Pipeline` encodes a batch
before it is sent and settles batches once acknowledged. Neither runs SQL of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from outbox.config import RelayConfig
from outbox.errors import PublishError
from outbox.relay.envelope import make_encoder
from outbox.relay.lease import LeaseHolder
from outbox.relay.observer import RelayObserver
from outbox.relay.parked import ParkedKeys
from outbox.relay.publisher import Delivery, Message
from outbox.relay.records import PendingEvent
from outbox.relay.store import OutboxStore

logger = logging.getLogger("outbox.relay")

#: Batches kept in flight: the next batch is read while earlier ones are being sent. A crash
#: repeats at most about this many batches' worth of events.
PIPELINE_DEPTH = 2
#: Small batches (a trickle of commits) may overlap more, so that a new event does not wait
#: for the acknowledgement of the one before it.
MAX_INFLIGHT_BATCHES = 16
#: Seconds after its send before a trickle's acknowledged batch is marked: the batches
#: acknowledged meanwhile are marked with it, one statement for several, and a commit that
#: arrives meanwhile is read and sent at once instead of waiting behind the mark.
SETTLE_DELAY = 0.01
#: Seconds a batch's acknowledgements are awaited per slice (the stop flag is checked between).
WAIT_SLICE = 0.5
#: Seconds without acknowledgement after which the broker is reported down (readiness).
SILENT_BROKER = 10.0
#: Seconds after which a batch is given up; beyond the producer's own delivery timeout.
ACK_TIMEOUT = 150.0


@dataclass
class InFlight:
    """One sent batch: its events, their messages, and the publisher's delivery of them."""

    events: list[PendingEvent]
    messages: list[Message]
    delivery: Delivery
    started: float
    #: Wall-clock time the relay saw every message acknowledged (None: not seen yet).
    acked_at: float | None = None


class InFlightBatches:
    """One pass's batches sent and not yet marked, oldest first, with their event count."""

    def __init__(self, batch_size: int) -> None:
        self._batch_size = batch_size
        self._batches: deque[InFlight] = deque()
        #: Events in the batches held (read by the loop's late-commit check).
        self.events = 0

    def __bool__(self) -> bool:
        return bool(self._batches)

    def add(self, batch: InFlight) -> None:
        self._batches.append(batch)
        self.events += len(batch.events)

    def room(self) -> bool:
        """Whether another batch may be sent before the oldest one is acknowledged: always up
        to PIPELINE_DEPTH batches, more only while they hold less than one batch of events."""
        count = len(self._batches)
        if count < PIPELINE_DEPTH:
            return True
        if count >= MAX_INFLIGHT_BATCHES:
            return False
        return self.events < self._batch_size

    def stamp_acks(self) -> float | None:
        """Stamp the batches seen acknowledged, in send order up to the first one still
        waiting; return the head batch's stamp (None while it waits)."""
        for batch in self._batches:
            if batch.acked_at is None:
                if not batch.delivery.done():
                    break
                batch.acked_at = time.time()
        return self._batches[0].acked_at

    def until_head_due(self) -> float | None:
        """None when the head batch is due to be settled: acknowledged `SETTLE_DELAY` after
        its send, or sent `WAIT_SLICE` ago. Otherwise the seconds until it is due (0 while it
        waits for its acknowledgement: acknowledgements are looked for every moment, their
        time is the published delay)."""
        head = self._batches[0]
        waited = time.monotonic() - head.started
        if waited >= WAIT_SLICE:
            return None
        if self.stamp_acks() is not None and waited >= SETTLE_DELAY:
            return None
        return SETTLE_DELAY - waited if head.acked_at is not None else 0.0

    def take_settled(self) -> list[InFlight]:
        """The head batch and the acknowledged ones behind it, removed: marked together, one
        statement for several batches when the relay runs behind."""
        batches = self._batches
        settled = [batches.popleft()]
        while batches and batches[0].delivery.done():
            settled.append(batches.popleft())
        self.events -= sum(len(batch.events) for batch in settled)
        return settled


class Pipeline:
    """Encodes the events of a batch before it is sent, and settles sent batches: waits for
    their acknowledgements and marks (fenced) what was acknowledged, rejected or parked.

    `blocked` (one pass's set, shared by both calls) holds the keys that must not be sent or
    marked again in the pass: a failure or garbage in their line. `mark` reports a component's
    health; `replace_publisher` (None when the publisher is the caller's) is called when a
    delivery wedged past `ACK_TIMEOUT`.
    """

    def __init__(
        self,
        config: RelayConfig,
        store: OutboxStore,
        lease: LeaseHolder,
        parked: ParkedKeys,
        observer: RelayObserver,
        *,
        stop: threading.Event,
        mark: Callable[..., None],
        replace_publisher: Callable[[], None] | None,
        turned: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.store = store
        self.lease = lease
        self.parked = parked
        self.observer = observer
        self._stop = stop
        self._mark = mark
        self._turned = turned
        self._replace_publisher = replace_publisher
        self._encode = make_encoder(config)

    def encode(
        self, events: list[PendingEvent], blocked: set[str]
    ) -> tuple[list[PendingEvent], list[Message]]:
        """Messages for the events that may go now; unencodable rows are parked at once."""
        sendable: list[PendingEvent] = []
        messages: list[Message] = []
        garbage: list[tuple[int, str]] = []
        garbage_partitions: set[int | None] = set()
        encode = self._encode
        for event in events:
            key = event.partition_key
            if blocked and key in blocked:
                continue
            try:
                message = encode(event)
            except Exception as error:  # garbage in the row: park it, never stop the relay
                garbage.append((event.seq, f"cannot encode event {event.id}: {error}"))
                garbage_partitions.add(event.partition)
                if self.config.hold_parked_keys:
                    blocked.add(key)
                continue
            sendable.append(event)
            messages.append(message)
        if garbage:
            self.parked.invalidate()
            self.store.record_rejections(
                self.lease.fence(partitions=garbage_partitions),
                self.lease.ttl,
                garbage,
                1,
                park_now=True,
            )
            self.observer.parked("<unencodable>", len(garbage), garbage[0][1])
        return sendable, messages

    def _drain_on_stop(self, started: float) -> bool:
        """Stopping: whether to keep waiting for this delivery. Partitioned mode waits up to
        half the shutdown timeout, so that a SIGTERM marks what it sent before its partitions
        are released (a graceful leave repeats nothing); single-active mode stops at once."""
        return self.config.partitioned and (
            time.monotonic() - started < self.config.shutdown_timeout / 2
        )

    def _await(self, delivery: Delivery) -> list[PublishError | None]:
        """Wait for a delivery in short slices: a stop request is honoured within a slice, and
        a broker silent for `SILENT_BROKER` seconds is reported down (/readyz) while the
        producer keeps retrying. After `ACK_TIMEOUT` the delivery is given up (its events stay
        pending) and a publisher the relay built itself is replaced."""
        started = time.monotonic()
        while not delivery.done():
            waited = time.monotonic() - started
            if waited >= ACK_TIMEOUT or (self._stop.is_set() and not self._drain_on_stop(started)):
                break
            if waited >= SILENT_BROKER:
                self._mark(
                    "broker",
                    False,
                    f"waiting for the broker at {self.config.bootstrap_servers}: "
                    f"no acknowledgement for {waited:.0f}s",
                    since=started,
                )
            delivery.wait(min(WAIT_SLICE, ACK_TIMEOUT - waited))
            self._turned()
        outcomes = delivery.wait(0)
        replace = self._replace_publisher
        if not delivery.done() and not self._stop.is_set() and replace is not None:
            logger.warning("no acknowledgement for %.0fs: replacing the publisher", ACK_TIMEOUT)
            replace()
        return outcomes

    def settle(self, batches: list[InFlight], blocked: set[str]) -> tuple[int, PublishError | None]:
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
                        done_topics[message.topic].append(now - event.created_seconds())
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
        # Partitioned mode: the epochs of every partition of these batches (the whole table's
        # lease in single-active mode).
        lease = self.lease.fence(
            "lease lost while publishing", {e.partition for b in batches for e in b.events}
        )
        # Fenced: raises LeaseLostError, and marks nothing, if another relay took over.
        self.store.complete(lease, self.lease.ttl, done, retain=config.retention > 0)
        if done:
            self._mark("broker", True, "")
        for topic, delays in done_topics.items():
            self.observer.published(topic, len(delays), delays)
        for topic, count in unavailable.items():
            self.observer.publish_failed(topic, "unavailable", count)
        if rejected:
            for topic, count in rejected_topics.items():
                self.observer.publish_failed(topic, "rejected", count)
            parked = self.store.record_rejections(
                lease, self.lease.ttl, rejected, config.max_attempts
            )
            if parked:
                self.parked.invalidate()
                reason = f"rejected {config.max_attempts} times: {rejected[0][1]}"
                self.observer.parked(next(iter(rejected_topics)), len(parked), reason)
        finished = time.monotonic()
        for batch in batches:
            self.observer.batch(len(batch.events), finished - batch.started)
        return len(done), outage


__all__ = ["InFlight", "InFlightBatches", "Pipeline"]
