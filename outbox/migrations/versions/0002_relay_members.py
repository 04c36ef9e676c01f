"""The relays' membership table, and when the lease holder took the lease.

Revision ID: outbox_0002
Revises: outbox_0001
Create Date: 2026-12-02

Frozen copy of `outbox.schema.tables.build_members_table` (and the lease table's `acquired_at`)
at the time of writing: later changes need a new revision.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from outbox.schema.migrate import current_target

revision: str = "outbox_0002"
down_revision: str | Sequence[str] | None = "outbox_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# MySQL's DATETIME drops fractions of a second unless given a precision.
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    target = current_target()
    members, schema = target.members_table, target.schema
    op.create_table(
        members,
        sa.Column("relay_id", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("heartbeat_at", TIMESTAMP, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("relay_id", name=f"pk_{members}"),
        schema=schema,
    )
    # SQLite: copy the table (as downgrade does) so that its stored CREATE TABLE is the one the
    # model makes, not an ALTER's; elsewhere a plain ADD COLUMN.
    sqlite = op.get_context().dialect.name == "sqlite"
    with op.batch_alter_table(
        target.lease_table, schema=schema, recreate="always" if sqlite else "auto"
    ) as batch:
        batch.add_column(sa.Column("acquired_at", sa.Double(), nullable=True))


def downgrade() -> None:
    target = current_target()
    # SQLite drops a column only by copying the table: batch mode does that where needed.
    with op.batch_alter_table(target.lease_table, schema=target.schema) as batch:
        batch.drop_column("acquired_at")
    op.drop_table(target.members_table, schema=target.schema)
