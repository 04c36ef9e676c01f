"""The poll loop: claim assigned partitions, hand records to the `Applier`, keep polling.

On assignment the rebalance callback only pauses the partitions; the loop then claims each one
(its generation bumped in the database, fencing the previous owner), seeks to the stored offset
and resumes it. While a transient error is retried, every partition is paused and `poll` keeps
the group membership alive. Once a second, parked rows of the owned partitions are read: the
held keys are refreshed, and requeued rows, then the held rows of a key whose parked leader was
requeued or dropped, are applied in offset order. The Kafka offset commit is only for lag
dashboards: the stored offsets are the truth.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from itertools import groupby
from typing import Any, Protocol

from sqlalchemy import exc
from sqlalchemy.orm import Session

from outbox.inbox.apply import Applier, Dispatch, Stopped
from outbox.inbox.batch import apply_batch
from outbox.inbox.decode import Record
from outbox.inbox.observer import InboxObserver
from outbox.inbox.settings import InboxConfig
from outbox.inbox.store import PARKED, Fenced, InboxStore, ParkedRow

log = logging.getLogger("outbox.inbox")

Partition = tuple[str, int]


class RecordSource(Protocol):
    """What the runner needs of a Kafka consumer (`outbox.kafka.consumer.KafkaRecordSource`)."""

    def subscribe(
        self,
        topics: list[str],
        assigned: Callable[[list[Partition]], None],
        revoked: Callable[[list[Partition]], None],
    ) -> None: ...
    def poll(self, timeout: float) -> dict[Partition, list[Record]]: ...
    def pause(self, partitions: list[Partition]) -> None: ...
    def resume(self, partitions: list[Partition]) -> None: ...
    def assignment(self) -> set[Partition]: ...
    def seek(self, partition: Partition, offset: int | None) -> None: ...
    def highwater(self, partition: Partition) -> int | None: ...
    def commit(self, offsets: dict[Partition, int]) -> None: ...
    def close(self) -> None: ...


class Runner:
    """Consumes `topics` for one inbox until `stop` is set. Single-threaded, like the consumer."""

    def __init__(
        self,
        *,
        session_factory: Callable[[], Session],
        store: InboxStore,
        dispatch: Dispatch,
        source: RecordSource,
        topics: list[str],
        owner: str,
        config: InboxConfig,
        stop: threading.Event,
        observer: InboxObserver,
    ) -> None:
        self._factory = session_factory
        self._store = store
        self._dispatch = dispatch
        self._source = source
        self._topics = topics
        self._owner = owner
        self._config = config
        self._stop = stop
        self._observer = observer
        self._lock = threading.Lock()
        self._pending: set[Partition] = set()
        self._owned: dict[Partition, int] = {}
        self._position: dict[Partition, int | None] = {}
        self._next_maintenance = 0.0
        self.heartbeat = time.monotonic()
        self.applier = Applier(
            session_factory=session_factory,
            store=store,
            dispatch=dispatch,
            config=config,
            stop=stop,
            observer=observer,
            wait=self._wait,
        )

    # -- rebalance callbacks (kafka-python's IO thread: no database IO here) ------------------

    def _assigned(self, partitions: list[Partition]) -> None:
        with self._lock:
            self._pending.update(partitions)
        log.info("assigned %s", ", ".join(f"{t}[{p}]" for t, p in sorted(partitions)) or "nothing")

    def _revoked(self, partitions: list[Partition]) -> None:
        with self._lock:
            for part in partitions:
                self._owned.pop(part, None)
                self._pending.discard(part)
        if partitions:
            log.info("revoked %s", ", ".join(f"{t}[{p}]" for t, p in sorted(partitions)))

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        self._source.subscribe(self._topics, self._assigned, self._revoked)
        log.info("outbox.inbox consuming %s as %s", ", ".join(self._topics), self._store.consumer)
        try:
            while not self._stop.is_set():
                self.heartbeat = time.monotonic()
                self._claim_pending()
                batch = self._source.poll(self._config.poll_timeout)
                for part, records in batch.items():
                    self._run_partition(part, records)
                    if self._stop.is_set():
                        break
                if time.monotonic() >= self._next_maintenance:
                    self._maintain()
        except Stopped:
            pass
        finally:
            self._commit_kafka()
            self._source.close()
            log.info("outbox.inbox stopped")

    def _run_partition(self, part: Partition, records: list[Record]) -> None:
        position = self._position.get(part)
        if position is not None:
            records = [r for r in records if r.offset >= position]
        size = self._config.batch_size
        for start in range(0, len(records), size):
            if self._stop.is_set():
                return
            generation = self._owned.get(part)
            if generation is None:
                return  # revoked or fenced: its owner reads on from the stored offset
            chunk = records[start : start + size]
            try:
                if len(chunk) == 1:
                    self.applier.one(part, generation, chunk[0])
                else:
                    apply_batch(self.applier, part, generation, chunk)
            except Fenced:
                self._lose(part)
                return
            self._position[part] = chunk[-1].offset + 1

    def _lose(self, part: Partition) -> None:
        log.warning("%s[%d] is owned by a newer consumer: not committing for it", *part)
        with self._lock:
            self._owned.pop(part, None)
        if part in self._source.assignment():
            self._source.pause([part])

    def _wait(self, seconds: float) -> None:
        """Wait with every partition paused, polling so that the group keeps this member."""
        deadline = time.monotonic() + seconds
        paused = [p for p in self._source.assignment()]
        self._source.pause(paused)
        try:
            while not self._stop.is_set():
                self.heartbeat = time.monotonic()
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for part, records in self._source.poll(min(left, 0.5)).items():
                    if records:  # never skip a record that came through: read it again later
                        self._source.seek(part, records[0].offset)
        finally:
            assigned = self._source.assignment()
            self._source.resume([p for p in paused if p in assigned and p in self._owned])

    # -- claims ---------------------------------------------------------------------------------

    def _claim_pending(self) -> None:
        with self._lock:
            pending = sorted(self._pending)
            self._pending.clear()
        if not pending:
            return
        assigned = self._source.assignment()
        for part in pending:
            if part not in assigned:
                continue
            generation, next_offset = self.applier.transient(lambda p=part: self._claim(p))  # type: ignore[misc]
            with self._lock:
                self._owned[part] = generation
            self._position[part] = next_offset
            self._source.seek(part, next_offset)
            self._source.resume([part])
            log.info(
                "claimed %s[%d] (generation %d), reading from %s",
                *part,
                generation,
                "the beginning" if next_offset is None else f"offset {next_offset}",
            )
        self._next_maintenance = 0.0

    def _claim(self, part: Partition) -> tuple[int, int | None]:
        while True:
            try:
                with self._factory() as session, session.begin():
                    return self._store.claim(session, part[0], part[1], self._owner)
            except exc.IntegrityError:
                continue  # a concurrent first claim inserted the row: update it instead

    # -- parked rows, lag and the dashboard commit ---------------------------------------------

    def _maintain(self) -> None:
        self._next_maintenance = time.monotonic() + self._config.maintenance_interval
        owned = dict(self._owned)

        def read() -> list[ParkedRow]:
            with self._factory() as session, session.begin():
                return self._store.parked_rows(session, owned)

        rows = self.applier.transient(read)
        self.applier.blocked = {(r.topic, r.partition, r.key) for r in rows if r.key is not None}
        by_key = sorted(rows, key=lambda r: (r.topic, r.partition, r.key or "", r.offset))
        for (topic, partition, key), group in groupby(
            by_key, lambda r: (r.topic, r.partition, r.key)
        ):
            generation = owned.get((topic, partition))
            if generation is None:
                continue
            cleared = True
            for row in group:
                if row.state == PARKED:
                    if key is None:
                        continue  # a keyless event holds nothing behind it
                    cleared = False
                    break
                try:
                    released = self.applier.release((topic, partition), generation, row)
                except Fenced:
                    self._lose((topic, partition))
                    return
                if not released:
                    cleared = False
                    if key is not None:
                        break
            if cleared:
                self.applier.blocked.discard((topic, partition, key))
        self._commit_kafka()
        for part in owned:
            high = self._source.highwater(part)
            stored = self.applier.stored.get(part)
            if high is not None and stored is not None:
                self._observer.lag(part[0], part[1], max(high - stored, 0))

    def _commit_kafka(self) -> None:
        offsets = {p: o for p, o in self.applier.stored.items() if p in self._owned}
        self._source.commit(offsets)

    def describe(self) -> dict[str, Any]:
        return {
            "partitions": sorted(f"{t}[{p}]" for t, p in self._owned),
            "database": self.applier.db_up,
        }
