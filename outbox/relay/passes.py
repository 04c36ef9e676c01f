"""One pass of the relay loop: read, send, settle, in order, until nothing is left.

A pass reads from the first pending row, then after the last seq it read while no lower seq
has become visible (a transaction that committed late): when one has, it sends nothing more and
ends, and the next pass starts from the first row again (`outbox.relay.reader`). It keeps
reading and sending while earlier batches wait for their acknowledgements (`InFlightBatches`),
and watches for new commits while the head batch is not yet due to be marked. No SQL here (the
store) and no Kafka (the publisher).
"""

from __future__ import annotations

import threading
import time

from outbox.errors import PublishError
from outbox.relay.pipeline import InFlight, InFlightBatches, Pipeline
from outbox.relay.publisher import Publisher
from outbox.relay.reader import OrderedReader
from outbox.relay.store import Waker

#: Batches per pass; the next pass re-reads the parked keys and the backlog figures.
BATCHES_PER_PASS = 50
#: Seconds to wait for a wake-up between checks of the head batch's acknowledgements.
NEW_EVENTS_POLL = 0.001


class Passes:
    """Runs the loop's passes over one table through the relay's pipeline (whose config,
    store, lease and parked keys it uses)."""

    def __init__(self, pipeline: Pipeline, stop: threading.Event) -> None:
        self._config = pipeline.config
        self.store = pipeline.store
        self._lease = pipeline.lease
        self._parked = pipeline.parked
        self._pipeline = pipeline
        self._stop = stop

    def run(self, publisher: Publisher, waker: Waker | None) -> int:
        """Publish pending events until none are left (or a pass's worth); return the count."""
        pipeline = self._pipeline
        config = self._config
        held = self._parked.get()
        # Keys that must not be sent again in this pass: a failure or garbage in their line.
        blocked: set[str] = set()
        inflight = InFlightBatches(config.batch_size)
        reader = OrderedReader(self.store, config.batch_size, self._lease.partitions())
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
                and inflight.room()
                and not self._lease.round_due()
            )
            if fetch:
                started = last_fetch = time.monotonic()
                self._lease.fresh()
                excluded = held | blocked if blocked else held
                events, late = reader.read(excluded, inflight.events)
                exhausted = len(events) < config.batch_size
                batches += 1
                if late:
                    # A lower seq became visible late: its key's later events must not go
                    # first. Send nothing more; the next pass starts from the first row.
                    exhausted, batches = True, BATCHES_PER_PASS
                if events:
                    sendable, messages = pipeline.encode(events, blocked)
                    if sendable:
                        self._lease.sendable()  # the read may have outlasted the lease
                        delivery = publisher.publish(messages)
                        inflight.add(InFlight(sendable, messages, delivery, started))
                    continue
            if not inflight:
                break
            if (
                exhausted
                and outage is None
                and inflight.room()
                and batches < BATCHES_PER_PASS
                and not self._stop.is_set()
                and not self._lease.round_due()
                and (until_due := inflight.until_head_due()) is not None
            ):
                # Until the head batch is acknowledged and due to be marked, watch for new
                # commits (a NOTIFY, or the poll interval): they are read and sent at once.
                if self._new_events_likely(waker, last_fetch, until_due):
                    exhausted = False
                continue
            # The head batch, and the acknowledged ones behind it: marked together. Marked
            # events are gone; unmarked ones belong to blocked keys, left out by key.
            marked, failure = pipeline.settle(inflight.take_settled(), blocked)
            published += marked
            outage = outage or failure
        if outage is not None:
            raise outage
        return published

    def _new_events_likely(self, waker: Waker | None, last_fetch: float, until_due: float) -> bool:
        """Wait for a wake-up, until the head batch is due to be marked (at least a moment);
        True when it is worth reading again."""
        if waker is not None and waker.wait(max(until_due, NEW_EVENTS_POLL)):
            return True
        return time.monotonic() - last_fetch >= self._config.poll_interval


__all__ = ["BATCHES_PER_PASS", "Passes"]
