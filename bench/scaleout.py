"""Scenario: scale-out. A PostgreSQL backlog drained by 1, 2 and 3 partitioned relays against one
default (single-active) relay, in the same run; each relay is the shipped `outbox relay` in its
own process (`python -m outbox relay`), on a fresh database and a fresh embedded broker.

The rate is counted from the first deleted row to the empty table (the relays' start-up and the
partitioned relays' first claims are outside it: the partitioned relays are started while the
table is still in single-active mode, and `outbox partitions enable` lets them go at once).
CPU per event comes from /proc over the same interval: the relay processes, the PostgreSQL
backends serving the bench database (shared background processes such as the WAL writer are
not counted), and the embedded broker. On this 2-core machine all three share the cores, which
is where the curve stops; docs/PERFORMANCE.md extends it to larger hosts with these figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from bench import cliproc, outboxdb
from bench.common import Context, interleaved, scenario, unique
from outbox.partitioning import partition_of
from tests.support import clean_env

RELAYS = (1, 2, 3)
DEFAULT = "default relay"
#: Partitioned relays' lease TTL here: a round every second.
LEASE_TTL = "3"


cpu_seconds = cliproc.total_cpu_seconds


def set_partitions(url: str, table: sa.Table) -> None:
    """The fill generates rows in SQL without `p_partition` (PostgreSQL 15 has no crc32): set it
    from the 1,000 keys' partitions computed by the write side's own function."""
    mapping = ", ".join(
        f"('order-{k}', {partition_of(f'order-{k}')})" for k in range(outboxdb.KEYS)
    )
    engine = outboxdb.engine_for(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"UPDATE {table.name} AS o SET p_partition = m.p FROM (VALUES {mapping}) "
                "AS m(k, p) WHERE o.aggregateid = m.k"
            )
    finally:
        engine.dispose()


@contextmanager
def broker(ctx: Context) -> Iterator[tuple[str, int | None]]:
    """A fresh embedded broker and its pid (None for an external broker: no CPU figure)."""
    if not ctx.embedded_broker:
        yield ctx.bootstrap_servers, None
        return
    from outbox.demo.broker import start_broker

    started = start_broker()
    try:
        yield started.bootstrap_servers, started.process.pid
    finally:
        started.stop()


def outbox_cli(*args: str, **popen: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "outbox", *args], env=clean_env(), **popen)


def drain(ctx: Context, count: int, partitioned: int) -> dict[str, float]:
    """A fresh backlog of `count` events drained by one default relay (`partitioned` = 0) or
    by that many partitioned ones."""
    with ctx.database("postgresql") as url, broker(ctx) as (servers, broker_pid):
        table = outboxdb.create(url)
        outboxdb.fill(url, table, count, unique("bench-scaleout"))
        set_partitions(url, table)
        outboxdb.vacuum(url, table)
        args = ["relay", "--db-url", url, "--bootstrap-servers", servers]
        if partitioned:
            args += ["--partitioned", "--lease-ttl", LEASE_TTL]
        relays = [outbox_cli(*args, stderr=subprocess.DEVNULL) for _ in range(partitioned or 1)]
        engine = outboxdb.engine_for(url)
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                me = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
                pending = sa.select(sa.func.count()).select_from(table)

                def backends() -> list[int]:
                    rows = conn.exec_driver_sql(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    ).scalars()
                    return [int(pid) for pid in rows if pid != me]

                if partitioned:
                    members = sa.text(
                        "SELECT count(*) FROM outbox_relays WHERE mode = 'partitioned'"
                    )
                    deadline = time.monotonic() + 60
                    while conn.execute(members).scalar_one() < partitioned:
                        if time.monotonic() > deadline:
                            raise RuntimeError("the partitioned relays did not start")
                        time.sleep(0.05)
                    enabled = outbox_cli("partitions", "enable", "--db-url", url)
                    if enabled.wait(60) != 0:
                        raise RuntimeError("outbox partitions enable failed")
                deadline = time.monotonic() + 1800
                while (left := conn.execute(pending).scalar_one()) >= count:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the relays published nothing")
                    time.sleep(0.01)
                started, first_left = time.monotonic(), left
                pids = [r.pid for r in relays]
                db_pids = backends()
                cpu0 = cpu_seconds(pids), cpu_seconds(db_pids), cpu_seconds([broker_pid or -1])
                while left:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{left} events left after the deadline")
                    time.sleep(0.02)
                    left = conn.execute(pending).scalar_one()
                seconds = time.monotonic() - started
                db_pids = sorted(set(db_pids) | set(backends()))
                cpu1 = cpu_seconds(pids), cpu_seconds(db_pids), cpu_seconds([broker_pid or -1])
        finally:
            engine.dispose()
            for relay in relays:
                relay.terminate()
            for relay in relays:
                relay.wait(60)
        events = first_left
        per_event = [
            (after - before) / events * 1e6 for before, after in zip(cpu0, cpu1, strict=True)
        ]
        return {
            "rate": events / seconds,
            "relay_us": per_event[0],
            "db_us": per_event[1],
            "broker_us": per_event[2] if broker_pid else float("nan"),
        }


@scenario("scaleout", "Partitioned relays: a PostgreSQL backlog, 1/2/3 relays vs one default")
def scaleout(ctx: Context) -> None:
    count = ctx.size(full=200_000, quick=20_000)
    repeats = 1 if ctx.quick else 2
    ctx.fact("backlog", count)
    ctx.fact("cores", os.cpu_count())
    subjects = {DEFAULT: lambda: drain(ctx, count, 0)}
    for n in RELAYS:
        subjects[f"{n} partitioned"] = lambda n=n: drain(ctx, count, n)
    samples = interleaved(subjects, repeats)
    ctx.record(DEFAULT, [r["rate"] for r in samples[DEFAULT]], "events/s")
    for n in RELAYS:
        ctx.record(
            f"{n} partitioned relays",
            [r["rate"] for r in samples[f"{n} partitioned"]],
            "events/s",
            baseline=DEFAULT,
            headline=n == RELAYS[-1],
        )
    for name, runs in samples.items():
        for part, key in (("relays", "relay_us"), ("PostgreSQL", "db_us"), ("broker", "broker_us")):
            ctx.record(f"{name}: CPU of {part}", [r[key] for r in runs], "us/event")
