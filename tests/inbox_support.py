"""Helpers of the inbox tests: topics, records with the relay's headers, an effects table."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from outbox import Inbox, InboxConfig
from outbox.schema.migrate import build_metadata
from tests.support import OUTBOX, RelayProcess, clean_env

#: Short group timeouts: Tansu completes a join only after the rebalance timeout
#: (max_poll_interval_ms in kafka-python), so a join takes about that long.
FAST_GROUP = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "max_poll_interval_ms": 6000,
}

effects_metadata = sa.MetaData()
effects = sa.Table(
    "effects",
    effects_metadata,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("key", sa.String(64)),
    sa.Column("seq", sa.Integer),
    sa.Column("attempt", sa.Integer),
)


def group_of(topics: list[str]) -> str:
    """A consumer group of the test's own (its topics are unique): tests on the shared broker
    must not join one group, where a stopped or killed member of another test holds every
    rebalance up until its session times out."""
    return "group-" + "-".join(sorted(topics))


def new_topic(name: str = "inbox") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


@dataclass(frozen=True)
class Sent:
    event_id: str | None
    key: str
    seq: int


def produce(
    bootstrap: str,
    topic: str,
    events: Sequence[Sent],
    event_type: str = "OrderPlaced",
) -> None:
    """Send each event as the relay's plain envelope; an event id of None sends none."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for e in events:
            headers = [("event_type", event_type.encode())]
            if e.event_id is not None:
                headers.insert(0, ("event_id", e.event_id.encode()))
            producer.send(
                topic,
                key=e.key.encode(),
                value=json.dumps({"key": e.key, "seq": e.seq}).encode(),
                headers=headers,
            )
        producer.flush(30)
    finally:
        producer.close(5)


def make_events(keys: int, per_key: int) -> list[Sent]:
    """`per_key` events on each of `keys` keys, interleaved, with fresh ids."""
    return [Sent(uuid.uuid4().hex, f"k{k}", seq) for seq in range(per_key) for k in range(keys)]


def prepare_db(url: str) -> sa.Engine:
    """The inbox tables (`outbox migrate`'s model) and the effects table."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    build_metadata().create_all(engine)
    effects_metadata.create_all(engine)
    return engine


def effect_rows(url: str) -> list[sa.Row[tuple[int, str, str, int, int]]]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(effects).order_by(effects.c.n)).all())
    finally:
        engine.dispose()


@dataclass
class Figures:
    sent: int
    applied: int
    lost: int
    applied_twice: int
    order_violations: int

    def line(self, name: str) -> str:
        return (
            f"{name}: sent {self.sent} events, applied {self.applied}, lost {self.lost}, "
            f"applied more than once {self.applied_twice}, order violations per key "
            f"{self.order_violations}"
        )


def figures(url: str, sent: Sequence[Sent], expect: set[str] | None = None) -> Figures:
    """Compare the effects table with what was sent (unique event ids; `expect` overrides)."""
    rows = effect_rows(url)
    wanted = expect if expect is not None else {e.event_id for e in sent if e.event_id}
    counts = Counter(r.event_id for r in rows)
    last: dict[str, int] = {}
    violations = 0
    for r in rows:
        if r.key in last and r.seq < last[r.key]:
            violations += 1
        last[r.key] = max(r.seq, last.get(r.key, -1))
    return Figures(
        sent=len(wanted),
        applied=len(set(counts) & wanted),
        lost=len(wanted - set(counts)),
        applied_twice=sum(1 for n in counts.values() if n > 1),
        order_violations=violations,
    )


def effects_inbox(
    url: str, consumer: str = "billing", poison: set[str] | None = None, **config: object
) -> Inbox:
    """An inbox whose handler records each application in the effects table."""
    engine = sa.create_engine(url, pool_pre_ping=True)
    factory = sessionmaker(engine)
    settings = {"handler_backoff": 0.05, "retry_initial": 0.05, "retry_maximum": 0.5, **config}
    inbox = Inbox(factory, consumer=consumer, config=InboxConfig(**settings))  # type: ignore[arg-type]
    bad = poison if poison is not None else set()

    @inbox.handler("OrderPlaced")
    def placed(session: Session, event: object) -> None:
        from outbox.inbox import InboxEvent

        assert isinstance(event, InboxEvent)
        if event.id in bad:
            raise ValueError(f"cannot apply {event.id}")
        body = event.json()
        session.execute(
            effects.insert().values(
                event_id=event.id, key=body["key"], seq=body["seq"], attempt=event.attempt
            )
        )

    return inbox


@contextmanager
def running(
    inbox: Inbox, bootstrap: str, topics: list[str], **settings: object
) -> Iterator[threading.Event]:
    """The inbox consuming in a thread of the test process until the block ends."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            inbox.run(
                bootstrap_servers=bootstrap,
                topics=topics,
                group=group_of(topics),
                stop=stop,
                consumer_settings={**FAST_GROUP, **settings},
            )
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(30)
        bind = getattr(inbox.session_factory, "kw", {}).get("bind")
        if isinstance(bind, sa.Engine):
            bind.dispose()
    assert not errors, errors
    assert not thread.is_alive(), "the inbox did not stop"


def wait_for(predicate: object, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def applied_ids(url: str) -> set[str]:
    return {r.event_id for r in effect_rows(url)}


def run_outbox(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`outbox ARGS...` to completion."""
    return subprocess.run(
        [OUTBOX, *args], capture_output=True, text=True, timeout=60, env=env or clean_env()
    )


class ConsumerProcess(RelayProcess):
    """`outbox consume --app tests.inbox_app:inbox ...` in the background (stderr collected)."""

    def __init__(
        self,
        db_url: str,
        bootstrap: str,
        topics: list[str],
        *extra: str,
        env: dict[str, str] | None = None,
        settings: dict[str, object] | None = None,
        app: str = "tests.inbox_app:inbox",
    ) -> None:
        options = [f"-X{k}={v}" for k, v in {**FAST_GROUP, **(settings or {})}.items()]
        args = ["--app", app, "--bootstrap-servers", bootstrap, "--group", group_of(topics)]
        for topic in topics:
            args += ["--topic", topic]
        self.args = (*args, *options, *extra)
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [OUTBOX, "consume", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(INBOX_TEST_DB=db_url, **(env or {})),
        )
        self.lines: list[str] = []
        self.times: list[float] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def terminate(self, timeout: float = 30) -> int:
        if self.running():
            self.wait_for_log("outbox.inbox consuming", timeout)
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code
