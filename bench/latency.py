"""Scenario 3, end-to-end latency: an application commits events at a steady rate while a relay
(the shipped `outbox relay` command, its own process) publishes them and a consumer (its own
process) stamps each one on receipt.

One event per transaction, paced at `RATE` events/s. Two delays per event, from the wall-clock
time right after the commit returned: to the consumer's receipt, and to the send, the moment
the record's bytes leave the relay's client for the broker. The send is seen on the wire by a
passive packet tap (`bench.wire_child`, its own process): the kernel's timestamp of the first
TCP segment to the broker's port on loopback that carries the event's id (the `event_id`
header, a UUID string). It is the same for every subject and needs nothing from it (the relay
stamps its records with the event's created_at, so the record timestamp says nothing of its
send; the tap needs root and a broker on 127.0.0.1). Three subjects, interleaved round by
round, each on a fresh embedded broker so that the broker's slowdown as it fills hits them
alike: kafka-python alone paced the same (send to receipt: the broker path no relay can beat;
and send() to wire, the client's own part of a send), `outbox relay` on PostgreSQL, and
txoutbox on PostgreSQL (its own table and NOTIFY trigger, its defaults). The relay's headlines
are its commit to receipt above kafka-python alone's send to receipt in the same round, and its
commit to send p99 and commit to receipt p99 against txoutbox's.

Wake-up: PostgreSQL uses LISTEN/NOTIFY (the application's transaction notifies at commit);
MariaDB and SQLite (full runs only, one round) poll (`bench.relayproc.POLL_INTERVAL`).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from kafka import KafkaProducer
from sqlalchemy.orm import sessionmaker

from bench import cliproc, peer, relayproc
from bench.common import Context, interleaved, scenario, unique
from bench.outboxdb import payload_text
from outbox.kafka import DEFAULT_PRODUCER_SETTINGS
from outbox.write.outbox import Outbox
from tests.support import write_engine

RATE = 500
ALONE = "kafka-python alone"
DUAL = "dual write: commit, then kafka-python"
RELAY = "postgresql: outbox relay"
PEER = "txoutbox"
WAKE_UP = {
    RELAY: "LISTEN/NOTIFY",
    PEER: "LISTEN/NOTIFY (its trigger and listener)",
    "mariadb: outbox relay": f"poll every {relayproc.POLL_INTERVAL['mariadb']} s",
    "sqlite: outbox relay": f"poll every {relayproc.POLL_INTERVAL['sqlite']} s",
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


class WireTap:
    """`bench.wire_child` in its own process: when each event id's bytes went to the broker.

    Start it before the subject's warm-up; `finish` (once every record has arrived) collects
    id -> wire time (s, comparable to `time.time()`) in `seen` and the tap's counters in
    `stats` (packets, CPU seconds, kernel drops)."""

    def __init__(self, bootstrap_servers: str) -> None:
        host, _, port = bootstrap_servers.split(",")[0].rpartition(":")
        if host not in ("127.0.0.1", "localhost"):
            raise RuntimeError(f"the wire tap watches loopback: broker {bootstrap_servers}")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.wire_child", port],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            _, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"the wire tap did not start (it needs root): {err.strip()}")
        self.started = time.monotonic()
        self.seen: dict[str, float] = {}
        self.stats: dict[str, Any] = {}

    def finish(self) -> None:
        out, err = self.proc.communicate("", timeout=60)
        seconds = time.monotonic() - self.started
        if self.proc.returncode:
            raise RuntimeError(f"the wire tap failed: {err.strip()}")
        self.seen = json.loads(out.splitlines()[-1])
        self.stats = json.loads(err.splitlines()[-1])
        self.stats["seconds"] = round(seconds, 1)
        self.stats["packets_per_s"] = round(self.stats["packets"] / seconds)
        self.stats["cpu_share"] = round(self.stats["cpu_s"] / seconds, 3)

    def to_wire(self, started: dict[str, float], name: str) -> tuple[list[float], int]:
        """Milliseconds from each id's time in `started` to its bytes on the wire, and how
        many ids the tap never saw (more than 1% of them: an error)."""
        missing = sum(1 for k in started if k not in self.seen)
        if missing > len(started) / 100:
            raise RuntimeError(
                f"{missing} of {len(started)} events never seen on the wire ({name}): {self.stats}"
            )
        return [(self.seen[k] - t) * 1000 for k, t in started.items() if k in self.seen], missing

    def to_receipt(self, received: dict[str, tuple[float, int]]) -> list[float]:
        """Milliseconds from each id's bytes on the wire to its receipt by the consumer: the
        broker's and the consumer's part, whoever sent the record."""
        return [(received[k][0] - t) * 1000 for k, t in self.seen.items() if k in received]


def _drained(url: str, table: str, timeout: float) -> None:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.exec_driver_sql(f"SELECT min(1) FROM {table}").scalar() is None:
                    return
            time.sleep(0.2)
    finally:
        engine.dispose()


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


def kafka_alone(ctx: Context, count: int) -> dict[str, Any]:
    topic = unique("bench-latency-raw")
    tap = WireTap(ctx.bootstrap_servers)
    _create_topic(ctx, topic)
    receiver = Receiver(ctx.bootstrap_servers, topic)
    producer = KafkaProducer(bootstrap_servers=ctx.bootstrap_servers, **DEFAULT_PRODUCER_SETTINGS)
    sent: dict[str, float] = {}
    pad = payload_text().encode()

    def send(i: int) -> None:
        event_id = str(uuid.uuid4())
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
    tap.finish()
    # "send" here: from the call to send() to the wire.
    return _delays(sent, receiver, tap, ALONE)


def _delays(
    started: dict[str, float], receiver: Receiver, tap: WireTap, name: str
) -> dict[str, Any]:
    """Per event, from its time in `started` (ms): to its receipt, to its bytes on the wire
    ("send"), and from the wire to the receipt; the tap's counters."""
    send, missing = tap.to_wire(started, name)
    return {
        "receipt": [(receiver.seen[k][0] - t) * 1000 for k, t in started.items()],
        "send": send,
        "wire_to_receipt": tap.to_receipt(receiver.seen),
        "wire_missing": missing,
        "tap": tap.stats,
    }


