"""Partitioned relays: the partition number of every event, and the partition leases.

Revision ID: outbox_0003
Revises: outbox_0002
Create Date: 2026-12-02

Adds `p_partition` (crc32 of the effective key mod 64, see `outbox.partitioning`) with an index
(p_partition, seq), fills it in the rows already there (in Python, in chunks: PostgreSQL before
18 has no crc32), and creates `<table>_partitions`. Frozen copy of `outbox.schema.tables` at the
time of writing: later changes need a new revision. The table stays in single-active mode until
`outbox partitions enable` (docs/PARTITIONING.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from outbox.schema.backfill import backfill_chunk, outbox_clause
from outbox.schema.migrate import current_target

revision: str = "outbox_0003"
down_revision: str | Sequence[str] | None = "outbox_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    target = current_target()
    t, schema = target.table, target.schema
    op.add_column(t, sa.Column("p_partition", sa.SmallInteger(), nullable=True), schema=schema)
    op.create_index(f"ix_{t}_partition", t, ["p_partition", "seq"], schema=schema)
    # Rows written before this revision; rows an older writer adds later are filled by
    # `outbox partitions enable` and by the partitioned relays.
    if not op.get_context().as_sql:  # offline (--sql): nothing to read
        conn, clause = op.get_bind(), outbox_clause(t, schema)
        while backfill_chunk(conn, clause):
            pass
    name = target.partitions_table
    op.create_table(
        name,
        sa.Column("partition", sa.SmallInteger(), nullable=False, autoincrement=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("expires_at", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column("renewed_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("partition", name=f"pk_{name}"),
        schema=schema,
    )


def downgrade() -> None:
    target = current_target()
    op.drop_table(target.partitions_table, schema=target.schema)
    op.drop_index(f"ix_{target.table}_partition", table_name=target.table, schema=target.schema)
    op.drop_column(target.table, "p_partition", schema=target.schema)
