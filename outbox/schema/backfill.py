"""Filling `p_partition` in rows written before revision 0003 (or by a writer of an older
version during a rolling deploy), in Python: PostgreSQL before 18 has no crc32, and one function
(`outbox.partitioning.partition_of`) is the only definition of the hash.

Used by the revision itself (the rows present when it runs), by `outbox partitions enable` (the
rows older writers added since) and by partitioned relays (any row still left, with a warning).
"""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa

from outbox.partitioning import effective_key, partition_of

#: Rows read and updated per chunk: short statements on a table the application writes to.
CHUNK = 1000


def backfill_chunk(conn: sa.Connection, table: sa.TableClause, chunk: int = CHUNK) -> int:
    """Set `p_partition` on up to `chunk` rows that have none; return how many were set."""
    c = table.c
    rows = conn.execute(
        sa.select(c.seq, c.key, c.aggregateid)
        .where(c.p_partition.is_(None))
        .order_by(c.seq)
        .limit(chunk)
    ).all()
    by_partition: dict[int, list[int]] = defaultdict(list)
    for seq, key, aggregate_id in rows:
        by_partition[partition_of(effective_key(key, aggregate_id))].append(seq)
    for partition, seqs in sorted(by_partition.items()):
        conn.execute(sa.update(table).where(c.seq.in_(seqs)).values(p_partition=partition))
    return len(rows)


def outbox_clause(name: str, schema: str | None) -> sa.TableClause:
    """The columns `backfill_chunk` needs, without the full table definition (for revisions)."""
    return sa.table(
        name,
        sa.column("seq", sa.BigInteger()),
        sa.column("key", sa.String()),
        sa.column("aggregateid", sa.String()),
        sa.column("p_partition", sa.SmallInteger()),
        schema=schema,
    )


__all__ = ["CHUNK", "backfill_chunk", "outbox_clause"]
