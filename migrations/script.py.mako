"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Autogenerate writes literal table names: replace them with `target.table`, `target.lease_table`
and `schema=target.schema`, and write types out in full (never import them from outbox.schema.tables).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
from outbox.migrate import current_target

revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    target = current_target()
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    target = current_target()
    ${downgrades if downgrades else "pass"}
