"""The outbox table, the relay's lease table and its membership table, on a library-owned
`MetaData`.

Column names follow Debezium's Outbox Event Router defaults (`id`, `aggregatetype`,
`aggregateid`, `type`, `payload`), so a team can switch from this relay to CDC later without
touching application code. The remaining columns are the relay's own bookkeeping.

Types are plain and portable; constraint and index names are explicit so that Alembic's
autogenerate compares them reliably on every dialect.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from outbox._names import check_identifier
from outbox.errors import ConfigurationError

# Kafka topic names are at most 249 characters.
TOPIC_LENGTH = 249
NAME_LENGTH = 255
MAX_TABLE_NAME = 50

PAYLOAD_TYPE = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
# SQLite only auto-increments an INTEGER PRIMARY KEY.
SEQ_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# MySQL's DATETIME drops fractions of a second unless told otherwise; latency is in milliseconds.
TIMESTAMP_TYPE = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


#: What `relays.mode` holds: how the relay shares the table with the others.
RELAY_MODES = ("single", "partitioned")
MODE_LENGTH = 16


def lease_table_name(table_name: str) -> str:
    return f"{table_name}_lease"


def members_table_name(table_name: str) -> str:
    return f"{table_name}_relays"


def build_outbox_table(metadata: sa.MetaData, table_name: str, schema: str | None) -> sa.Table:
    """Define the outbox table on `metadata`."""
    check_identifier(table_name, "table name")
    if len(table_name) > MAX_TABLE_NAME:
        # Index names add up to 11 characters; PostgreSQL truncates past 63, MariaDB refuses.
        raise ConfigurationError(
            f"table name {table_name!r} is longer than {MAX_TABLE_NAME} characters"
        )
    if schema is not None:
        check_identifier(schema, "schema name")
    t = table_name
    return sa.Table(
        table_name,
        metadata,
        # Insert order. The relay reads in this order; sqlite_autoincrement stops SQLite from
        # reusing the numbers of deleted rows, which would break that order.
        sa.Column("seq", SEQ_TYPE, primary_key=True, autoincrement=True),
        # The event's identity: a time-ordered UUIDv7, sent as the `event_id` header.
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("aggregatetype", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("aggregateid", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("type", sa.String(NAME_LENGTH), nullable=False),
        # The Kafka record value, stored as the exact bytes to send. NULL is a tombstone.
        sa.Column("payload", PAYLOAD_TYPE, nullable=True),
        # Explicit topic; NULL means topic prefix + aggregate type.
        sa.Column("topic", sa.String(TOPIC_LENGTH), nullable=True),
        # Explicit Kafka key; NULL means the aggregate id.
        sa.Column("key", sa.String(NAME_LENGTH), nullable=True),
        # User headers (and trace context) as a JSON object of text values.
        sa.Column("headers", sa.JSON(), nullable=True),
        sa.Column("created_at", TIMESTAMP_TYPE, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text(), nullable=True),
        # Set when the event was parked after a permanent rejection; requeue clears it.
        sa.Column("parked_at", TIMESTAMP_TYPE, nullable=True),
        # Set only when published events are retained for a window (default: deleted at once).
        sa.Column("published_at", TIMESTAMP_TYPE, nullable=True),
        sa.PrimaryKeyConstraint("seq", name=f"pk_{t}"),
        sa.UniqueConstraint("id", name=f"uq_{t}_id"),
        sa.Index(f"ix_{t}_pending", "published_at", "seq"),
        sa.Index(f"ix_{t}_parked", "parked_at"),
        schema=schema,
        sqlite_autoincrement=True,
    )


def build_lease_table(metadata: sa.MetaData, table_name: str, schema: str | None) -> sa.Table:
    """Define the lease table that elects the one active relay of an outbox table.

    A row per lease name: the holder, a fencing epoch that grows with every change of holder,
    and an expiry judged by the database clock only.
    The table lives beside the outbox table and is created by the same migration.
    """
    name = lease_table_name(table_name)
    check_identifier(name, "lease table name")
    return sa.Table(
        name,
        metadata,
        sa.Column("name", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("owner", sa.String(NAME_LENGTH), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        # Seconds since the epoch by the database's clock (never a relay's clock), as a plain
        # number so that "now + ttl" is the same arithmetic on every dialect.
        sa.Column("expires_at", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column("renewed_at", sa.Double(), nullable=True),
        # When the current owner took the lease (database clock, like expires_at); added by
        # revision 0002, hence last.
        sa.Column("acquired_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=f"pk_{name}"),
        schema=schema,
    )


def build_members_table(metadata: sa.MetaData, table_name: str, schema: str | None) -> sa.Table:
    """Define the membership table: one row per running relay of an outbox table.

    Each relay upserts its row on its renewal timer (`heartbeat_at`, by the database's clock)
    and deletes it on a clean stop; a row whose heartbeat is older than the lease TTL is a
    relay that died. `outbox status` lists the live ones; partitioned relays share the
    partitions among them.
    """
    name = members_table_name(table_name)
    check_identifier(name, "relays table name")
    return sa.Table(
        name,
        metadata,
        sa.Column("relay_id", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("host", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", TIMESTAMP_TYPE, nullable=False),
        sa.Column("heartbeat_at", TIMESTAMP_TYPE, nullable=False),
        # "single" (one active relay per table) or "partitioned" (RELAY_MODES).
        sa.Column("mode", sa.String(MODE_LENGTH), nullable=False),
        sa.PrimaryKeyConstraint("relay_id", name=f"pk_{name}"),
        schema=schema,
    )


def notify_channel(table_name: str, schema: str | None) -> str:
    """The PostgreSQL LISTEN/NOTIFY channel that wakes relays of this table (at most 63 bytes)."""
    return f"outbox_{schema}_{table_name}"[:63] if schema else f"outbox_{table_name}"[:63]


# -- snapshots of existing rows -------------------------------------------------------------------

#: States of a snapshot row: running (or crashed while running), interrupted (stopped between
#: chunks, e.g. Ctrl-C), done, cancelled, failed (an error that retries did not clear).
SNAPSHOT_STATES = ("running", "interrupted", "done", "cancelled", "failed")


def snapshot_table_name(table_name: str) -> str:
    name = f"{table_name}_snapshot"
    check_identifier(name, "snapshot table name")
    return name


def build_snapshot_table(metadata: sa.MetaData, table_name: str, schema: str | None) -> sa.Table:
    """Define the table of snapshots (one row each): what is snapshotted and how far it got.

    The cursor is committed in the same transaction as each chunk's events, so it is always
    exactly the last primary key whose snapshot event exists.
    """
    name = snapshot_table_name(table_name)
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.String(36), nullable=False),
        # The mapped class ("module:Class") for display, and its table: the resume lookup key.
        sa.Column("model", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("target", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("where_sql", sa.Text(), nullable=True),
        sa.Column("state", sa.String(12), nullable=False),
        # JSON lists of primary key values: the last key done, and the largest key at the start.
        sa.Column("cursor", sa.Text(), nullable=True),
        sa.Column("max_key", sa.Text(), nullable=True),
        sa.Column("rows_done", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("chunks", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("total_estimate", sa.BigInteger(), nullable=True),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        # A token per runner: a runner whose token was replaced (a resume elsewhere) stops.
        sa.Column("owner", sa.String(NAME_LENGTH), nullable=True),
        # Seconds spent running chunks, summed over every run (the rate excludes pauses).
        sa.Column("active_seconds", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column("started_at", TIMESTAMP_TYPE, nullable=False),
        sa.Column("updated_at", TIMESTAMP_TYPE, nullable=False),
        sa.Column("finished_at", TIMESTAMP_TYPE, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=f"pk_{name}"),
        sa.Index(f"ix_{name}_target", "target", "state"),
        schema=schema,
    )
