"""What `outbox inbox status` reads: the consumer names, and per partition the stored offset,
the claim and the parked and held counts (read-only SQL; the apply path is in `store`)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from outbox.inbox.store import HELD, PARKED, REQUEUED, InboxStore


def consumers(conn: sa.Connection, table: str = "outbox", schema: str | None = None) -> list[str]:
    """Every consumer name that has stored offsets or parked rows."""
    store = InboxStore("", table, schema)
    names = {r[0] for r in conn.execute(sa.select(store.offsets.c.consumer).distinct())}
    names |= {r[0] for r in conn.execute(sa.select(store.parked.c.consumer).distinct())}
    return sorted(names)


def partition_status(conn: sa.Connection, store: InboxStore) -> list[dict[str, Any]]:
    """Per partition of the store's consumer: stored offset, generation, owner, parked and held."""
    o, p = store.offsets, store.parked
    counts: dict[tuple[str, int, str], int] = {}
    for topic, partition, state, n in conn.execute(
        sa.select(p.c.topic, p.c.partition, p.c.state, sa.func.count())
        .where(p.c.consumer == store.consumer)
        .group_by(p.c.topic, p.c.partition, p.c.state)
    ):
        counts[(topic, int(partition), state)] = int(n)
    rows = conn.execute(
        sa.select(o.c.topic, o.c.partition, o.c.next_offset, o.c.generation, o.c.owner)
        .where(o.c.consumer == store.consumer)
        .order_by(o.c.topic, o.c.partition)
    ).all()
    return [
        {
            "consumer": store.consumer,
            "topic": r.topic,
            "partition": int(r.partition),
            "next_offset": None if r.next_offset is None else int(r.next_offset),
            "generation": int(r.generation),
            "owner": r.owner,
            "parked": counts.get((r.topic, int(r.partition), PARKED), 0)
            + counts.get((r.topic, int(r.partition), REQUEUED), 0),
            "held": counts.get((r.topic, int(r.partition), HELD), 0),
        }
        for r in rows
    ]
