"""Helpers shared by the test suites: real databases, the real broker, a real consumer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

PG_BASE = os.environ.get(
    "OUTBOX_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MYSQL_BASE = os.environ.get("OUTBOX_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test")


def _admin_engine(base: str) -> sa.Engine:
    return sa.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)


@contextmanager
def fresh_database(kind: str, tmp_path: str) -> Iterator[str]:
    """A new, empty database of `kind` (postgresql, mariadb, sqlite); dropped afterwards.

    Fails (never skips) when the server is not reachable.
    """
    name = f"obx_{uuid.uuid4().hex[:12]}"
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/{name}.db"
        return
    base = sa.make_url(PG_BASE if kind == "postgresql" else MYSQL_BASE)
    admin = _admin_engine(base.render_as_string(hide_password=False))
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            if kind == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


def async_url(url: str) -> str:
    """The same database through the asyncio driver (asyncpg, aiosqlite, aiomysql)."""
    parsed = sa.make_url(url)
    driver = {"postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}.get(
        parsed.get_backend_name()
    )
    if driver is None:
        raise ValueError(f"no asyncio driver for {parsed.get_backend_name()} in the test suite")
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


@dataclass(frozen=True)
class Received:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int


def consume(
    bootstrap_servers: str,
    topics: list[str] | str,
    expected: int,
    timeout: float = 30.0,
    settle: float = 0.0,
) -> list[Received]:
    """Read every record of `topics` from the beginning until `expected` arrived or `timeout`.

    Partitions are assigned by hand: Tansu completes a group join only after the rebalance
    timeout. With `settle` > 0, keep reading that long after `expected` arrived (to see extras).
    """
    from kafka import KafkaConsumer, TopicPartition

    topic_list = [topics] if isinstance(topics, str) else list(topics)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=500,
    )
    try:
        deadline = time.monotonic() + timeout
        partitions: list[TopicPartition] = []
        while time.monotonic() < deadline:
            partitions = [
                TopicPartition(t, p)
                for t in topic_list
                for p in sorted(consumer.partitions_for_topic(t) or ())
            ]
            if partitions and len({tp.topic for tp in partitions}) == len(topic_list):
                break
            time.sleep(0.2)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        out: list[Received] = []
        done_at: float | None = None
        while time.monotonic() < deadline:
            batches = consumer.poll(timeout_ms=200)
            for tp, records in batches.items():
                for r in records:
                    out.append(
                        Received(
                            tp.topic,
                            tp.partition,
                            r.offset,
                            r.key,
                            r.value,
                            dict(r.headers or []),
                            r.timestamp,
                        )
                    )
            if len(out) >= expected:
                done_at = done_at or time.monotonic()
                if time.monotonic() - done_at >= settle:
                    break
        return out
    finally:
        consumer.close()


def create_outbox_tables(url: str, table: str = "outbox", schema: str | None = None) -> sa.Table:
    """Create the outbox, lease and relays tables straight from the model; returns the outbox
    table."""
    from outbox.schema.tables import build_lease_table, build_members_table, build_outbox_table

    metadata = sa.MetaData()
    outbox_table = build_outbox_table(metadata, table, schema)
    build_lease_table(metadata, table, schema)
    build_members_table(metadata, table, schema)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()
    return outbox_table


def insert_rows(url: str, table: sa.Table, rows: list[dict[str, object]]) -> None:
    """Insert raw outbox rows (for relay tests that need exact control over the table)."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    full = [
        {
            "id": uuid.uuid4(),
            "aggregatetype": "order",
            "type": "OrderPlaced",
            "created_at": now,
            **row,
        }
        for row in rows
    ]
    # executemany takes its columns from the first row: give every row the same ones.
    columns = {name for row in full for name in row}
    full = [{name: row.get(name) for name in columns} for row in full]
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(table.insert(), full)
    finally:
        engine.dispose()


def count_rows(url: str, table: sa.Table) -> int:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
    finally:
        engine.dispose()


def write_engine(url: str) -> sa.Engine:
    """An engine for the write-side tests; SQLite gets the documented savepoint fix."""
    from outbox.write.outbox import fix_sqlite_transactions

    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        fix_sqlite_transactions(engine)
    return engine


#: The console script of the environment running the tests.
OUTBOX = str(Path(sys.executable).with_name("outbox"))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: no OUTBOX_* settings leak in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env.update(extra)
    return env


class RelayProcess:
    """`outbox relay` in the background, its stderr collected line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [OUTBOX, "relay", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env or clean_env(),
        )
        self.lines: list[str] = []
        #: When each line was read (`time.monotonic`), in step with `lines`.
        self.times: list[float] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.times.append(time.monotonic())
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))

    def running(self) -> bool:
        return self.process.poll() is None

    def lines_seen_at(self, text: str) -> float:
        """When the first line holding `text` was read (`time.monotonic`)."""
        for line, seen in zip(list(self.lines), list(self.times), strict=False):
            if text in line:
                return seen
        raise AssertionError(f"no {text!r} in the relay's log:\n{self.log[-3000:]}")

    def wait_for_log(self, text: str, timeout: float = 30, times: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.count(text) < times:
            assert self.running(), f"relay exited early:\n{self.log[-3000:]}"
            assert time.monotonic() < deadline, (
                f"no {text!r} in the relay's log:\n{self.log[-3000:]}"
            )
            time.sleep(0.02)

    def peak_rss_kib(self) -> int:
        """VmHWM (peak resident set) of the running process, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, once the relay's loop has started (its signal handler is in place by then:
        an earlier SIGTERM would kill the interpreter before the handler exists)."""
        if self.running():
            self.wait_for_log("outbox.relay", timeout)
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.running():
            self.process.kill()
        self.process.wait()
        self._reader.join(5)
        if self.process.stderr is not None:
            self.process.stderr.close()


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0
