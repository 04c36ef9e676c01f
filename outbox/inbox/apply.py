"""Applying one record, or one parked row, in one transaction; parking what keeps failing.

The transaction, on the handler's session: the record enters first (`InboxStore.enter`: the
stored offset advances only under this consumer's generation, which locks the partition's row
against a new owner's claim, and the dedup row is inserted unless the event id has one), then
the handlers' writes. Transient database errors
(outage, deadlock, serialization failure) roll back and retry in place with jittered backoff
and count no attempt; the runner's `wait` keeps polling Kafka meanwhile. A handler that raises
is run again up to `handler_attempts` times, then the record is parked and later records of
its key are held (recorded, not applied) while other keys flow.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc
from sqlalchemy.orm import Session

from outbox.inbox.decode import Record, UndecodableRecord, decode
from outbox.inbox.event import InboxEvent
from outbox.inbox.observer import InboxObserver
from outbox.inbox.settings import InboxConfig
from outbox.inbox.store import DONE, HELD, PARKED, DuplicateRace, InboxStore, ParkedRow
from outbox.relay.store.engine import is_transient_db_error
from outbox.retry import retry_transient

log = logging.getLogger("outbox.inbox")

T = TypeVar("T")
Partition = tuple[str, int]
Dispatch = Callable[[Session, InboxEvent], None]
Work = Callable[[Session, InboxEvent], str]


class HandlerFailed(Exception):
    """A handler raised (not a transient database error): counts one attempt."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


class Stopped(Exception):
    """Stop was requested while waiting: leave the record unapplied (it is read again)."""


def undecodable_id(record: Record) -> str:
    """The parked row's id of a record without an event id (its position; never a dedup key)."""
    return f"undecodable:{record.topic}:{record.partition}:{record.offset}"


