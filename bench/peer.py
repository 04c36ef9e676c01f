"""txoutbox side by side: its table, a backlog shaped like the relay's, its relay process.

The rows carry what `outbox relay` sends: the 300-byte payload, the key (1,000 of them) and the
same five headers (event_id, event_type, aggregate_type, aggregate_id, created_at), so both
relays put the same records on the broker.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import sqlalchemy as sa

from bench import cliproc
from bench.common import Context
from bench.outboxdb import KEYS, payload_text
from outbox.kafka import DEFAULT_PRODUCER_SETTINGS

TABLE = "txoutbox"
#: txoutbox's defaults, and the best of a few larger settings tried for a backlog.
DEFAULTS = "txoutbox defaults (batch 50, concurrency 10)"
CONFIGS = {
    DEFAULTS: {"batch_size": 50, "concurrency": 10},
    "txoutbox batch 500, concurrency 500": {"batch_size": 500, "concurrency": 500},
}


def create(url: str, notify: bool) -> None:
    """txoutbox's own schema (and NOTIFY trigger), from its `schema_sql()`."""
    from bench.txoutbox_child import storage_for

    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(storage_for(None, TABLE, notify).schema_sql())  # type: ignore[arg-type]
    finally:
        engine.dispose()


INSERT = sa.text(
    f"INSERT INTO {TABLE} (topic, key, payload, headers) "
    "VALUES (:topic, :key, :payload, CAST(:headers AS jsonb))"
)


def headers(event_id: str, key: str, created_at: str) -> str:
    return json.dumps(
        {
            "event_id": event_id,
            "event_type": "OrderPlaced",
            "aggregate_type": "order",
            "aggregate_id": key,
            "created_at": created_at,
        }
    )


def fill(url: str, count: int, topic: str) -> None:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    f"INSERT INTO {TABLE} (topic, key, payload, headers) SELECT :topic, "
                    f"'order-' || (i % {KEYS}), convert_to(:pad, 'UTF8'), jsonb_build_object("
                    "'event_id', gen_random_uuid()::text, 'event_type', 'OrderPlaced', "
                    f"'aggregate_type', 'order', 'aggregate_id', 'order-' || (i % {KEYS}), "
                    "'created_at', now()::text) "
                    "FROM generate_series(CAST(1 AS bigint), CAST(:n AS bigint)) AS i"
                ),
                {"topic": topic, "pad": payload_text(), "n": count},
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM ANALYZE {TABLE}")
    finally:
        engine.dispose()


def start(ctx: Context, url: str, config: dict[str, int], notify: bool) -> cliproc.Sidecar:
    dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    spec = {
        "dsn": dsn,
        "bootstrap_servers": ctx.bootstrap_servers,
        "table": TABLE,
        "notify": notify,
        "producer": dict(DEFAULT_PRODUCER_SETTINGS),
        **config,
    }
    return cliproc.Sidecar(
        [sys.executable, "-m", "bench.txoutbox_child", json.dumps(spec)], {}, "txoutbox"
    )


def backlog_drain(ctx: Context, count: int, config: dict[str, int], topic: str) -> dict[str, Any]:
    with ctx.database("postgresql") as url:
        create(url, notify=False)
        fill(url, count, topic)
        relay = start(ctx, url, config, notify=False)
        try:
            result = cliproc.watch_drain(url, TABLE, "id", count, relay)
        finally:
            relay.stop()
        return result
