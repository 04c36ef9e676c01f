"""docs/INTEGRATIONS.md: every framework recipe runs as written, and its events reach Kafka.

Each recipe is copied from the page into `app.py`, run with `python app.py` against a fresh
PostgreSQL database (the recipe makes its request or task itself), and then the shipped
`outbox relay` publishes; a real consumer checks what arrived.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.support import RelayProcess, async_url, clean_env, consume

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "INTEGRATIONS.md"


def recipe(name: str) -> str:
    found = re.search(
        rf"<!-- recipe: {name} -->\s*```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL
    )
    assert found is not None, f"no recipe {name!r} in docs/INTEGRATIONS.md"
    return found.group(1)


def run_recipe(name: str, database_url: str, tmp_path: Path) -> str:
    (tmp_path / "app.py").write_text(recipe(name))
    env = clean_env(DATABASE_URL=database_url)
    env.pop("CELERY_BROKER_URL", None)
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning:outbox", "app.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, f"recipe {name} failed:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def records_in(kafka: str, topic: str) -> int:
    """How many records `topic` holds now (0 if it does not exist yet)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=kafka)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(ends.values())
    finally:
        consumer.close()


def relay_events(
    db_url: str,
    kafka: str,
    topics: list[str],
    expected: int,
    relays: list[RelayProcess],
    fixed_topics: tuple[str, ...] = (),
) -> list[tuple[str, str, object]]:
    """(topic without prefix, event_type, payload) of what the relay published, in order.

    Topics get a fresh prefix; `fixed_topics` (events with an explicit topic, which no prefix
    changes) are shared with earlier runs, so only the records they gain count."""
    prefix = f"it{uuid.uuid4().hex[:8]}."
    before = {topic: records_in(kafka, topic) for topic in fixed_topics}
    relay = RelayProcess(
        "--db-url", db_url, "--bootstrap-servers", kafka, "--topic-prefix", prefix
    )  # fmt: skip
    relays.append(relay)
    received = consume(
        kafka, [prefix + t for t in topics] + list(fixed_topics),
        expected=expected + sum(before.values()), settle=0.5,
    )  # fmt: skip
    assert relay.terminate() == 0, relay.log
    assert "Traceback" not in relay.log
    old = {topic: count for topic, count in before.items()}
    # Single-partition topics on the test broker: offsets below the old end are earlier runs'.
    received = [r for r in received if r.topic not in old or r.offset >= old[r.topic]]
    return [
        (
            r.topic.removeprefix(prefix),
            r.headers["event_type"].decode(),
            json.loads(r.value) if r.value else None,
        )
        for r in sorted(received, key=lambda r: (r.timestamp_ms, r.topic, r.offset))
    ]


def test_flask_sqlalchemy(
    pg_url: str, kafka: str, tmp_path: Path, relays: list[RelayProcess]
) -> None:
    out = run_recipe("flask", pg_url, tmp_path)
    assert out.startswith("201 "), out
    events = relay_events(pg_url, kafka, ["orders", "invoices"], 2, relays)
    # Two topics: a consumer sees them interleaved in any order (order holds per key).
    assert sorted(events, key=repr) == [
        ("invoices", "InvoiceRequested", {"total": "9.90"}),
        ("orders", "OrderPlaced", {"total": "9.90"}),
    ]


def test_fastapi_async_session(
    pg_url: str, kafka: str, tmp_path: Path, relays: list[RelayProcess]
) -> None:
    out = run_recipe("fastapi", async_url(pg_url), tmp_path)  # the app's asyncpg URL
    assert out.startswith("201 "), out
    # The relay on the synchronous URL of the same database.
    events = relay_events(pg_url, kafka, ["orders"], 1, relays)
    assert events == [("orders", "OrderShipped", {"order_id": 7, "carrier": "DHL"})]


def test_sqlmodel(pg_url: str, kafka: str, tmp_path: Path, relays: list[RelayProcess]) -> None:
    run_recipe("sqlmodel", pg_url, tmp_path)
    # capture() sends to the table's name as an explicit topic (no prefix).
    events = relay_events(pg_url, kafka, ["hero"], 3, relays, fixed_topics=("hero",))
    # Two topics (the entity event on the prefixed one): order holds within each.
    assert [e for _, e, _ in events if e.startswith("hero.")] == ["hero.created", "hero.updated"]
    promoted = [p for _, e, p in events if e == "HeroPromoted"]
    assert promoted == [{"name": "Deadpond"}]
    created = next(p for _, e, p in events if e == "hero.created")
    assert created["row"]["name"] == "Deadpond"  # type: ignore[index]


def test_scoped_session(
    pg_url: str, kafka: str, tmp_path: Path, relays: list[RelayProcess]
) -> None:
    run_recipe("scoped", pg_url, tmp_path)
    events = relay_events(pg_url, kafka, ["pages"], 4, relays)
    assert sorted(payload["n"] for _, _, payload in events) == [0, 1, 2, 3]  # type: ignore[index]
    assert {e for _, e, _ in events} == {"PageViewed"}


def test_celery_task(pg_url: str, kafka: str, tmp_path: Path, relays: list[RelayProcess]) -> None:
    run_recipe("celery", pg_url, tmp_path)
    events = relay_events(pg_url, kafka, ["payments"], 1, relays)
    assert events == [("payments", "PaymentCaptured", {"order": 7, "amount": "9.90"})]


def test_every_recipe_is_tested() -> None:
    names = set(re.findall(r"<!-- recipe: (\w+) -->", DOC.read_text()))
    tested = {n.removeprefix("test_") for n in globals() if n.startswith("test_")}
    assert names == {"flask", "fastapi", "sqlmodel", "scoped", "celery"}
    assert {
        "flask_sqlalchemy",
        "fastapi_async_session",
        "sqlmodel",
        "scoped_session",
        "celery_task",
    } <= tested
    assert os.path.exists(DOC)


def test_celery_task_in_a_real_worker(
    pg_url: str, kafka: str, tmp_path: Path, relays: list[RelayProcess]
) -> None:
    """The same recipe, its task run by a Celery worker (a thread, in-memory transport)."""
    (tmp_path / "celery_recipe.py").write_text(recipe("celery"))
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            """
            import time
            import sqlalchemy as sa
            from celery.contrib.testing.worker import start_worker
            from celery_recipe import app, capture_payment, engine, outbox

            outbox.metadata.create_all(engine)
            app.conf.task_always_eager = False
            with start_worker(app, perform_ping_check=False, pool="solo", loglevel="WARNING"):
                for order in range(3):
                    capture_payment.delay(order, "1.00")
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    with engine.connect() as conn:
                        count = conn.execute(
                            sa.select(sa.func.count()).select_from(outbox.table)
                        ).scalar()
                    if count == 3:
                        break
                    time.sleep(0.1)
            print("rows", count)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=clean_env(DATABASE_URL=pg_url),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["rows", "3"], result.stdout + result.stderr
    events = relay_events(pg_url, kafka, ["payments"], 3, relays)
    assert sorted(p["order"] for _, _, p in events) == [0, 1, 2]  # type: ignore[index]
