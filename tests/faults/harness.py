"""What the fault scenarios are made of: the application writing through the public API from
several threads, relays as real `outbox relay` processes, a broker behind a proxy, and a
consumer that reads everything back."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from outbox.demo.broker import EmbeddedBroker, free_port, start_broker
from outbox.write.outbox import Outbox
from tests.faults.checker import Delivery, Ledger
from tests.faults.proxy import TcpProxy
from tests.support import RelayProcess

#: Relay options every scenario uses: a short lease so that takeovers after a kill are quick.
FAST = ("--lease-ttl", "2", "--poll-interval", "0.05")


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition` until true; return the seconds it took. Fails the test on timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def backend_of(url: str) -> str:
    name = sa.make_url(url).get_backend_name()
    return "mariadb" if name == "mysql" else name


def relay_env() -> dict[str, str]:
    # Only what the test passes: no OUTBOX_* settings leak in from the caller's shell.
    return {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}


# -- the application -------------------------------------------------------------------------


class App:
    """An application database with the outbox installed on its sessionmaker."""

    def __init__(
        self,
        url: str,
        topic: str,
        *,
        pool_size: int = 10,
        max_overflow: int = 4,
        **outbox_args: Any,
    ) -> None:
        self.url = url
        self.topic = topic
        self.outbox = Outbox(**outbox_args)
        self.engine = sa.create_engine(url, pool_size=pool_size, max_overflow=max_overflow)
        #: Server-side ids of the application's own connections (never killed by scenario 3).
        self.backend_ids: set[int] = set()
        sa.event.listen(self.engine, "connect", self._remember_backend)
        self.outbox.metadata.create_all(self.engine)
        self.factory: sessionmaker[Session] = sessionmaker(self.engine)
        self.outbox.install(self.factory)

    def _remember_backend(self, dbapi_conn: Any, _record: Any) -> None:
        query = (
            "SELECT pg_backend_pid()" if self.dialect == "postgresql" else "SELECT CONNECTION_ID()"
        )
        cursor = dbapi_conn.cursor()
        cursor.execute(query)
        self.backend_ids.add(int(cursor.fetchone()[0]))
        cursor.close()

    def open_all_connections(self) -> None:
        """Fill the pool now, so that (with max_overflow=0) every application connection, and
        its server-side id in `backend_ids`, exists before faults begin."""
        size = self.engine.pool.size()  # type: ignore[attr-defined]
        connections = [self.engine.connect() for _ in range(size)]
        for conn in connections:
            conn.close()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def emit(self, session: Session, key: str, n: int, **kwargs: Any) -> str:
        kwargs.setdefault("topic", self.topic)
        event = self.outbox.emit(
            session, "Tick", {"k": key, "n": n}, aggregate_type="tick", aggregate_id=key, **kwargs
        )
        return str(event.id)

    def pending(self) -> int:
        t = self.outbox.table
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(
                        t.c.published_at.is_(None), t.c.parked_at.is_(None)
                    )
                ).scalar_one()
            )

    def oldest_pending(self) -> int | None:
        """The seq of the oldest pending event: it changes when the relay marks a batch."""
        t = self.outbox.table
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.min(t.c.seq)).where(
                    t.c.published_at.is_(None), t.c.parked_at.is_(None)
                )
            ).scalar_one()

    def rows(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(self.outbox.table)).scalar_one()
            )

    def close(self) -> None:
        self.outbox.uninstall(self.factory)
        self.engine.dispose()


Transaction = Callable[[Session, random.Random, int], list[tuple[str, str]] | None]


def simple_transaction(app: App, keys: list[str], max_events: int = 4) -> Transaction:
    """Emit 1..max_events events for one of `keys`, commit; returns what it emitted."""

    def run(session: Session, rng: random.Random, n: int) -> list[tuple[str, str]] | None:
        key = rng.choice(keys)
        return [(key, app.emit(session, key, n + i)) for i in range(rng.randint(1, max_events))]

    return run


class Writers:
    """Application threads, each running transactions over its own keys until it has committed
    `events_per_thread` events. A key belongs to one thread, so its commit order is defined.

    `make_transaction(thread_index)` returns a function that runs inside an open session and
    returns the (key, event id) pairs it emitted, or None to roll the transaction back.
    """

    def __init__(
        self,
        app: App,
        ledger: Ledger,
        threads: int,
        events_per_thread: int,
        make_transaction: Callable[[int], Transaction],
        pause: float = 0.0,
        seed: int = 1,
    ) -> None:
        self.app = app
        self.ledger = ledger
        self.errors: list[BaseException] = []
        self.commits = 0
        self.rollbacks = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(make_transaction(i), events_per_thread, pause, random.Random(seed * 100 + i)),
                name=f"writer-{i}",
                daemon=True,
            )
            for i in range(threads)
        ]

    def start(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, transaction: Transaction, target: int, pause: float, rng: random.Random) -> None:
        done = 0
        try:
            while done < target and not self._stop.is_set():
                with self.app.factory() as session:
                    emitted = transaction(session, rng, done)
                    if emitted is None:
                        session.rollback()
                        self.rollbacks += 1
                        continue
                    session.commit()
                # Only now, after the commit returned, do these events count as committed.
                self.ledger.committed(emitted)
                self.commits += 1
                done += len(emitted)
                if pause:
                    time.sleep(pause * rng.uniform(0.5, 1.5))
        except BaseException as error:
            self.errors.append(error)

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 30) -> None:
        """End the transactions early (each thread finishes the one it is in)."""
        self._stop.set()
        self.join(timeout)

    def join(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        assert not self.alive(), "writers did not finish"
        if self.errors:
            raise self.errors[0]


def keys_of(thread: int, threads: int, total_keys: int) -> list[str]:
    return [f"k{k}" for k in range(total_keys) if k % threads == thread]


# -- relays ------------------------------------------------------------------------------------


@contextmanager
def relay_pool() -> Iterator[list[RelayProcess]]:
    """Relays started in a test; every one is killed at the end, whatever happened."""
    started: list[RelayProcess] = []
    try:
        yield started
    finally:
        for relay in started:
            relay.kill()


# -- the broker behind a proxy -----------------------------------------------------------------


@dataclass
class ProxiedBroker:
    """Tansu listening on a private port and advertising the proxy's port, so every Kafka
    connection (bootstrap and the ones to the partition leaders from metadata) goes through
    the proxy."""

    proxy: TcpProxy
    broker: EmbeddedBroker

    @property
    def bootstrap_servers(self) -> str:
        return self.proxy.address

    def stop(self) -> None:
        self.proxy.close()
        self.broker.stop()


def start_proxied_broker() -> ProxiedBroker:
    listen = free_port()
    proxy = TcpProxy("127.0.0.1", listen)
    try:
        broker = start_broker(listen, advertised_port=proxy.port)
    except RuntimeError:
        proxy.close()
        raise
    return ProxiedBroker(proxy, broker)


# -- reading back ------------------------------------------------------------------------------


def read_back(
    bootstrap_servers: str, topic: str, expected: int, timeout: float = 120, idle: float = 1.0
) -> list[Delivery]:
    """Every record of `topic` from the beginning: until `expected` distinct events arrived and
    then nothing new for `idle` seconds (extra duplicates), or nothing new for 10 s (missing
    events), or `timeout`. Call it once the relays have stopped.

    Not "up to the end offsets": Tansu's ListOffsets answer lags behind the records it has
    acknowledged (verified: 1,980 of 2,000 acknowledged records below the reported end offsets,
    all 2,000 readable).
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        max_poll_records=100_000,
    )
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] = set()
        # A topic nothing was published to does not exist: give metadata a few seconds.
        metadata_deadline = time.monotonic() + 10
        while time.monotonic() < metadata_deadline:
            partitions = consumer.partitions_for_topic(topic) or set()
            if partitions:
                break
            time.sleep(0.2)
        if not partitions:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Delivery] = []
        seen: set[str] = set()
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            quiet = time.monotonic() - last_new
            if quiet >= (idle if len(seen) >= expected else 10.0):
                break
            for tp, records in consumer.poll(timeout_ms=200).items():
                for r in records:
                    event_id = dict(r.headers or [])["event_id"].decode()
                    seen.add(event_id)
                    out.append(Delivery((r.key or b"").decode(), event_id, tp.partition, r.offset))
                    last_new = time.monotonic()
        return out
    finally:
        consumer.close()