def _application(url: str, topic: str) -> tuple[sa.Engine, Callable[[int], str], str]:
    """The relay subjects' application: ORM transactions through an installed `Outbox`, one
    event each. Its engine, the commit of event i (returning the event's id), and the table."""
    engine = write_engine(url)
    outbox = Outbox()
    outbox.metadata.create_all(engine)
    factory = sessionmaker(engine)
    outbox.install(factory)
    pad = payload_text()[:240]

    def commit(i: int) -> str:
        with factory.begin() as session:
            event = outbox.emit(
                session,
                "OrderPlaced",
                {"seq": i, "status": "placed", "pad": pad},
                aggregate_type="order",
                aggregate_id=f"order-{i % 1000}",
                topic=topic,
            )
        return str(event.id)

    return engine, commit, outbox.table.name


def through_relay(ctx: Context, kind: str, count: int) -> dict[str, Any]:
    """The application's ORM transactions through an installed `Outbox`, `outbox relay`."""
    topic = unique(f"bench-latency-{kind}")
    with ctx.database(kind) as url:
        engine, commit, table = _application(url, topic)
        _create_topic(ctx, topic)
        try:
            relay = relayproc.start(ctx, url, kind)
            try:
                return _measure(ctx, topic, count, commit, kind, relay, url, table)
            finally:
                relay.stop()
        finally:
            engine.dispose()


def dual_write(ctx: Context, count: int) -> dict[str, Any]:
    """The dual write an outbox replaces: the relay subject's application transaction (the
    same ORM session and `outbox.emit`, no relay running), then kafka-python's send of the
    event right after the commit. Its commit to receipt carries the application's and the
    database's load on these two cores, without a relay: the relay's figure minus this one is
    what the relay itself adds."""
    topic = unique("bench-latency-dual")
    with ctx.database("postgresql") as url:
        engine, emit, _ = _application(url, topic)
        _create_topic(ctx, topic)
        producer = KafkaProducer(
            bootstrap_servers=ctx.bootstrap_servers, **DEFAULT_PRODUCER_SETTINGS
        )
        body = payload_text().encode()

        def commit(i: int) -> str:
            event_id = emit(i)
            producer.send(
                topic,
                body,
                key=f"order-{i % 1000}".encode(),
                headers=[("event_id", event_id.encode())],
            )
            return event_id

        try:
            return _measure(ctx, topic, count, commit, DUAL, None, None, None)
        finally:
            producer.close(5)
            engine.dispose()


