"""Create the outbox table and its relay lease table.

Revision ID: outbox_0001
Revises:
Create Date: 2025-11-26

Frozen copy of `outbox.schema.tables` at the time of writing: later changes need a new revision.
The table name and schema come from `outbox.schema.migrate.current_target()` (options, `-x` or env).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from outbox.schema.migrate import current_target

revision: str = "outbox_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("outbox",)
depends_on: str | Sequence[str] | None = None


# MySQL's DATETIME drops fractions of a second unless given a precision.
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    target = current_target()
    t, lease, schema = target.table, target.lease_table, target.schema
    op.create_table(
        t,
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("aggregatetype", sa.String(255), nullable=False),
        sa.Column("aggregateid", sa.String(255), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column(
            "payload",
            sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
            nullable=True,
        ),
        sa.Column("topic", sa.String(249), nullable=True),
        sa.Column("key", sa.String(255), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("parked_at", TIMESTAMP, nullable=True),
        sa.Column("published_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("seq", name=f"pk_{t}"),
        sa.UniqueConstraint("id", name=f"uq_{t}_id"),
        schema=schema,
        sqlite_autoincrement=True,
    )
    op.create_index(f"ix_{t}_pending", t, ["published_at", "seq"], schema=schema)
    op.create_index(f"ix_{t}_parked", t, ["parked_at"], schema=schema)
    op.create_table(
        lease,
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("expires_at", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column("renewed_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=f"pk_{lease}"),
        schema=schema,
    )


def downgrade() -> None:
    target = current_target()
    op.drop_table(target.lease_table, schema=target.schema)
    op.drop_index(f"ix_{target.table}_parked", table_name=target.table, schema=target.schema)
    op.drop_index(f"ix_{target.table}_pending", table_name=target.table, schema=target.schema)
    op.drop_table(target.table, schema=target.schema)