class Applier:
    """Applies records of the partitions the runner owns; `blocked` are the held keys."""

    def __init__(
        self,
        *,
        session_factory: Callable[[], Session],
        store: InboxStore,
        dispatch: Dispatch,
        config: InboxConfig,
        stop: threading.Event,
        observer: InboxObserver,
        wait: Callable[[float], None],
    ) -> None:
        self._factory = session_factory
        self._store = store
        self._dispatch = dispatch
        self._config = config
        self._stop = stop
        self._observer = observer
        self._wait = wait
        self.blocked: set[tuple[str, int, str | None]] = set()
        #: The next offset stored per partition (for the dashboard commit and the lag).
        self.stored: dict[Partition, int] = {}
        self.db_up = True

    @property
    def store(self) -> InboxStore:
        return self._store

    @property
    def session_factory(self) -> Callable[[], Session]:
        return self._factory

    # -- one record ---------------------------------------------------------------------------

    def one(self, part: Partition, generation: int, record: Record) -> None:
        try:
            event = decode(record)
        except UndecodableRecord as error:
            self._park_new(part, generation, record, None, undecodable_id(record), str(error), 0)
            return
        blocked = (part[0], part[1], event.key)
        if event.key is not None and blocked in self.blocked:
            hold = self._hold(generation, record)
            outcome = self._tx(part, record.offset + 1, event, hold)
            self.report(outcome, event, 0.0)
            return
        started = time.perf_counter()
        outcome, failure = self._attempts(
            part, record.offset + 1, event, self._apply(generation, record)
        )
        if failure is None:
            self.report(outcome, event, time.perf_counter() - started)
            return
        self._park_new(
            part,
            generation,
            record,
            event.type,
            event.id,
            str(failure),
            self._config.handler_attempts,
        )

    # Each work fences first: most enter the record (fence and dedup row in one step). The dedup
    # row comes before the handlers' writes: a concurrent copy then waits on its key.

    def _apply(self, generation: int, record: Record) -> Work:
        def work(session: Session, event: InboxEvent) -> str:
            if not self._store.enter(session, generation, event.id, record, DONE):
                return "duplicate"
            self.call(session, event)
            return "applied"

        return work

    def _hold(self, generation: int, record: Record) -> Work:
        def work(session: Session, event: InboxEvent) -> str:
            if not self._store.enter(session, generation, event.id, record, HELD):
                return "duplicate"
            self._store.park(session, event.id, event.type, record, HELD, None, 0)
            return "held"

        return work

    def _park_new(
        self,
        part: Partition,
        generation: int,
        record: Record,
        event_type: str | None,
        event_id: str,
        error: str,
        attempts: int,
    ) -> None:
        undecodable = event_id.startswith("undecodable:")

        def work(session: Session, _event: InboxEvent | None) -> str:
            if undecodable:  # no dedup row (its id is a position): only the fence
                self._store.fence(session, part[0], part[1], generation, record.offset + 1)
            elif not self._store.enter(session, generation, event_id, record, PARKED):
                return "duplicate"
            self._store.park(session, event_id, event_type, record, PARKED, error, attempts)
            return "parked"

        outcome = self._tx(part, record.offset + 1, None, work)  # type: ignore[arg-type]
        if outcome == "parked":
            key = None if record.key is None else record.key.decode("utf-8", "replace")
            if key is not None:
                self.blocked.add((part[0], part[1], key))
            self._observer.parked(part[0])
            log.warning("parked %s at %s[%d]@%d: %s", event_id, *part, record.offset, error)

    def call(self, session: Session, event: InboxEvent) -> None:
        try:
            self._dispatch(session, event)
            session.flush()  # the handler's own constraint errors are its failure, not ours
        except Exception as error:
            if is_transient_db_error(error):
                raise
            raise HandlerFailed(error) from error

    def _attempts(
        self,
        part: Partition,
        next_offset: int | None,
        event: InboxEvent,
        work: Work,
    ) -> tuple[str, BaseException | None]:
        """Run `work` up to `handler_attempts` times; (outcome, None) or ("", last error)."""
        last: BaseException | None = None
        for attempt in range(1, self._config.handler_attempts + 1):
            try:
                again = dataclasses.replace(event, attempt=attempt)
                outcome = self._tx(part, next_offset, again, work)
                return outcome, None
            except HandlerFailed as failed:
                last = failed
                log.warning(
                    "handler failed for %s (attempt %d of %d): %s",
                    event.id, attempt, self._config.handler_attempts, failed,
                )  # fmt: skip
                if attempt < self._config.handler_attempts:
                    self._wait(self._config.handler_backoff)
                    if self._stop.is_set():
                        raise Stopped from None
        return "", last

    def _tx(
        self,
        part: Partition,
        next_offset: int | None,
        event: InboxEvent,
        work: Work,
    ) -> str:
        """One transaction: `work` (which fences first); transient errors retried in place.
        `next_offset`, when given, is what `work` stores for `part` on success."""

        def once() -> str:
            while True:
                try:
                    with self._factory() as session, session.begin():
                        return work(session, event)
                except DuplicateRace:
                    continue  # the copy committed: the next run's NOT EXISTS sees it

        outcome = self.transient(once)
        if next_offset is not None:
            self.stored[part] = next_offset
        return outcome

    def report(self, outcome: str, event: InboxEvent, seconds: float) -> None:
        if outcome == "applied":
            self._observer.applied(event.topic, event.type, seconds)
        elif outcome == "duplicate":
            self._observer.duplicate(event.topic)
            log.debug(
                "duplicate %s at %s[%d]@%d dropped",
                event.id,
                event.topic,
                event.partition,
                event.offset,
            )
        elif outcome == "held":
            self._observer.held(event.topic)
            log.info("held %s behind a parked event of key %s", event.id, event.key)

    # -- transient errors: retry in place, keep polling -----------------------------------------

    def transient(self, fn: Callable[[], T]) -> T:
        def down(error: BaseException) -> None:
            if self.db_up:
                self.db_up = False
                self._observer.state("database", False)

        try:
            # The healthy path without tenacity (building its Retrying costs per record);
            # the first transient error enters the retry loop, which calls `fn` again.
            return fn()
        except Exception as error:
            if not is_transient_db_error(error):
                raise
            down(error)
            log.warning("database unavailable (%s); retrying", type(error).__name__)
        try:
            result = retry_transient(
                fn,
                is_transient=is_transient_db_error,
                stop=self._stop,
                describe=lambda e: f"database unavailable ({type(e).__name__})",
                logger=log,
                initial=self._config.retry_initial,
                maximum=self._config.retry_maximum,
                on_retry=down,
                sleep=self._wait,
            )
        except exc.DBAPIError as error:
            if self._stop.is_set() and is_transient_db_error(error):
                raise Stopped from None
            raise
        if not self.db_up:
            self.db_up = True
            self._observer.state("database", True)
            log.info("database reachable again")
        return result

    def release(self, part: Partition, generation: int, row: ParkedRow) -> bool:
        """Apply a requeued or released held row; False when it failed again (parked)."""
        try:
            event = decode(row.record)
        except UndecodableRecord as undecodable:
            reason = str(undecodable)
            self.transient(lambda: self._repark(row, reason, 1))
            return False

        def work(session: Session, event: InboxEvent) -> str:
            self._store.fence(session, part[0], part[1], generation, None)
            self._store.unpark(session, row.event_id)
            self._store.set_status(session, row.event_id, DONE)
            self.call(session, event)
            return "applied"

        started = time.perf_counter()
        outcome, failure = self._attempts(part, None, event, work)
        if failure is None:
            log.info("applied %s %s event %s", row.state, event.type, event.id)
            self.report(outcome, event, time.perf_counter() - started)
            return True
        reason = str(failure)
        self.transient(lambda: self._repark(row, reason, self._config.handler_attempts))
        self._observer.parked(part[0])
        log.warning("parked %s again: %s", row.event_id, reason)
        return False

    def _repark(self, row: ParkedRow, error: str, attempts: int) -> None:
        with self._factory() as session, session.begin():
            self._store.repark(session, row.event_id, error, attempts)
            self._store.set_status(session, row.event_id, PARKED)
