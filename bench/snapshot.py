"""Scenario: snapshots of existing rows (`outbox snapshot run`) on PostgreSQL.

Two questions, each against a baseline measured in the same run:

1. **Rate.** The shipped command snapshots a table of `rows` customers (1,000,000 at full size)
   against a floor: the same chunks (keyset, ``FOR SHARE``, 1000 rows) selected and inserted into
   an identical outbox table by hand-written SQL through the bare driver (psycopg), with the
   same cursor update per chunk, and no package code. Target: at least 0.8 of the floor. Two
   figures for the command: wall clock including its start-up, and its chunk time only.
2. **The application's write latency.** One application thread updates random customers (one
   ORM transaction each, captured) for the same time with and without a snapshot running; the
   p99 latency of its commits is compared. Target: at most 2x.

No relay runs (both subjects write the same events into the table; the outbox is emptied
between runs). The machine is shared: the ratios, measured side by side, are the figures.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import Context, scenario

TABLE = "bench_customers"
CHUNK = 1000
OUTBOX = str(Path(sys.executable).with_name("outbox"))

APP_MODULE = f'''
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from outbox import Outbox

outbox = Outbox()


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "{TABLE}"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(80))
    email: Mapped[str] = mapped_column(sa.String(120))
    country: Mapped[str] = mapped_column(sa.String(2))
    balance: Mapped[int] = mapped_column(sa.BigInteger)


outbox.capture(Customer, compacted=True)
'''


def _psycopg_dsn(url: str) -> str:
    parsed = sa.make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _seed(url: str, rows: int) -> None:
    import psycopg

    with psycopg.connect(_psycopg_dsn(url)) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {TABLE} (id, name, email, country, balance) FROM STDIN") as copy:
            for i in range(1, rows + 1):
                copy.write_row((i, f"customer {i}", f"c{i}@example.com", "NL", i * 10))
        cur.execute(f"ANALYZE {TABLE}")


def _floor(url: str, floor_table: str) -> float:
    """Rows per second of the hand-written snapshot: same chunks, same writes, bare driver."""
    import psycopg

    snapshot_id = str(uuid.uuid4())
    headers = json.dumps({"snapshot_id": snapshot_id})
    insert = (
        f"INSERT INTO {floor_table} (id, aggregatetype, aggregateid, type, payload, topic, "
        "key, headers, created_at) VALUES (%s, %s, %s, %s, %s, %s, NULL, %s, %s)"
    )
    done = 0
    started = time.perf_counter()
    with psycopg.connect(_psycopg_dsn(url)) as conn:
        with conn.cursor() as cur:
            cur.execute(f"SELECT max(id) FROM {TABLE}")
            upto = cur.fetchone()[0]  # type: ignore[index]
        conn.commit()
        cursor = 0
        while cursor < upto:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("UPDATE floor_cursor SET updated_at = now() WHERE id = 1")
                cur.execute(
                    f"SELECT id, name, email, country, balance FROM {TABLE} "
                    "WHERE id > %s AND id <= %s ORDER BY id LIMIT %s FOR SHARE",
                    (cursor, upto, CHUNK),
                )
                rows = cur.fetchall()
                if not rows:
                    break
                now = datetime.now(UTC)
                params = [
                    (
                        uuid.uuid4(),
                        TABLE,
                        str(r[0]),
                        f"{TABLE}.snapshot",
                        json.dumps(
                            {
                                "row": {
                                    "id": r[0],
                                    "name": r[1],
                                    "email": r[2],
                                    "country": r[3],
                                    "balance": r[4],
                                }
                            },
                            separators=(",", ":"),
                        ).encode(),
                        TABLE,
                        headers,
                        now,
                    )
                    for r in rows
                ]
                cur.executemany(insert, params)
                cursor = rows[-1][0]
                cur.execute("UPDATE floor_cursor SET cursor = %s WHERE id = 1", (cursor,))
                done += len(rows)
    return done / (time.perf_counter() - started)


def _command(url: str, workdir: str) -> tuple[float, float, int]:
    """(wall rows/s including start-up, chunk-time rows/s, rows) of `outbox snapshot run`."""
    args = [
        OUTBOX, "snapshot", "run", "--db-url", url, "--app", "bench_snapapp:outbox",
        "--model", "bench_snapapp:Customer", "--chunk-size", str(CHUNK), "--restart", "--quiet",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    started = time.perf_counter()
    done = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"outbox snapshot run failed: {done.stderr.strip()}")
    status = subprocess.run(
        [OUTBOX, "snapshot", "status", "--db-url", url, "--json"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    latest = json.loads(status.stdout)[-1]
    rows = int(latest["rows_done"])
    return rows / wall, float(latest["rate_rows_per_second"]), rows


class Writer:
    """One application thread: captured ORM updates of random customers, latency per commit."""

    def __init__(self, factory: Any, model: Any, rows: int) -> None:
        self.factory, self.model, self.rows = factory, model, rows
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(7)
        while not self.stop.is_set():
            began = time.perf_counter()
            with self.factory.begin() as session:
                customer = session.get(self.model, rng.randint(1, self.rows))
                customer.balance += 1
            self.latencies.append(time.perf_counter() - began)

    def run_for(self, seconds: float | None = None, until: Any = None) -> list[float]:
        self.thread.start()
        if until is not None:
            until()
        else:
            time.sleep(seconds or 0)
        self.stop.set()
        self.thread.join(30)
        return self.latencies


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def _empty_outbox(engine: sa.Engine, *tables: str) -> None:
    with engine.begin() as conn:
        for name in tables:
            conn.exec_driver_sql(f"TRUNCATE {name}")


@scenario("snapshot", "Snapshot: rate vs a hand-written SQL floor; app write p99 during one")
def snapshot(ctx: Context) -> None:
    rows = ctx.size(full=1_000_000, quick=20_000)
    repeats = 1 if not ctx.quick else 2
    ctx.fact("rows", rows)
    ctx.fact("chunk_size", CHUNK)
    with ctx.database("postgresql") as url, tempfile.TemporaryDirectory() as workdir:
        Path(workdir, "bench_snapapp.py").write_text(APP_MODULE)
        sys.path.insert(0, workdir)
        try:
            import bench_snapapp  # type: ignore[import-not-found]
        finally:
            sys.path.remove(workdir)
        from sqlalchemy.orm import sessionmaker

        from outbox.migrate import upgrade
        from outbox.schema.tables import build_outbox_table

        upgrade(url)
        engine = sa.create_engine(url)
        try:
            bench_snapapp.Base.metadata.create_all(engine)
            floor_meta = sa.MetaData()
            build_outbox_table(floor_meta, "floor_outbox", None)
            sa.Table(
                "floor_cursor",
                floor_meta,
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("cursor", sa.BigInteger),
                sa.Column("updated_at", sa.DateTime(timezone=True)),
            )
            floor_meta.create_all(engine)
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO floor_cursor (id, cursor) VALUES (1, 0)")
            _seed(url, rows)

            floors, walls, chunk_rates = [], [], []
            for _ in range(repeats):
                floors.append(_floor(url, "floor_outbox"))
                _empty_outbox(engine, "floor_outbox")
                wall, chunk_rate, done = _command(url, workdir)
                assert done == rows, f"snapshot emitted {done} of {rows} rows"
                walls.append(wall)
                chunk_rates.append(chunk_rate)
                _empty_outbox(engine, "outbox")
            base = "hand-written SQL floor (psycopg, same chunks)"
            ctx.record(base, floors, "rows/s")
            ctx.record(
                "outbox snapshot run (wall, with start-up)",
                walls,
                "rows/s",
                baseline=base,
                headline=True,
                note="target >= 0.8 of the floor",
            )
            ctx.record("outbox snapshot run (chunk time)", chunk_rates, "rows/s", baseline=base)

            factory = sessionmaker(engine)
            bench_snapapp.outbox.install(factory)
            model = bench_snapapp.Customer
            seconds = max(3.0, rows / max(walls))
            quiet = Writer(factory, model, rows).run_for(seconds)
            _empty_outbox(engine, "outbox")
            busy = Writer(factory, model, rows).run_for(until=lambda: _command(url, workdir))
            _empty_outbox(engine, "outbox")
            ctx.fact("app_commits_without_snapshot", len(quiet))
            ctx.fact("app_commits_during_snapshot", len(busy))
            ctx.record("app write p99, no snapshot", [_p99(quiet)], "ms")
            ctx.record(
                "app write p99, during a snapshot",
                [_p99(busy)],
                "ms",
                baseline="app write p99, no snapshot",
                headline=True,
                note="target <= 2x",
            )
        finally:
            engine.dispose()
