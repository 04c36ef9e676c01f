"""Outbox tables for the scenarios: create them, fill a backlog fast, count what is left.

Rows are shaped like `bench.common.make_events`: a 300-byte JSON payload, 1,000 distinct
aggregate ids (the key), an explicit topic, no user headers, so the relay adds its five
headers. Large backlogs are generated inside the database (generate_series on PostgreSQL, a
recursive CTE on SQLite, a cross join of a digit table on MariaDB): only the drain is measured.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from tests.support import create_outbox_tables

KEYS = 1000
PAYLOAD_BYTES = 300


def payload_text(i: int = 0) -> str:
    """A 300-byte JSON payload like `make_events`' (padding fills it to size)."""
    body = json.dumps({"order_id": f"order-{i % KEYS}", "seq": i, "status": "placed", "pad": ""})
    return body[:-2] + "x" * max(0, PAYLOAD_BYTES - len(body)) + '"}'


def create(url: str) -> sa.Table:
    return create_outbox_tables(url)


def engine_for(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.NullPool)


def fill(url: str, table: sa.Table, count: int, topic: str) -> None:
    """Insert `count` pending events for `topic`, in chunks, by generating them in SQL."""
    engine = engine_for(url)
    pad = payload_text()
    try:
        kind = engine.dialect.name
        chunk = 200_000
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            with engine.begin() as conn:
                if kind == "postgresql":
                    conn.execute(
                        sa.text(
                            f"INSERT INTO {table.name} (id, aggregatetype, aggregateid, type, "
                            "payload, topic, created_at) SELECT gen_random_uuid(), 'order', "
                            f"'order-' || (i % {KEYS}), 'OrderPlaced', convert_to(:pad, 'UTF8'), "
                            ":topic, now() "
                            "FROM generate_series(CAST(:a AS bigint), CAST(:b AS bigint)) AS i"
                        ),
                        {"pad": pad, "topic": topic, "a": start, "b": start + n - 1},
                    )
                elif kind == "sqlite":
                    conn.execute(
                        sa.text(
                            "WITH RECURSIVE s(i) AS (SELECT :a UNION ALL SELECT i + 1 FROM s "
                            f"WHERE i < :b) INSERT INTO {table.name} (id, aggregatetype, "
                            "aggregateid, type, payload, topic, created_at, attempts) "
                            "SELECT lower(hex(randomblob(16))), 'order', "
                            f"'order-' || (i % {KEYS}), 'OrderPlaced', CAST(:pad AS BLOB), "
                            ":topic, :now, 0 FROM s"
                        ),
                        {
                            "pad": pad,
                            "topic": topic,
                            "a": start,
                            "b": start + n - 1,
                            "now": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
                        },
                    )
                else:
                    _fill_executemany(conn, table, start, n, topic, pad)
    finally:
        engine.dispose()


def _fill_executemany(
    conn: sa.Connection, table: sa.Table, start: int, n: int, topic: str, pad: str
) -> None:
    now = datetime.now(UTC)
    payload = pad.encode()
    step = 10_000
    for first in range(start, start + n, step):
        rows = [
            {
                "id": uuid.uuid4(),
                "aggregatetype": "order",
                "aggregateid": f"order-{i % KEYS}",
                "type": "OrderPlaced",
                "payload": payload,
                "topic": topic,
                "created_at": now,
            }
            for i in range(first, min(first + step, start + n))
        ]
        conn.execute(table.insert(), rows)


def count(url: str, table: sa.Table) -> int:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
    finally:
        engine.dispose()


def vacuum(url: str, table: sa.Table) -> None:
    """Fresh statistics after a bulk fill (what autovacuum would have done by then)."""
    engine = engine_for(url)
    try:
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql(f"VACUUM ANALYZE {table.name}")
        elif engine.dialect.name in ("mysql", "mariadb"):
            with engine.connect() as conn:
                conn.exec_driver_sql(f"ANALYZE TABLE {table.name}")
    finally:
        engine.dispose()
