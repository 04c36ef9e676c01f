"""Create the inbox tables: dedup records, stored offsets, parked and held events.

Revision ID: outbox_0005
Revises: outbox_0004
Create Date: 2026-12-02

Frozen copy of `outbox.schema.tables.build_inbox_tables` at the time of writing. The tables are
named after the outbox table of the run (`<table>_inbox`, `<table>_inbox_offsets`,
`<table>_inbox_parked`), in its schema.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from outbox.schema.migrate import current_target

revision: str = "outbox_0005"
down_revision: str | Sequence[str] | None = "outbox_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
PAYLOAD = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


def upgrade() -> None:
    target = current_target()
    t, schema = target.table, target.schema
    dedup, offsets, parked = f"{t}_inbox", f"{t}_inbox_offsets", f"{t}_inbox_parked"
    op.create_table(
        dedup,
        sa.Column("consumer", sa.String(200), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id", name=f"pk_{dedup}"),
        schema=schema,
    )
    op.create_index(f"ix_{dedup}_received", dedup, ["consumer", "received_at"], schema=schema)
    op.create_table(
        offsets,
        sa.Column("consumer", sa.String(200), nullable=False),
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=True),
        sa.Column("generation", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("consumer", "topic", "partition", name=f"pk_{offsets}"),
        schema=schema,
    )
    op.create_table(
        parked,
        sa.Column("consumer", sa.String(200), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("event_type", sa.String(255), nullable=True),
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(255), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=True),
        sa.Column("payload", PAYLOAD, nullable=True),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("parked_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id", name=f"pk_{parked}"),
        schema=schema,
    )
    op.create_index(
        f"ix_{parked}_key", parked, ["consumer", "topic", "partition", "key"], schema=schema
    )


def downgrade() -> None:
    target = current_target()
    t, schema = target.table, target.schema
    op.drop_index(f"ix_{t}_inbox_parked_key", table_name=f"{t}_inbox_parked", schema=schema)
    op.drop_table(f"{t}_inbox_parked", schema=schema)
    op.drop_table(f"{t}_inbox_offsets", schema=schema)
    op.drop_index(f"ix_{t}_inbox_received", table_name=f"{t}_inbox", schema=schema)
    op.drop_table(f"{t}_inbox", schema=schema)
