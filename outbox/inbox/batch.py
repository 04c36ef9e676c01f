"""Batched mode (`InboxConfig.batch_size` > 1): several records of a partition in one transaction.

One fence for the batch's last offset, one SELECT for the batch's event ids, one multi-row
INSERT of their dedup rows, then each handler in offset order, one commit: about one round
trip per record instead of five. Any trouble other than a transient error (a handler that
raises, a concurrent copy, a held key, a record without event id) rolls the batch back and
hands its records to the one-record path, which retries, parks and holds as usual; a handler
of an earlier record in the batch may then run again, which handlers must allow anyway.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy.orm import Session

from outbox.inbox.apply import Applier, HandlerFailed, Partition
from outbox.inbox.decode import Record, UndecodableRecord, decode
from outbox.inbox.event import InboxEvent
from outbox.inbox.store import DuplicateRace


class _Fallback(Exception):
    """The batch cannot be applied as one: use the one-record path."""


def apply_batch(
    applier: Applier, part: Partition, generation: int, records: Sequence[Record]
) -> None:
    """Apply `records` (consecutive, of one partition) in one transaction, or one by one."""
    try:
        events = [decode(r) for r in records]
    except UndecodableRecord:
        events = []
    if not events or any(
        e.key is not None and (part[0], part[1], e.key) in applier.blocked for e in events
    ):
        for record in records:
            applier.one(part, generation, record)
        return
    started = time.perf_counter()
    try:
        outcomes = applier.transient(lambda: _once(applier, part, generation, records, events))
    except _Fallback:
        for record in records:
            applier.one(part, generation, record)
        return
    applier.stored[part] = records[-1].offset + 1
    seconds = (time.perf_counter() - started) / len(records)
    for event, outcome in zip(events, outcomes, strict=True):
        applier.report(outcome, event, seconds)


def _once(
    applier: Applier,
    part: Partition,
    generation: int,
    records: Sequence[Record],
    events: list[InboxEvent],
) -> list[str]:
    store = applier.store
    try:
        with applier.session_factory() as session, session.begin():
            store.fence(session, part[0], part[1], generation, records[-1].offset + 1)
            seen = store.seen_many(session, [e.id for e in events])
            fresh: list[tuple[InboxEvent, Record]] = []
            outcomes: list[str] = []
            for event, record in zip(events, records, strict=True):
                if event.id in seen:
                    outcomes.append("duplicate")
                    continue
                seen.add(event.id)  # a repeat within the batch
                fresh.append((event, record))
                outcomes.append("applied")
            if fresh:
                store.record_many(session, [(e.id, r) for e, r in fresh])
                _handle(applier, session, [e for e, _ in fresh])
            return outcomes
    except (HandlerFailed, DuplicateRace):
        raise _Fallback from None


def _handle(applier: Applier, session: Session, events: list[InboxEvent]) -> None:
    for event in events:
        applier.call(session, event)