def through_txoutbox(ctx: Context, count: int) -> dict[str, Any]:
    """The same events written into txoutbox's table (its trigger NOTIFYs), its relay with
    LISTEN/NOTIFY, defaults otherwise."""
    topic = unique("bench-latency-txoutbox")
    with ctx.database("postgresql") as url:
        peer.create(url, notify=True)
        engine = sa.create_engine(url)
        _create_topic(ctx, topic)
        pad = payload_text()

        def commit(i: int) -> str:
            event_id = str(uuid.uuid4())
            key = f"order-{i % 1000}"
            with engine.begin() as conn:
                conn.execute(
                    peer.INSERT,
                    {
                        "topic": topic,
                        "key": key,
                        "payload": pad.encode(),
                        "headers": peer.headers(event_id, key, datetime.now(UTC).isoformat()),
                    },
                )
            return event_id

        try:
            relay = peer.start(ctx, url, peer.CONFIGS[peer.DEFAULTS], notify=True)
            try:
                return _measure(ctx, topic, count, commit, "txoutbox", relay, url, peer.TABLE)
            finally:
                relay.stop()
        finally:
            engine.dispose()


def _measure(
    ctx: Context,
    topic: str,
    count: int,
    commit: Callable[[int], str],
    name: str,
    relay: cliproc.Sidecar | None,
    url: str | None,
    table: str | None,
) -> dict[str, Any]:
    """Commit `count` events at `RATE`; commit-to-receipt and commit-to-send per event (no
    `relay`: the commit sends the event itself, and leaves no table to drain)."""
    receiver = Receiver(ctx.bootstrap_servers, topic)
    tap = WireTap(ctx.bootstrap_servers)
    committed: dict[str, float] = {}

    def paced_commit(i: int) -> None:
        event_id = commit(i)
        committed[event_id] = time.time()

    # Warm up: connections, the relay's first pass, the consumer's first fetches.
    paced(50, paced_commit)
    time.sleep(1.0)
    committed.clear()
    paced(count, paced_commit)
    if url is not None and table is not None:
        _drained(url, table, 60)
    receiver.finish(2.0)
    tap.finish()
    if relay is not None:
        relay.check_alive()
    missing = [k for k in committed if k not in receiver.seen]
    if missing:
        raise RuntimeError(f"{len(missing)} of {count} events never arrived ({name})")
    return {
        **_delays(committed, receiver, tap, name),
        # The record's timestamp (ms) after the commit: the producer's send() time for
        # txoutbox, the event's created_at for the relay; a cross-check of the tap for txoutbox.
        "record_timestamp": [receiver.seen[k][1] - t * 1000 for k, t in committed.items()],
    }


