"""Run the shipped `outbox relay` command (`bench.cliproc`) from a scenario."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from bench import cliproc, outboxdb
from bench.common import Context, unique

#: The relay's poll interval by database, given as a deployment would (OUTBOX_POLL_INTERVAL):
#: PostgreSQL wakes on NOTIFY; the others poll, every 10 ms here (the default is 0.5 s).
POLL_INTERVAL = {"postgresql": None, "mariadb": 0.01, "sqlite": 0.01}


def relay_env(kind: str) -> dict[str, str]:
    poll = POLL_INTERVAL.get(kind)
    return {} if poll is None else {"OUTBOX_POLL_INTERVAL": str(poll)}


def start(ctx: Context, url: str, kind: str) -> cliproc.Sidecar:
    """`outbox relay` on `url` and the context's broker, running until `Sidecar.stop`."""
    return cliproc.outbox_relay(url, ctx.bootstrap_servers, **relay_env(kind))


def backlog_drain(ctx: Context, kind: str, count: int) -> dict[str, Any]:
    """A fresh database with `count` pending events, drained by `outbox relay`."""
    with ctx.database(kind) as url:
        table = outboxdb.create(url)
        outboxdb.fill(url, table, count, unique(f"bench-drain-{kind}"))
        outboxdb.vacuum(url, table)
        relay = start(ctx, url, kind)
        try:
            result = cliproc.watch_drain(url, table.name, "seq", count, relay)
        finally:
            relay.stop()
        left = outboxdb.count(url, table)
        if left:
            raise RuntimeError(f"{left} events left in the outbox after the drain")
        return result


def engine(url: str) -> sa.Engine:
    return outboxdb.engine_for(url)
