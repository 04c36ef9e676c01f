"""Drafts to outbox rows, and the INSERT statements that write them on the session's connection.

`OutboxWriter.write` turns a session's buffered drafts into rows (`row_of`, in emit order) and
inserts them with as few statements as the driver allows: multi-row INSERTs capped by bind
parameters (`_rows_per_statement`) and by payload bytes (`_STATEMENT_PAYLOAD_BUDGET`). A single
row uses one prepared statement that SQLAlchemy's compiled cache serves; on PostgreSQL with
``notify`` it carries the relays' ``pg_notify`` in the same round trip.

`OutboxWriter.insert` takes rows and a connection, not a session, so a writer of rows outside
the session hooks (a snapshot chunk) goes through the same statements and budgets.

A column computed per event at write time belongs in `row_of` and `INSERTED_COLUMNS`;
`_PARAMS_PER_ROW` follows from the latter. `p_partition` is one: the partition of the effective
key (`outbox.partitioning`), which partitioned relays read by.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, SessionTransaction

from outbox.errors import ConfigurationError, TableMissingError
from outbox.partitioning import effective_key, partition_of
from outbox.write.buffer import SessionBuffer, current_transaction
from outbox.write.direct import DirectStatements
from outbox.write.draft import Draft

#: The columns the write side fills (the rest have defaults or belong to the relay).
INSERTED_COLUMNS = (
    "id",
    "aggregatetype",
    "aggregateid",
    "type",
    "payload",
    "topic",
    "key",
    "headers",
    "created_at",
    "p_partition",
)
# Bind parameters per inserted row (every column the write side sets).
_PARAMS_PER_ROW = len(INSERTED_COLUMNS)
# Rows' payload bytes per INSERT: well under MariaDB's 16 MiB default max_allowed_packet even
# once pymysql escapes binary data.
_STATEMENT_PAYLOAD_BUDGET = 4 * 1024 * 1024


def row_of(draft: Draft) -> dict[str, Any]:
    """The outbox row a resolved draft becomes, as the INSERT's bind parameters: ``p_<column>``
    for each name in `INSERTED_COLUMNS` (built in one step: a snapshot makes a thousand)."""
    assert draft.aggregate_id is not None  # resolved
    return {
        "p_id": draft.id,
        "p_aggregatetype": draft.aggregate_type,
        "p_aggregateid": draft.aggregate_id,
        "p_type": draft.type,
        "p_payload": draft.payload,
        "p_topic": draft.topic,
        "p_key": draft.key,
        "p_headers": draft.headers or None,  # SQL NULL (none_as_null), not JSON 'null'
        "p_created_at": draft.created_at,
        # Stored, not computed in the relays' queries, so that each partition is an index range.
        "p_p_partition": partition_of(effective_key(draft.key, draft.aggregate_id)),
    }


def _rows_per_statement(dialect: sa.Dialect) -> int:
    # Drivers cap bind parameters: SQLite before 3.32 at 999, asyncpg at 32767.
    limit = 32766
    if dialect.name == "sqlite":
        version = dialect.server_version_info or (0,)
        if tuple(version) < (3, 32):
            limit = 999
    return limit // _PARAMS_PER_ROW


def _is_missing_table(exc: DBAPIError) -> bool:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code == "42P01":  # PostgreSQL undefined_table
        return True
    args = getattr(orig, "args", ())
    if args and args[0] == 1146:  # MySQL/MariaDB ER_NO_SUCH_TABLE
        return True
    return "no such table" in str(orig)


def missing_table_message(table: sa.Table) -> str:
    return (
        f"outbox table {table.fullname!r} does not exist: run "
        "`outbox migrate --db-url URL` or `alembic upgrade heads` (with outbox's "
        "revisions in version_locations) before writing events"
    )


class OutboxWriter:
    """Writes drafts into one outbox table, in the caller's transaction.

    :param notify: on PostgreSQL, NOTIFY `notify_channel` once per writing transaction.
    """

    def __init__(self, table: sa.Table, *, notify: bool, notify_channel: str) -> None:
        self.table = table
        self.notify = notify
        self.notify_channel = notify_channel

    def write(
        self,
        session: Session,
        buffer: SessionBuffer,
        extra: list[Draft],
        *,
        final: bool,
        transaction: SessionTransaction | None = None,
    ) -> None:
        """Insert the buffered events (plus `extra`) in emit order with multi-row INSERTs.

        The rows go to `transaction` (default: the session's current one). Entity events whose
        primary key is not known yet stay buffered, unless `final` (then it is an error).
        """
        rows: list[dict[str, Any]] = []
        sizes: list[int] = []
        kept: list[Draft] = []
        drafts = sorted([*buffer.drafts, *extra], key=lambda d: d.id)
        for draft in drafts:
            if not draft.resolve():
                if final:
                    raise ConfigurationError(
                        f"event {draft.type!r} was recorded on {draft.entity!r}, which has no "
                        "primary key: add the entity to the session before committing"
                    )
                kept.append(draft)
                continue
            rows.append(row_of(draft))
            sizes.append(len(draft.payload or b""))
        if rows:
            clause = self._one_row_insert  # for the session's bind lookup; built once
            connection = (
                session.connection(bind_arguments={"clause": clause})
                if transaction is None
                else transaction.connection(None, clause=clause)
            )
            notify = (
                self.notify
                and connection.dialect.name == "postgresql"
                and buffer.notified_in is None
            )
            self.insert(connection, rows, sizes, notify=notify)
            if notify:
                buffer.notified_in = transaction or current_transaction(session)
        buffer.drafts = kept

    def insert(
        self,
        connection: sa.Connection,
        rows: list[dict[str, Any]],
        sizes: list[int],
        *,
        notify: bool = False,
    ) -> None:
        """Insert `rows` (`row_of`'s parameters, consumed) in order; with `notify`, also NOTIFY
        the relays (PostgreSQL), in the same statement as a single row (no extra round trip) or
        as one more statement."""
        max_rows = _rows_per_statement(connection.dialect)
        start = 0
        while start < len(rows):
            end, budget = start, 0
            while end < len(rows) and end - start < max_rows:
                if end > start and budget + sizes[end] > _STATEMENT_PAYLOAD_BUDGET:
                    break
                budget += sizes[end]
                end += 1
            try:
                one = end - start == 1
                # With `notify`, the relays' NOTIFY rides in the same round trip as one row:
                # `WITH i AS (INSERT ...) SELECT pg_notify(...)`.
                statements = self._notifying if one and notify else self._plain
                direct = statements.on(connection)
                if direct is not None:
                    # On the driver's cursor (see `direct`): the same SQL, less client CPU.
                    direct.execute(connection, rows[start:end])
                else:
                    # Statements built once, so that SQLAlchemy's compiled cache serves them.
                    # Many rows go as a list of parameter sets: multi-row VALUES batches
                    # ("insertmanyvalues") or the driver's executemany, in order; a
                    # `.values(rows)` clause would be compiled anew every time.
                    params = rows[start] if one else rows[start:end]
                    connection.execute(statements.statement, params)
                notify = notify and not one  # a lone row carried the NOTIFY
            except DBAPIError as exc:
                if _is_missing_table(exc):
                    raise TableMissingError(missing_table_message(self.table)) from exc
                raise
            start = end
        if notify:
            connection.execute(sa.select(sa.func.pg_notify(self.notify_channel, "")))

    @functools.cached_property
    def _one_row_insert(self) -> sa.Insert:
        """One row's INSERT with a parameter per column, built once so that SQLAlchemy's
        compiled cache serves it."""
        table = self.table
        # inline(): no RETURNING of the new seq, which nothing reads.
        return (
            table.insert()
            .inline()
            .values(
                {
                    name: sa.bindparam(
                        f"p_{name}",
                        # none_as_null: a NULL headers column, not the JSON value 'null'.
                        type_=sa.JSON(none_as_null=True)
                        if name == "headers"
                        else table.c[name].type,
                    )
                    for name in INSERTED_COLUMNS
                }
            )
        )

    @functools.cached_property
    def _notifying_insert(self) -> sa.Select[Any]:
        """`_one_row_insert` and the relays' NOTIFY as one statement (PostgreSQL)."""
        channel = sa.literal(self.notify_channel)
        insert = self._one_row_insert.cte("outbox_insert")
        return sa.select(sa.func.pg_notify(channel, sa.literal(""))).add_cte(insert)

    @functools.cached_property
    def _plain(self) -> DirectStatements:
        return DirectStatements(self._one_row_insert)

    @functools.cached_property
    def _notifying(self) -> DirectStatements:
        return DirectStatements(self._notifying_insert)
