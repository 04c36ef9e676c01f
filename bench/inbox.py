"""Scenario: the inbox's applied events per second against a hand-written floor, same run.

Subject: the shipped ``outbox consume`` running `bench.inbox_app` (a handler that inserts one
row), so each record costs the fenced offset and the dedup row (one statement on PostgreSQL),
the handler's row and the commit. Floor: kafka-python's consumer reading the same topic and
inserting the same row by hand, one transaction per record, no dedup, no offsets in the database
(what a team would write without the inbox, and what loses or doubles effects on a crash). A
second reference adds, by hand, the one statement exactly-once needs (the fenced offset and the
dedup row, as a PostgreSQL CTE): the ratio between the two floors is what the database charges
for the guarantee, and the subject's distance from the second is the package's own cost. The
batched subject is the same command with ``batch_size=100``. Each runs as its own process on
PostgreSQL; the rate is taken between the first and the last inserted row, so start-up and the
group join are not counted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from bench.common import Context, scenario, unique

OUTBOX = str(Path(sys.executable).with_name("outbox"))
#: The batched subject's InboxConfig.batch_size.
BATCH = 100
ROOT = str(Path(__file__).resolve().parent.parent)


def _produce(bootstrap: str, topic: str, count: int) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        for n in range(count):
            headers = [("event_id", uuid.uuid4().hex.encode()), ("event_type", b"BenchEvent")]
            producer.send(topic, key=f"k{n % 100}".encode(), value=b'{"n": 1}', headers=headers)
        producer.flush(60)
    finally:
        producer.close(5)


def _prepare(url: str) -> None:
    from bench.inbox_app import metadata
    from outbox.schema.migrate import build_metadata

    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        # A fresh start for each subject: no stored offsets, no dedup rows of an earlier one.
        tables = build_metadata()
        tables.drop_all(engine)
        tables.create_all(engine)
        metadata.drop_all(engine)
        metadata.create_all(engine)
    finally:
        engine.dispose()


def _rate(url: str, count: int, process: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait until `count` rows exist; events per second between the first and the last."""
    from bench.inbox_app import rows

    engine = sa.create_engine(url, poolclass=sa.NullPool)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                done, first, last = conn.execute(
                    sa.select(sa.func.count(), sa.func.min(rows.c.at), sa.func.max(rows.c.at))
                ).one()
            if done >= count:
                return float((count - 1) / (last - first))
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {count} rows after the consumer ran")
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(30)
        engine.dispose()


def _env(url: str, batch: int = 1) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    path = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    env.update(BENCH_INBOX_DB=url, BENCH_INBOX_BATCH=str(batch), PYTHONPATH=path)
    return env


def subject(ctx: Context, url: str, topic: str, count: int, batch: int = 1) -> float:
    _prepare(url)
    process = subprocess.Popen(
        [OUTBOX, "consume", "--app", "bench.inbox_app:inbox", "--bootstrap-servers",
         ctx.bootstrap_servers, "--topic", topic, "--group", unique("bench"), "--log-level",
         "WARNING", "-X", "max_poll_interval_ms=6000", "-X", "session_timeout_ms=6000",
         "-X", "heartbeat_interval_ms=1000"],
        env=_env(url, batch), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return _rate(url, count, process, timeout=300)


def floor(ctx: Context, url: str, topic: str, count: int, exactly_once: bool = False) -> float:
    _prepare(url)
    mode = ["exactly-once"] if exactly_once else []
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.inbox", ctx.bootstrap_servers, topic, *mode],
        env=_env(url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return _rate(url, count, process, timeout=300)


#: The exactly-once floor's one extra statement, by hand: store the offset under the claim's
#: generation and insert the dedup row unless the id has one (the inbox's tables, no package
#: code). What any exactly-once consumer must write besides the effect.
ENTER_SQL = sa.text("""
WITH fence AS (
    UPDATE outbox_inbox_offsets SET next_offset = :next, updated_at = now()
    WHERE consumer = 'bench' AND topic = :topic AND partition = 0 AND generation = 1
    RETURNING 1),
entered AS (
    INSERT INTO outbox_inbox (consumer, event_id, topic, partition, "offset", status, received_at)
    SELECT 'bench', :event_id, :topic, 0, :offset, 'done', now() WHERE EXISTS (SELECT 1 FROM fence)
    ON CONFLICT (consumer, event_id) DO NOTHING RETURNING 1)
SELECT (SELECT count(*) FROM fence), (SELECT count(*) FROM entered)
""")


def _floor_main(bootstrap: str, topic: str, exactly_once: bool) -> None:
    """The floor's process: assign, read from the beginning, one transaction per record; with
    `exactly_once`, the same plus the inbox's fenced offset and dedup row, by hand."""
    from kafka import KafkaConsumer, TopicPartition

    from bench.inbox_app import rows

    engine = sa.create_engine(os.environ["BENCH_INBOX_DB"])
    if exactly_once:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO outbox_inbox_offsets (consumer, topic, partition, generation) "
                f"VALUES ('bench', '{topic}', 0, 1)"
            )
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    while True:
        for records in consumer.poll(timeout_ms=500).values():
            for r in records:
                event_id = dict(r.headers)["event_id"].decode()
                with engine.begin() as conn:
                    if exactly_once:
                        params = {"next": r.offset + 1, "topic": topic, "event_id": event_id,
                                  "offset": r.offset}  # fmt: skip
                        if conn.execute(ENTER_SQL, params).one() != (1, 1):
                            continue
                    conn.execute(rows.insert().values(event_id=event_id, at=time.time()))


@scenario("inbox", "Inbox: events applied per second vs a hand-written consumer (no dedup)")
def inbox_rate(ctx: Context) -> None:
    count = ctx.size(full=5_000, quick=1_000)
    ctx.fact("events", count)
    ctx.fact("database", "postgresql")
    baseline = "kafka-python + INSERT, 1 tx/record"
    floors: list[float] = []
    subjects: list[float] = []
    batched: list[float] = []
    exact: list[float] = []
    with ctx.database("postgresql") as url:
        for _ in range(ctx.repeats):
            with ctx.fresh_broker():
                topic = unique("bench-inbox")
                _produce(ctx.bootstrap_servers, topic, count)
                floors.append(floor(ctx, url, topic, count))
                exact.append(floor(ctx, url, topic, count, exactly_once=True))
                subjects.append(subject(ctx, url, topic, count))
                batched.append(subject(ctx, url, topic, count, batch=BATCH))
    ctx.record(baseline, floors, "events/s", note="no dedup, no stored offsets")
    ctx.record("same + fenced offset and dedup row by hand", exact, "events/s", baseline=baseline,
               note="the SQL any exactly-once consumer adds; no package code")  # fmt: skip
    ctx.record("outbox consume (one-row handler)", subjects, "events/s", baseline=baseline,
               headline=True)  # fmt: skip
    ctx.record(f"outbox consume, batch_size={BATCH}", batched, "events/s", baseline=baseline,
               headline=True)  # fmt: skip


if __name__ == "__main__":
    _floor_main(sys.argv[1], sys.argv[2], exactly_once=sys.argv[3:] == ["exactly-once"])
