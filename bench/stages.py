"""Where a relay's latency goes, stage by stage: `python -m bench.stages [--seconds N]`.

A diagnostic, not a scenario: an application commits one event per transaction at 500 events/s
on PostgreSQL (LISTEN/NOTIFY) while one relay runs in its own process, with its store and
publisher wrapped to stamp each event: commit, read started and done, handed to the producer,
acknowledged. No consumer runs, so the figures are the relay's own. Also prints the time the
relay spent in each store call. The broker is a fresh embedded one unless `--bootstrap-servers`.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import click

from bench.latency import RATE, paced


def child(spec: dict[str, str]) -> None:
    """The relay, instrumented; prints one JSON object when its standard input closes."""
    import logging

    from outbox import kafka
    from outbox.config import RelayConfig
    from outbox.relay import Relay, store

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    stamps: dict[str, dict[str, float]] = {}
    # Per store call: [wall seconds, CPU seconds of the calling thread].
    calls: dict[str, list[list[float]]] = {}

    def stamp(event_id: str, stage: str, at: float) -> None:
        stamps.setdefault(event_id, {})[stage] = at

    def clocked(name: str, started: float, cpu: float) -> float:
        """Record a call that began at (`started`, `cpu`); return when it ended."""
        done = time.time()
        calls.setdefault(name, []).append([done - started, time.thread_time() - cpu])
        return done

    def timed(name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started, cpu = time.time(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                clocked(name, started, cpu)

        return wrapper

    def reads(fn: Any, pick: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started, cpu = time.time(), time.thread_time()
            result = fn(*args, **kwargs)
            done = clocked(fn.__name__, started, cpu)
            for event in pick(result):
                stamp(str(event.id), "read_started", started)
                stamp(str(event.id), "read_done", done)
            return result

        return wrapper

    store_class: Any = store.OutboxStore
    store_class.fetch_pending = reads(store_class.fetch_pending, lambda r: r)
    store_class.fetch_after = reads(store_class.fetch_after, lambda r: r[0])
    for name in ("complete", "renew", "record_rejections", "parked_keys", "status"):
        setattr(store_class, name, timed(name, getattr(store_class, name)))

    publisher_class: Any = kafka.KafkaPublisher
    publish = publisher_class.publish

    def stamped_publish(self: Any, messages: Any) -> Any:
        handed = time.time()
        delivery = publish(self, messages)
        for message, future in zip(messages, delivery._futures, strict=True):
            event_id = dict(message.headers)["event_id"].decode()
            stamp(event_id, "handed", handed)
            if future is not None:
                future.add_both(lambda *_, e=event_id: stamp(e, "acked", time.time()))
        return delivery

    publisher_class.publish = stamped_publish
    relay = Relay(RelayConfig(db_url=spec["db_url"], bootstrap_servers=spec["bootstrap"]))
    thread = threading.Thread(target=relay.run, name="relay")
    thread.start()
    print("ready", flush=True)
    sys.stdin.readline()  # the paced run starts: CPU is counted from here
    started, before = time.monotonic(), _thread_cpu()
    sys.stdin.readline()  # the paced run is over
    elapsed, after = time.monotonic() - started, _thread_cpu()
    names = {t.native_id: t.name for t in threading.enumerate()}
    sys.stdin.read()  # the last events were handed over
    relay.stop()
    thread.join()
    cpu = {
        names.get(tid, str(tid)): round((after[tid] - before.get(tid, 0.0)) / elapsed, 3)
        for tid in after
    }
    print(json.dumps({"stamps": stamps, "calls": calls, "cpu": cpu}), flush=True)


def _thread_cpu() -> dict[int, float]:
    """CPU seconds (user and system) of each thread of this process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def _percentiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {q[49] * 1000:6.2f}   p90 {q[89] * 1000:6.2f}   p99 {q[98] * 1000:6.2f} ms"


def measure(db_url: str, bootstrap: str, seconds: int) -> None:
    from sqlalchemy.orm import sessionmaker

    from outbox import Outbox
    from tests.support import write_engine

    engine = write_engine(db_url)
    outbox = Outbox()
    outbox.metadata.create_all(engine)
    factory = sessionmaker(engine)
    outbox.install(factory)
    spec = json.dumps({"db_url": db_url, "bootstrap": bootstrap})
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.stages", "--child", spec],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    committed: dict[str, float] = {}
    pad = "x" * 240

    def commit(i: int) -> None:
        with factory.begin() as session:
            event = outbox.emit(
                session,
                "OrderPlaced",
                {"seq": i, "pad": pad},
                aggregate_type="order",
                aggregate_id=f"order-{i % 1000}",
                topic="bench-stages",
            )
        committed[str(event.id)] = time.time()

    paced(100, commit)  # warm-up: connections, the topic, the relay's first passes
    time.sleep(1.0)
    committed.clear()
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    paced(RATE * seconds, commit)
    proc.stdin.write("done\n")
    proc.stdin.flush()
    time.sleep(2.0)
    out, _ = proc.communicate("", timeout=60)
    engine.dispose()
    report = json.loads(out.splitlines()[-1])
    stamps: dict[str, dict[str, float]] = report["stamps"]
    seen = [k for k in committed if "handed" in stamps.get(k, {})]
    click.echo(f"{len(committed)} events committed at {RATE}/s, {len(seen)} handed to Kafka")
    stages = [
        ("commit -> read started", None, "read_started"),
        ("commit -> read done", None, "read_done"),
        ("read done -> handed to producer", "read_done", "handed"),
        ("commit -> handed to producer", None, "handed"),
        ("handed -> acknowledged", "handed", "acked"),
    ]
    for title, start, end in stages:
        values = [
            stamps[k][end] - (committed[k] if start is None else stamps[k][start])
            for k in seen
            if end in stamps[k]
        ]
        click.echo(f"  {title:34} {_percentiles(values)}")
    click.echo("relay store calls (mean wall time, mean CPU time of the relay thread):")
    for name, timings in sorted(report["calls"].items()):
        wall = statistics.mean(t[0] for t in timings) * 1000
        cpu = statistics.mean(t[1] for t in timings) * 1000
        click.echo(f"  {name:18} {len(timings):6d} calls, {wall:.2f} ms, CPU {cpu:.2f} ms")
    click.echo("relay process CPU during the paced run (share of one core, by thread):")
    for name, share in sorted(report["cpu"].items(), key=lambda item: -item[1]):
        if share >= 0.005:
            click.echo(f"  {name:42} {share:6.0%}")


@click.command()
@click.option("--seconds", default=10, show_default=True, help="Length of the paced run.")
@click.option("--bootstrap-servers", help="Use this broker instead of a fresh embedded one.")
@click.option("--child", "child_spec", hidden=True)
def main(seconds: int, bootstrap_servers: str | None, child_spec: str | None) -> None:
    if child_spec is not None:
        child(json.loads(child_spec))
        return
    from outbox.demo.broker import start_broker
    from tests.support import fresh_database

    broker = start_broker() if bootstrap_servers is None else None
    try:
        servers = broker.bootstrap_servers if broker is not None else str(bootstrap_servers)
        with tempfile.TemporaryDirectory() as tmp, fresh_database("postgresql", tmp) as url:
            measure(url, servers, seconds)
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
