"""Scenario 3, end-to-end latency: an application commits events at a steady rate while a relay
(its own process) publishes them and a consumer (a thread) stamps each one on receipt.

Per database: one event per transaction through an installed `Outbox`, paced at `RATE`
events/s for `SECONDS`. Two delays per event, from the wall-clock time right after the commit
returned: to the consumer's receipt, and to the record's timestamp (set by the producer when
the relay hands it the record, in whole milliseconds). The baseline is kafka-python alone,
paced the same, from just before `send` to receipt: the broker path no relay can beat.

Wake-up: PostgreSQL uses LISTEN/NOTIFY (the application's transaction notifies at commit);
MariaDB and SQLite have none, so their relay polls (`bench.relayproc.POLL_INTERVAL`).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any

import sqlalchemy as sa
from kafka import KafkaProducer
from sqlalchemy.orm import sessionmaker

from bench import relayproc
from bench.common import Context, scenario, unique
from bench.outboxdb import payload_text
from outbox.kafka import DEFAULT_PRODUCER_SETTINGS
from outbox.write.outbox import Outbox
from tests.support import write_engine

DATABASES = ("postgresql", "mariadb", "sqlite")
RATE = 500
WAKE_UP = {
    "postgresql": "LISTEN/NOTIFY",
    "mariadb": f"poll every {relayproc.POLL_INTERVAL['mariadb']} s",
    "sqlite": f"poll every {relayproc.POLL_INTERVAL['sqlite']} s",
}


class Receiver:
    """`bench.receiver_child` in its own process: receipt times and record timestamps."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.receiver_child", bootstrap_servers, topic],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.proc.stdout.readline()
        self.seen: dict[str, tuple[float, int]] = {}

    def finish(self, settle: float) -> None:
        """Let the last records arrive for `settle` seconds, then collect what was seen."""
        time.sleep(settle)
        out, _ = self.proc.communicate("", timeout=60)
        self.seen = {k: (v[0], v[1]) for k, v in json.loads(out.splitlines()[-1]).items()}


def _drained(engine: sa.Engine, table: sa.Table, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if not conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one():
                return
        time.sleep(0.2)


def paced(count: int, action: Any) -> None:
    """Call `action(i)` for i in range(count) at `RATE` calls a second."""
    started = time.perf_counter()
    for i in range(count):
        delay = started + i / RATE - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        action(i)


def _percentiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": q[49], "p95": q[94], "p99": q[98]}


def _p50_by_window(values: list[float], window: int = RATE * 5) -> list[float]:
    """The median of each `window` consecutive values (in send or commit order)."""
    return [
        round(statistics.median(values[start : start + window]), 2)
        for start in range(0, len(values), window)
    ]


def _create_topic(ctx: Context, topic: str) -> None:
    producer = KafkaProducer(bootstrap_servers=ctx.bootstrap_servers, **DEFAULT_PRODUCER_SETTINGS)
    try:
        producer.send(topic, b"warm-up", key=b"warm-up").get(30)
    finally:
        producer.close(5)


def kafka_alone(ctx: Context, count: int) -> dict[str, list[float]]:
    topic = unique("bench-latency-raw")
    _create_topic(ctx, topic)
    receiver = Receiver(ctx.bootstrap_servers, topic)
    producer = KafkaProducer(bootstrap_servers=ctx.bootstrap_servers, **DEFAULT_PRODUCER_SETTINGS)
    sent: dict[str, float] = {}
    pad = payload_text().encode()

    def send(i: int) -> None:
        event_id = f"raw-{i}"
        sent[event_id] = time.time()
        producer.send(
            topic, pad, key=f"order-{i % 1000}".encode(), headers=[("event_id", event_id.encode())]
        )

    try:
        paced(count, send)
        producer.flush(30)
    finally:
        producer.close(5)
    receiver.finish(2.0)
    return {"receipt": [(receiver.seen[k][0] - t) * 1000 for k, t in sent.items()]}


def through_relay(ctx: Context, kind: str, count: int) -> dict[str, list[float]]:
    topic = unique(f"bench-latency-{kind}")
    with ctx.database(kind) as url:
        engine = write_engine(url)
        outbox = Outbox()
        outbox.metadata.create_all(engine)
        factory = sessionmaker(engine)
        outbox.install(factory)
        _create_topic(ctx, topic)
        receiver = Receiver(ctx.bootstrap_servers, topic)
        relay = relayproc.start(ctx, url, kind)
        committed: dict[str, float] = {}
        pad = payload_text()[:240]

        def commit(i: int) -> None:
            with factory.begin() as session:
                event = outbox.emit(
                    session,
                    "OrderPlaced",
                    {"seq": i, "status": "placed", "pad": pad},
                    aggregate_type="order",
                    aggregate_id=f"order-{i % 1000}",
                    topic=topic,
                )
            committed[str(event.id)] = time.time()

        try:
            # Warm up: connections, the relay's first pass, the consumer's first fetches.
            paced(50, commit)
            time.sleep(1.0)
            committed.clear()
            paced(count, commit)
            _drained(engine, outbox.table, 60)
            receiver.finish(2.0)
        finally:
            relayproc.stop(relay)
            engine.dispose()
        missing = [k for k in committed if k not in receiver.seen]
        if missing:
            raise RuntimeError(f"{len(missing)} of {count} events never arrived ({kind})")
        return {
            "receipt": [(receiver.seen[k][0] - t) * 1000 for k, t in committed.items()],
            "send": [receiver.seen[k][1] - t * 1000 for k, t in committed.items()],
        }


@scenario("latency", "End-to-end latency at 500 events/s: commit to receipt, per database")
def latency(ctx: Context) -> None:
    seconds = 30 if not ctx.quick else 5
    count = RATE * seconds
    ctx.fact("rate", RATE)
    ctx.fact("seconds", seconds)
    ctx.fact("wake_up", WAKE_UP)
    # Every subject on an empty embedded broker: the in-memory broker slows down as it fills.
    with ctx.fresh_broker():
        base = kafka_alone(ctx, count)
    # The in-memory broker's send-to-receipt grows as it fills (fetches slow down, produce
    # acknowledgements do not): the p50 per 5 s of the run shows it.
    ctx.fact("kafka-python alone: receipt p50 per 5 s (ms)", _p50_by_window(base["receipt"]))
    base_p = _percentiles(base["receipt"])
    for p, value in base_p.items():
        ctx.record(f"kafka-python alone: send to receipt {p}", [value], "ms")
    for kind in DATABASES:
        with ctx.fresh_broker():
            result = through_relay(ctx, kind, count)
        ctx.fact(f"{kind}: receipt p50 per 5 s (ms)", _p50_by_window(result["receipt"]))
        receipt = _percentiles(result["receipt"])
        for p, value in receipt.items():
            ctx.record(
                f"{kind}: commit to receipt {p}",
                [value],
                "ms",
                baseline=f"kafka-python alone: send to receipt {p}",
                headline=kind == "postgresql" and p in ("p50", "p99"),
                note=WAKE_UP[kind],
            )
        send = _percentiles(result["send"])
        for p in ("p50", "p99"):
            ctx.record(f"{kind}: commit to send timestamp {p}", [send[p]], "ms", note=WAKE_UP[kind])
