"""Operations end to end: metrics, logs, trace context, envelopes, retention and inspection,
each proven through a real `outbox relay` process, real PostgreSQL and the real broker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from outbox import Outbox
from outbox.demo.broker import free_port
from outbox.write.event import Event
from tests.support import Received, RelayProcess, consume

pytestmark = pytest.mark.integration

OUTBOX = str(Path(sys.executable).with_name("outbox"))
SECRET = "s3cret"
#: The producer refuses records over this size (client side, permanently): a poison event.
MAX_REQUEST = 10_000
POISON = b"x" * (2 * MAX_REQUEST)


def _env() -> dict[str, str]:
    # Only what the test passes: no OUTBOX_* or OTEL_* settings leak in from the caller's shell.
    return {k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "OTEL_"))}


def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OUTBOX, *args], capture_output=True, text=True, input=input, timeout=60, env=_env()
    )


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def start_relay(kafka: str) -> Iterator[Callable[..., RelayProcess]]:
    """Starts `outbox relay --db-url URL --bootstrap-servers <session broker> ...`."""
    started: list[RelayProcess] = []

    def start(db_url: str, *args: str) -> RelayProcess:
        relay = RelayProcess("--db-url", db_url, "--bootstrap-servers", kafka, *args, env=_env())
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.kill()


class App:
    """The application side: an Outbox installed on a sessionmaker of the test database."""

    def __init__(self, url: str) -> None:
        self.outbox = Outbox()
        self.engine = sa.create_engine(url, poolclass=sa.NullPool)
        self.outbox.metadata.create_all(self.engine)
        self.sessions = sessionmaker(self.engine)
        self.outbox.install(self.sessions)

    def emit(self, events: list[dict[str, Any]]) -> list[Event]:
        """Emit `events` (emit's keyword arguments, type defaults to OrderPlaced) in one
        committed transaction."""
        with self.sessions.begin() as session:
            return [
                self.outbox.emit(
                    session,
                    e.pop("type", "OrderPlaced"),
                    e.pop("payload"),
                    aggregate_type="order",
                    **e,
                )
                for e in events
            ]

    def count(self, where: Any = None) -> int:
        query = sa.select(sa.func.count()).select_from(self.outbox.table)
        with self.engine.connect() as conn:
            return int(conn.execute(query if where is None else query.where(where)).scalar_one())

    def close(self) -> None:
        self.outbox.uninstall(self.sessions)
        self.engine.dispose()


@pytest.fixture
def app(pg_url: str) -> Iterator[App]:
    the_app = App(pg_url)
    yield the_app
    the_app.close()


def new_topic(name: str) -> str:
    return f"ops-{name}-{uuid.uuid4().hex[:8]}"


def status_json(db_url: str) -> dict[str, Any]:
    result = run("status", "--db-url", db_url, "--json")
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


BACKLOG_KEYS = ("pending", "oldest_pending_age_seconds", "failed")


def backlog_json(db_url: str) -> dict[str, Any]:
    """The backlog part of `outbox status --json` (the fleet part: tests/integration/
    test_relay_members.py)."""
    return {k: v for k, v in status_json(db_url).items() if k in BACKLOG_KEYS}


def headers_text(record: Received) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers.items()}


# -- 1. metrics --------------------------------------------------------------------------------


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), sample.value))
    return samples


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {labels[label]: value for labels, value in samples.get(name, [])}


def value(samples: Samples, name: str, **labels: str) -> float:
    found = [v for sample_labels, v in samples.get(name, []) if sample_labels == labels]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_metrics_scraped_during_a_real_run_match_what_happened(
    pg_url: str, kafka: str, app: App, start_relay: Callable[..., RelayProcess]
) -> None:
    orders, users = new_topic("orders"), new_topic("users")
    good = [{"payload": {"n": i}, "aggregate_id": f"o{i % 4}", "topic": orders} for i in range(12)]
    good += [{"payload": {"n": i}, "aggregate_id": f"u{i % 3}", "topic": users} for i in range(8)]
    app.emit([*good, {"payload": POISON, "aggregate_id": "big", "topic": orders}])
    assert status_json(pg_url)["pending"] == 21

    port = free_port()
    relay = start_relay(
        pg_url, "--metrics-port", str(port), "--max-attempts", "1",
        "-X", f"max_request_size={MAX_REQUEST}",
    )  # fmt: skip
    received = consume(kafka, [orders, users], expected=20)
    assert len(received) == 20
    assert relay.running(), relay.log

    # The counters follow the marking (just after the ack); the backlog gauges are sampled
    # every few seconds: wait for a scrape that has seen the end of the run.
    def at_the_end() -> bool:
        s = scrape(port)
        return (
            sum(by_label(s, "outbox_events_published_total", "topic").values()) == 20
            and sum(by_label(s, "outbox_events_parked_total", "topic").values()) == 1
            and [v for _, v in s.get("outbox_pending_events", [])] == [0]
        )

    wait_until("the relay's metrics to reach the end of the run", at_the_end)
    s = scrape(port)

    delivered = defaultdict(int)
    for record in received:
        delivered[record.topic] += 1
    assert by_label(s, "outbox_events_published_total", "topic") == {orders: 12, users: 8}
    assert dict(delivered) == {orders: 12, users: 8}
    assert by_label(s, "outbox_events_parked_total", "topic") == {orders: 1}
    errors = {(lb["topic"], lb["kind"]): v for lb, v in s["outbox_publish_errors_total"]}
    assert errors == {(orders, "rejected"): 1}
    assert value(s, "outbox_lease_held") == 1
    assert by_label(s, "outbox_up", "component") == {"database": 1, "broker": 1}
    # Nothing pending once drained (the parked event is not pending): the age is 0, as in
    # `outbox status`, which reports no oldest pending event at all.
    assert value(s, "outbox_pending_events") == 0
    assert value(s, "outbox_oldest_pending_age_seconds") == 0
    assert backlog_json(pg_url) == {"pending": 0, "oldest_pending_age_seconds": None, "failed": 1}
    assert value(s, "outbox_relays_live") == 1
    # One delay observation per published event, each in some bucket.
    assert value(s, "outbox_publish_delay_seconds_count") == 20
    assert value(s, "outbox_publish_delay_seconds_bucket", le="+Inf") == 20
    assert value(s, "outbox_publish_delay_seconds_sum") > 0
    # Every event went out in exactly one batch: 20 good ones and the poison one, sent once.
    batches = value(s, "outbox_batch_size_count")
    assert batches >= 1
    assert value(s, "outbox_batch_size_sum") == 21
    assert value(s, "outbox_batch_duration_seconds_count") == batches
    # Every batch observation landed in a bucket (the histogram is wired, whatever it measured).
    assert value(s, "outbox_batch_duration_seconds_bucket", le="+Inf") == batches
    assert relay.terminate() == 0, relay.log


# -- 2. logs -------------------------------------------------------------------------------------


def test_json_logs_one_line_per_state_change_password_masked(
    pg_url: str, kafka: str, app: App, start_relay: Callable[..., RelayProcess]
) -> None:
    # The local PostgreSQL accepts any password for postgres: a real password in a real URL.
    url = sa.make_url(pg_url).set(password=SECRET).render_as_string(hide_password=False)
    topic = new_topic("logs")

    def emit(start: int, stop: int) -> None:
        app.emit(
            [
                {"payload": {"n": i}, "aggregate_id": f"k{i % 7}", "topic": topic}
                for i in range(start, stop)
            ]
        )

    emit(0, 50)
    relay = start_relay(url, "--log-format", "json")
    assert len(consume(kafka, topic, expected=50)) == 50
    wait_until("the first 50 events to be marked", lambda: app.count() == 0)
    after_50 = len(relay.lines)
    emit(50, 500)
    assert len(consume(kafka, topic, expected=500, timeout=60)) == 500
    wait_until("all 500 events to be marked", lambda: app.count() == 0)
    assert relay.running(), relay.log
    # Ten times the events, no more lines: the relay logs changes of state, not traffic.
    assert len(relay.lines) <= after_50 + 2, relay.log
    assert relay.terminate() == 0, relay.log

    entries = [json.loads(line) for line in relay.lines]
    assert all({"ts", "level", "logger", "message"} <= set(entry) for entry in entries)
    assert SECRET not in relay.log
    # The URL is logged (the start-up line names the database), with its password masked.
    assert "postgres:***@127.0.0.1" in relay.log
    acquired = [e for e in entries if re.search(r"lease.*acquired|acquired.*lease", e["message"])]
    assert len(acquired) == 1, relay.log
    assert sum(1 for e in entries if e["message"] == "database reachable") == 1
    assert sum(1 for e in entries if e["message"] == "broker reachable") == 1
    # A clean run and a clean stop (the lease is released, not lost) warn about nothing.
    assert [e for e in entries if e["level"] != "INFO"] == [], relay.log


# -- 3. trace context ----------------------------------------------------------------------------

UNTRACED_EMIT = """
import json
import sys
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker
from outbox import Outbox

url, topic = sys.argv[1:3]
box = Outbox()
engine = sa.create_engine(url, poolclass=sa.NullPool)
sessions = sessionmaker(engine)
box.install(sessions)
with sessions.begin() as session:
    event = box.emit(session, "Untraced", {"n": 1}, aggregate_type="order", aggregate_id="u",
                     topic=topic)
engine.dispose()
print(json.dumps({"id": str(event.id), "headers": dict(event.headers),
                  "otel": sorted(m for m in sys.modules if m.startswith("opentelemetry"))}))
"""


def test_trace_context_travels_from_emit_to_the_consumer(
    pg_url: str, kafka: str, app: App, start_relay: Callable[..., RelayProcess]
) -> None:
    from opentelemetry import propagate
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanKind

    # A provider of our own (not the process-global one) is enough: emit reads the active span.
    tracer = TracerProvider().get_tracer("test_ops_e2e")
    topic = new_topic("traced")
    # The request that emits continues an upstream trace that carries vendor state.
    upstream = propagate.extract(
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "shop=t61rcWkgMzE",
        }
    )
    with tracer.start_as_current_span("place order", context=upstream) as span:
        (traced,) = app.emit([{"payload": {"n": 0}, "aggregate_id": "t", "topic": topic}])
    emitted = span.get_span_context()
    assert traced.headers["tracestate"] == "shop=t61rcWkgMzE"

    # Another process that never imports OpenTelemetry: no trace context, nothing imported.
    untraced = subprocess.run(
        [sys.executable, "-c", UNTRACED_EMIT, pg_url, topic],
        capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    assert untraced.returncode == 0, untraced.stderr
    emitted_there = json.loads(untraced.stdout)
    assert emitted_there["headers"] == {} and emitted_there["otel"] == [], emitted_there
    untraced_id = emitted_there["id"]

    relay = start_relay(pg_url)
    received = {headers_text(r)["event_id"]: r for r in consume(kafka, topic, expected=2)}
    assert set(received) == {str(traced.id), untraced_id}
    assert "traceparent" not in received[untraced_id].headers
    assert "tracestate" not in received[untraced_id].headers

    headers = headers_text(received[str(traced.id)])
    version, trace_id, parent_id, flags = headers["traceparent"].split("-")
    assert trace_id == format(emitted.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert parent_id == format(emitted.span_id, "016x")
    assert (version, flags) == ("00", "01")
    assert headers["tracestate"] == "shop=t61rcWkgMzE"
    # The consumer continues the producer's trace with the standard propagator.
    carrier = propagate.extract(headers)
    with tracer.start_as_current_span("handle order", context=carrier, kind=SpanKind.CONSUMER):
        from opentelemetry import trace

        child = trace.get_current_span()
        assert child.get_span_context().trace_id == emitted.trace_id
        parent = getattr(child, "parent", None)
        assert parent is not None and parent.span_id == emitted.span_id
    assert relay.terminate() == 0, relay.log


# -- 4. envelopes --------------------------------------------------------------------------------


@pytest.mark.parametrize("envelope", ["cloudevents", "cloudevents-structured"])
def test_cloudevents_envelopes_decode_with_the_sdk(
    envelope: str, pg_url: str, kafka: str, app: App, start_relay: Callable[..., RelayProcess]
) -> None:
    from cloudevents.core.bindings import kafka as ce_kafka
    from cloudevents.core.formats.json import JSONFormat

    topic = new_topic("ce")
    payloads = [{"order": i, "total": 12.5 * i, "items": ["a", "b"][: i % 3]} for i in range(4)]
    events = app.emit(
        [
            {"type": f"Order{'Placed' if i % 2 else 'Paid'}", "payload": p, "aggregate_id": f"o{i}",
             "topic": topic}
            for i, p in enumerate(payloads)
        ]
    )  # fmt: skip
    relay = start_relay(pg_url, "--envelope", envelope, "--source", "/shop/orders")
    received = consume(kafka, topic, expected=len(events))
    assert relay.terminate() == 0, relay.log
    assert len(received) == len(events)

    decode = ce_kafka.from_binary if envelope == "cloudevents" else ce_kafka.from_structured
    decoded = {}
    for record in received:
        assert record.value is not None
        message = ce_kafka.KafkaMessage(headers=record.headers, key=record.key, value=record.value)
        ce = decode(message, JSONFormat())
        # The auto-detecting entry point agrees on the mode.
        assert ce_kafka.from_kafka(message, JSONFormat()).get_id() == ce.get_id()
        decoded[ce.get_id()] = (ce, record)
    assert set(decoded) == {str(e.id) for e in events}
    for event, payload in zip(events, payloads, strict=True):
        ce, record = decoded[str(event.id)]
        assert ce.get_specversion() == "1.0"
        assert ce.get_type() == event.type
        assert ce.get_source() == "/shop/orders"
        assert ce.get_subject() == event.aggregate_id
        assert ce.get_time() == event.created_at
        assert ce.get_data() == payload
        assert record.key == event.aggregate_id.encode()
    if envelope == "cloudevents":
        assert all(r.headers["ce_specversion"] == b"1.0" for r in received)
    else:
        assert all(r.headers["content-type"] == b"application/cloudevents+json" for r in received)


# -- 5. retention --------------------------------------------------------------------------------


def test_retention_keeps_published_rows_without_republishing_and_purge_deletes_them(
    pg_url: str, kafka: str, app: App, start_relay: Callable[..., RelayProcess]
) -> None:
    topic = new_topic("kept")
    published = app.outbox.table.c.published_at.is_not(None)

    def emit(start: int, stop: int) -> None:
        app.emit(
            [
                {"payload": {"n": i}, "aggregate_id": f"k{i % 5}", "topic": topic}
                for i in range(start, stop)
            ]
        )

    emit(0, 30)
    relay = start_relay(pg_url, "--retention", "3600")
    assert len(consume(kafka, topic, expected=30)) == 30
    wait_until("30 events to be marked published", lambda: app.count(published) == 30)
    assert app.count() == 30
    assert backlog_json(pg_url) == {"pending": 0, "oldest_pending_age_seconds": None, "failed": 0}

    # New events make the relay run new passes: the retained rows must not go again.
    emit(30, 35)
    received = consume(kafka, topic, expected=35, settle=2.0)
    ids = [headers_text(r)["event_id"] for r in received]
    assert len(ids) == 35 and len(set(ids)) == 35, "a retained event was published again"
    wait_until("35 events to be marked published", lambda: app.count(published) == 35)
    assert relay.terminate() == 0, relay.log
    assert app.count() == 35

    # A window longer than the rows' age keeps them; a short one purges all, 10 per batch.
    kept = run("purge", "--db-url", pg_url, "--older-than", "1h", "--batch-size", "10")
    assert kept.returncode == 0 and "purged 0 published events" in kept.stdout, kept
    assert app.count() == 35
    purged = run("purge", "--db-url", pg_url, "--older-than", "0s", "--batch-size", "10")
    assert purged.returncode == 0, purged.stderr
    assert "purged 35 published events" in purged.stdout
    assert app.count() == 0


# -- 6. inspection -------------------------------------------------------------------------------


def status_table(db_url: str) -> str:
    result = run("status", "--db-url", db_url)
    assert result.returncode == 0, result.stderr
    return result.stdout


def row(table: str, label: str) -> str:
    match = re.search(rf"{re.escape(label)}\s*│\s*(.*?)\s*│", table)
    assert match is not None, table
    return match.group(1)


def test_status_table_and_parked_events_after_a_real_rejection(
    pg_url: str, kafka: str, app: App, start_relay: Callable[..., RelayProcess]
) -> None:
    topic = new_topic("inspect")
    (poison,) = app.emit([{"payload": POISON, "aggregate_id": "big", "topic": topic}])
    app.emit([{"payload": {"n": i}, "aggregate_id": f"k{i}", "topic": topic} for i in range(3)])
    before = status_table(pg_url)
    assert row(before, "pending events") == "4"
    assert re.fullmatch(r"\d+\.\ds|\d+m \d\ds", row(before, "oldest pending event")), before
    assert row(before, "parked (failed) events") == "0"

    relay = start_relay(pg_url, "--max-attempts", "1", "-X", f"max_request_size={MAX_REQUEST}")
    assert len(consume(kafka, topic, expected=3)) == 3
    wait_until("the poison event to be parked", lambda: status_json(pg_url)["failed"] == 1)
    assert relay.terminate() == 0, relay.log
    after = status_table(pg_url)
    assert row(after, "pending events") == "0"
    assert row(after, "oldest pending event") == "-"
    assert row(after, "parked (failed) events") == "1"

    listed = json.loads(run("parked", "list", "--db-url", pg_url, "--json").stdout)
    assert [e["id"] for e in listed] == [str(poison.id)]
    assert "MessageSizeTooLargeError" in listed[0]["last_error"]
    assert listed[0]["attempts"] == 1
    assert str(poison.id) in run("parked", "list", "--db-url", pg_url).stdout

    declined = run("parked", "drop", "--db-url", pg_url, "--all", input="n\n")
    assert declined.returncode != 0
    assert "Traceback" not in declined.stderr
    assert status_json(pg_url)["failed"] == 1
    assert app.count() == 1

    confirmed = run("parked", "drop", "--db-url", pg_url, "--all", input="y\n")
    assert confirmed.returncode == 0, confirmed.stderr
    assert "dropped 1 parked event" in confirmed.stdout
    assert status_json(pg_url)["failed"] == 0
    assert app.count() == 0
