"""The relay's hot-path statements on PostgreSQL. On psycopg 3 they run on the driver's cursor
(the store's `executor.direct`): same rows as through SQLAlchemy, SQLAlchemy's errors, and a
pool left as SQLAlchemy expects it. And their plans stay off whole-table scans."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from outbox.relay.store import OutboxStore, is_transient_db_error
from outbox.relay.store.postgresql import PsycopgCursor
from tests.support import create_outbox_tables, insert_rows

pytestmark = pytest.mark.integration


def test_the_driver_path_reads_what_sqlalchemy_reads(pg_url: str) -> None:
    table = create_outbox_tables(pg_url)
    created = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    insert_rows(
        pg_url,
        table,
        [
            {
                "aggregateid": "order-1",
                "payload": b'{"total": 12.5}',
                "topic": "orders",
                "key": None,
                "headers": {"traceparent": "00-abc-def-01"},
                "created_at": created,
            },
            {"aggregateid": "order-2", "payload": None, "key": "k", "headers": None},
            {"aggregateid": "order-3", "payload": bytes(range(256)), "id": uuid.uuid4()},
        ],
    )
    fast = OutboxStore.from_url(pg_url)
    slow = OutboxStore.from_url(pg_url)
    slow.executor.direct = None  # the plain SQLAlchemy path, as on every other driver
    try:
        pending = fast.fetch_pending(10)
        assert len(pending) == 3
        direct = fast.executor.direct
        assert isinstance(direct, PsycopgCursor)
        assert fast.reads.fetch_query(10, (), after=False) in direct.compiled
        assert pending == slow.fetch_pending(10)
        assert pending[0].payload == b'{"total": 12.5}' and pending[0].created_at == created
        assert pending[0].headers == {"traceparent": "00-abc-def-01"}
        assert isinstance(pending[0].id, uuid.UUID)
        after = fast.fetch_after(pending[0].seq, 10, count_limit=5)
        assert after == slow.fetch_after(pending[0].seq, 10, count_limit=5)
        assert after[1] == 1 and [e.seq for e in after[0]] == [e.seq for e in pending[1:]]
        # Completion: the fence and the delete from the driver's cursor, by range and by list.
        lease = fast.try_acquire("driver-path", ttl=30)
        assert lease is not None
        fast.complete(lease, 30, [pending[0].seq, pending[2].seq])
        assert [e.seq for e in slow.fetch_pending(10)] == [pending[1].seq]
        fast.complete(lease, 30, [pending[1].seq])
        assert slow.fetch_pending(10) == []
    finally:
        fast.dispose()
        slow.dispose()


def test_a_driver_error_is_sqlalchemys_and_the_pool_stays_transactional(pg_url: str) -> None:
    store = OutboxStore.from_url(pg_url)  # no tables: every read fails
    try:
        with pytest.raises(sa.exc.ProgrammingError, match="outbox") as raised:
            store.fetch_pending(10)
        assert not is_transient_db_error(raised.value)  # a user's mistake, not an outage
        # The connection that failed went back to the pool out of autocommit (or not at all):
        # a write through SQLAlchemy is still one transaction that a rollback undoes.
        with store.engine.connect() as conn:
            assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]
            conn.execute(sa.text("CREATE TABLE probe (x int)"))
            conn.rollback()
        with store.engine.connect() as conn:
            exists = conn.execute(sa.text("SELECT to_regclass('probe')")).scalar_one()
        assert exists is None
    finally:
        store.dispose()


def test_a_dropped_connection_is_a_transient_error_and_the_next_read_reconnects(
    pg_url: str,
) -> None:
    create_outbox_tables(pg_url)
    store = OutboxStore.from_url(pg_url)
    try:
        assert store.fetch_pending(10) == []  # leaves one connection in the pool
        with store.engine.connect() as conn:
            own = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        admin = sa.create_engine(pg_url, poolclass=sa.NullPool)
        try:
            with admin.connect() as conn:
                conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": own})
        finally:
            admin.dispose()
        with pytest.raises(sa.exc.DBAPIError) as raised:
            store.fetch_pending(10)
        assert raised.value.connection_invalidated and is_transient_db_error(raised.value)
        assert store.fetch_pending(10) == []
    finally:
        store.dispose()


def test_the_read_after_the_cursor_never_scans_the_whole_table(pg_url: str) -> None:
    """Its count of the pending events up to the cursor stops at its limit. Uncapped, with
    statistics that see most rows below the cursor (a backlog), PostgreSQL planned it as a
    scan of the whole table on every read: a drain that slowed down as the table grew."""
    table = create_outbox_tables(pg_url)
    engine = sa.create_engine(pg_url, poolclass=sa.NullPool)
    store = OutboxStore.from_url(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    f"INSERT INTO {table.name} (id, aggregatetype, aggregateid, type, payload,"
                    " created_at) SELECT gen_random_uuid(), 'order', 'k' || (g % 100), 'E',"
                    " '\\x00'::bytea, now() FROM generate_series(1, 50000) AS g"
                )
            )
            conn.execute(sa.text(f"ANALYZE {table.name}"))
        query = store.reads.fetch_query(1000, (), after=True)
        compiled = query.compile(dialect=engine.dialect)
        values = compiled.construct_params({"after_seq": 49000, "count_limit": 1001})
        raw = engine.raw_connection()
        try:
            with raw.cursor() as cursor:
                cursor.execute("EXPLAIN " + compiled.string, values)
                plan = "\n".join(row[0] for row in cursor.fetchall())
        finally:
            raw.close()
        assert "Seq Scan" not in plan, plan
    finally:
        store.dispose()
        engine.dispose()