@scenario("latency", "Latency at 500 events/s: outbox relay vs txoutbox vs kafka-python alone")
def latency(ctx: Context) -> None:
    seconds = 20 if not ctx.quick else 5
    rounds = 3 if not ctx.quick else 1
    count = RATE * seconds
    ctx.fact("rate", RATE)
    ctx.fact("seconds", seconds)
    ctx.fact("rounds", rounds)
    ctx.fact("wake_up", WAKE_UP)
    subjects: dict[str, Callable[[], dict[str, Any]]] = {
        ALONE: lambda: kafka_alone(ctx, count),
        RELAY: lambda: through_relay(ctx, "postgresql", count),
        PEER: lambda: through_txoutbox(ctx, count),
        DUAL: lambda: dual_write(ctx, count),
    }

    def fresh(run: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        # Every subject on an empty embedded broker: the in-memory broker slows as it fills.
        def on_fresh_broker() -> dict[str, Any]:
            with ctx.fresh_broker():
                return run()

        return on_fresh_broker

    samples = interleaved({name: fresh(run) for name, run in subjects.items()}, rounds)
    if not ctx.quick:
        for kind in ("mariadb", "sqlite"):
            samples[f"{kind}: outbox relay"] = [
                fresh(lambda k=kind: through_relay(ctx, k, count))()
            ]
    pct = {name: [_percentiles(r["receipt"]) for r in runs] for name, runs in samples.items()}
    # Send = the record's bytes on the wire to the broker (`WireTap`): the record timestamp
    # would not do, the relay stamps a record with its event's created_at (docs/OPERATIONS.md),
    # taken before the commit.
    send = {
        name: [_percentiles(r["send"]) for r in runs]
        for name, runs in samples.items()
        if name not in (ALONE, DUAL)
    }
    wire = [_percentiles(r["send"]) for r in samples[ALONE]]
    for name, runs in samples.items():
        ctx.fact(f"{name}: receipt p50 per 5 s (ms)", [_p50_by_window(r["receipt"]) for r in runs])
        ctx.fact(f"{name}: ids never seen on the wire", [r["wire_missing"] for r in runs])
        ctx.fact(f"{name}: wire tap", [r["tap"] for r in runs])
    ctx.fact(
        f"{PEER}: commit to record timestamp p50/p99 (ms, the tap's cross-check)",
        [
            [round(_percentiles(r["record_timestamp"])[p], 2) for p in ("p50", "p99")]
            for r in samples[PEER]
        ],
    )
    for p in ("p50", "p95", "p99"):
        base = f"{ALONE}: send to receipt {p}"
        ctx.record(base, [s[p] for s in pct[ALONE]], "ms")
        for name in samples:
            if name == ALONE:
                continue
            ctx.record(
                f"{name}: commit to receipt {p}",
                [s[p] for s in pct[name]],
                "ms",
                baseline=base,
                note=WAKE_UP.get(name, ""),
            )
    # Round by round (the same broker age, the same machine minute): the relay's commit to
    # receipt above kafka-python's own send to receipt.
    for p in ("p50", "p99"):
        ctx.record(
            f"{RELAY}: commit to receipt above kafka-python alone, {p}",
            [r[p] - a[p] for r, a in zip(pct[RELAY], pct[ALONE], strict=True)],
            "ms",
            headline=True,
        )
    # Where the time after the send goes: the broker's and the consumer's part, per subject. On
    # two cores shared by every process, it grows with the load the subject puts beside them.
    for p in ("p50", "p99"):
        for name, runs in samples.items():
            ctx.record(
                f"{name}: wire to receipt {p}",
                [_percentiles(r["wire_to_receipt"])[p] for r in runs],
                "ms",
            )
        ctx.record(
            f"{RELAY}: commit to receipt above the dual write, {p}",
            [r[p] - d[p] for r, d in zip(pct[RELAY], pct[DUAL], strict=True)],
            "ms",
            note="the same application transactions, with the relay against sending at commit",
        )
    for p in ("p50", "p99"):
        ctx.record(
            f"{ALONE}: send() to wire {p}",
            [s[p] for s in wire],
            "ms",
            note="from the call to send() to the record's bytes on the wire, kernel timestamp",
        )
    for p in ("p50", "p99"):
        for name in send:
            ctx.record(
                f"{name}: commit to send {p}",
                [s[p] for s in send[name]],
                "ms",
                note=WAKE_UP.get(name, ""),
            )
    ctx.record(
        f"{RELAY} vs {PEER}: commit to send p99",
        [r["p99"] / t["p99"] for r, t in zip(send[RELAY], send[PEER], strict=True)],
        "x",
        headline=True,
        note="below 1: the relay is faster; send = the record's bytes on the wire to the broker, "
        "kernel timestamp",
    )
    for p in ("p50", "p99"):
        ctx.record(
            f"{RELAY} vs {PEER}: commit to receipt {p}",
            [r[p] / t[p] for r, t in zip(pct[RELAY], pct[PEER], strict=True)],
            "x",
            headline=p == "p99",
            note="below 1: the relay is faster; both woken by NOTIFY, same broker path",
        )
