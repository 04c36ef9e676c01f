"""Create the snapshot table: one row per snapshot of existing rows, its cursor and progress.

Revision ID: outbox_0004
Revises: outbox_0002
Create Date: 2026-12-02

Frozen copy of `outbox.schema.tables.build_snapshot_table` at the time of writing.
The table name and schema come from `outbox.schema.migrate.current_target()` (options, `-x` or env).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from outbox.schema.migrate import current_target

revision: str = "outbox_0004"
down_revision: str | Sequence[str] | None = "outbox_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# MySQL's DATETIME drops fractions of a second unless given a precision.
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    target = current_target()
    name, schema = f"{target.table}_snapshot", target.schema
    op.create_table(
        name,
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("where_sql", sa.Text(), nullable=True),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("cursor", sa.Text(), nullable=True),
        sa.Column("max_key", sa.Text(), nullable=True),
        sa.Column("rows_done", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("chunks", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("total_estimate", sa.BigInteger(), nullable=True),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("active_seconds", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=f"pk_{name}"),
        schema=schema,
    )
    op.create_index(f"ix_{name}_target", name, ["target", "state"], schema=schema)


def downgrade() -> None:
    target = current_target()
    op.drop_table(f"{target.table}_snapshot", schema=target.schema)
