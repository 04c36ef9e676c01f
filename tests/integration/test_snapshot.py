"""Snapshots end to end: real databases, the real broker, a real consumer (guarantees 1, 2, 5)."""

from __future__ import annotations

import json
import threading
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

from outbox.errors import ConfigurationError
from outbox.snapshot.options import Progress, SnapshotOptions, SnapshotResult
from tests.snapshot_support import (
    KEY_KINDS,
    App,
    fold,
    key_columns,
    key_of,
    make_model,
    op_of,
    random_writes,
    running_relay,
    unique_table,
)
from tests.support import consume

pytestmark = pytest.mark.integration

ROWS = 1500


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_every_existing_row_reaches_the_topic_keyed_like_capture(
    db_url: str, kafka: str, kind: str
) -> None:
    """Guarantee 1 and 5: each existing row once, as `<table>.snapshot`, with capture's key."""
    table = unique_table()
    app = App(db_url, make_model(kind, table))
    try:
        app.seed(kind, ROWS)
        result = app.outbox.snapshot(app.factory, app.model, chunk_size=200)
        # A capture event after the snapshot: its key must be byte-identical to the snapshot's.
        with app.factory.begin() as session:
            pk = key_of(kind, 7)
            ident = tuple(pk[c] for c in key_columns(app.model))
            obj = session.get(app.model, ident if len(ident) > 1 else ident[0])
            obj.name = "changed"
        expected = app.contents()
        with running_relay(db_url, kafka):
            received = consume(kafka, table, ROWS + 1, timeout=60)
    finally:
        app.close()

    snapshots = [r for r in received if op_of(r) == "snapshot"]
    updates = [r for r in received if op_of(r) == "updated"]
    print(f"\n{kind}: {len(snapshots)} snapshot events for {ROWS} rows, {result.chunks} chunks")
    assert result.rows == ROWS and result.state == "done" and not result.resumed
    assert result.chunks >= -(-ROWS // 200)  # more when a slow chunk shrank the next
    keys = [(r.key or b"").decode() for r in snapshots]
    assert len(keys) == len(set(keys)) == ROWS  # none twice
    assert set(keys) == set(expected)  # none missed
    for r in snapshots[:50]:
        assert r.headers["snapshot_id"].decode() == result.id
        assert r.headers["aggregate_type"].decode() == table
        assert r.headers["aggregate_id"] == r.key
    folded = fold(received)
    assert folded.state == expected
    assert len(updates) == 1 and updates[0].key in {r.key for r in snapshots}


def test_fold_equals_the_table_while_the_application_writes(db_url: str, kafka: str) -> None:
    """Guarantee 2: threads update, delete and re-insert random rows during the snapshot;
    folding each key's events in topic order gives exactly the table's final contents."""
    kind, rows = "int", 2000
    table = unique_table()
    app = App(db_url, make_model(kind, table))
    stop = threading.Event()
    counts: list[int] = []
    try:
        app.seed(kind, rows)
        with running_relay(db_url, kafka):
            threads = [
                threading.Thread(
                    target=lambda s=seed: counts.append(random_writes(app, kind, rows, stop, s))
                )
                for seed in range(3)
            ]
            for t in threads:
                t.start()
            try:
                result = app.outbox.snapshot(
                    app.factory, app.model, chunk_size=50, max_rows_per_second=4000
                )
            finally:
                stop.set()
                for t in threads:
                    t.join(60)
            expected = app.contents()
            with app.engine.connect() as conn:
                written = conn.execute(
                    sa.select(sa.func.count()).select_from(app.outbox.table)
                ).scalar_one()
            received = consume(kafka, table, result.rows + sum(counts), timeout=90, settle=1.0)
    finally:
        app.close()

    folded = fold(received)
    tombstones = sum(r.value is None for r in received)
    print(
        f"\n{sa.make_url(db_url).get_backend_name()}: {result.rows} snapshot events, "
        f"{sum(counts)} application changes during the snapshot, {len(received)} records, "
        f"{tombstones} tombstones; stale after update: {folded.stale_after_update}, "
        f"stale after delete: {folded.stale_after_delete}; "
        f"outbox rows left when it ended: {written}"
    )
    assert sum(counts) > 0
    assert folded.stale_after_update == 0 and folded.stale_after_delete == 0
    assert folded.state == expected


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_model_without_capture_or_primary_key_is_refused(db_url: str) -> None:
    table = unique_table()
    app = App(db_url, make_model("int", table))
    other = make_model("text", unique_table())

    class NoKey(other.__mro__[1]):  # type: ignore[misc,name-defined]
        __table__ = sa.Table(
            unique_table("nokey"),
            other.metadata,
            sa.Column("a", sa.Integer),
            sa.Column("b", sa.String(10)),
        )
        __mapper_args__: ClassVar[dict[str, Any]] = {"primary_key": [__table__.c.a]}

    try:
        with pytest.raises(ConfigurationError, match="is not captured by this outbox"):
            app.outbox.snapshot(app.factory, other)
        app.outbox.capture(NoKey)
        with pytest.raises(ConfigurationError, match="has no primary key"):
            app.outbox.snapshot(app.factory, NoKey)
        with pytest.raises(ConfigurationError, match="chunk_size must be a positive integer"):
            app.outbox.snapshot(app.factory, app.model, chunk_size=0)
    finally:
        app.close()


def interrupted_run(app: App, options: SnapshotOptions, reports: int) -> None:
    """A run that gets Ctrl-C (KeyboardInterrupt) after `reports` progress reports."""
    seen: list[object] = []

    def on_progress(progress: object) -> None:
        seen.append(progress)
        if len(seen) == reports:
            raise KeyboardInterrupt

    runner = app.outbox.snapshot_runner(app.factory, app.model, options, on_progress=on_progress)
    with pytest.raises(KeyboardInterrupt):
        runner.run()


@pytest.mark.parametrize("db_url", ["postgresql", "sqlite"], indirect=True)
def test_where_restart_and_resume_after_ctrl_c(db_url: str) -> None:
    """A filtered snapshot; a KeyboardInterrupt mid-way leaves it interrupted, the next call
    resumes it exactly; restart=True starts a new one."""
    table = unique_table()
    app = App(db_url, make_model("int", table))
    try:
        app.seed("int", 600)
        interrupted_run(app, SnapshotOptions(where="n % 2 = 0", chunk_size=50), reports=3)
        resumed = app.outbox.snapshot(app.factory, app.model, where="n % 2 = 0", chunk_size=50)
        # Another one stopped at once; resuming it with a different filter is refused.
        interrupted_run(app, SnapshotOptions(chunk_size=100), reports=1)
        with pytest.raises(ConfigurationError, match="unfinished"):
            app.outbox.snapshot(app.factory, app.model, where="n > 3")
        fresh = app.outbox.snapshot(app.factory, app.model, restart=True)
        # A SQLAlchemy expression works as a filter too, and is recorded as SQL text.
        expression = app.outbox.snapshot(app.factory, app.model, where=app.model.n < 10)
        with app.engine.connect() as conn:
            recorded = conn.execute(
                sa.select(app.outbox.snapshot_table.c.where_sql).where(
                    app.outbox.snapshot_table.c.id == expression.id
                )
            ).scalar_one()
        with app.engine.connect() as conn:
            o = app.outbox.table
            per_snapshot = conn.execute(
                sa.select(o.c.headers, o.c.aggregateid).where(o.c.type == f"{table}.snapshot")
            ).all()
    finally:
        app.close()

    def headers(raw: object) -> dict[str, str]:
        return raw if isinstance(raw, dict) else json.loads(str(raw))

    ids = [headers(h)["snapshot_id"] for h, _ in per_snapshot]
    first = [a for h, a in per_snapshot if headers(h)["snapshot_id"] == resumed.id]
    assert resumed.resumed and resumed.rows == 300 and len(first) == len(set(first)) == 300
    assert {int(a) % 2 for a in first} == {1}  # ids are n + 1: only even n
    assert fresh.rows == 600 and not fresh.resumed and ids.count(fresh.id) == 600
    assert expression.rows == 10 and recorded == f"{table}.n < 10"


def test_max_pending_pauses_until_the_relay_catches_up(db_url: str, kafka: str) -> None:
    """Guarantee 4: with more than max_pending events waiting, the snapshot pauses; it goes on
    once the relay publishes them."""
    table = unique_table()
    app = App(db_url, make_model("int", table))
    reports: list[Progress] = []
    paused = threading.Event()

    def on_progress(progress: Progress) -> None:
        reports.append(progress)
        if progress.waiting:
            paused.set()

    try:
        app.seed("int", 1000)
        options = SnapshotOptions(chunk_size=100, max_pending=250)
        runner = app.outbox.snapshot_runner(
            app.factory, app.model, options, on_progress=on_progress
        )
        outcome: list[object] = []
        thread = threading.Thread(target=lambda: outcome.append(runner.run()))
        thread.start()
        assert paused.wait(60), "the snapshot never paused"
        with app.engine.connect() as conn:
            waiting = conn.execute(
                sa.select(sa.func.count()).select_from(app.outbox.table)
            ).scalar_one()
        with running_relay(db_url, kafka):
            thread.join(120)
            received = consume(kafka, table, 1000, timeout=60)
    finally:
        app.close()

    pauses = sum(1 for p in reports if p.waiting)
    print(f"\npaused with {waiting} events waiting (max_pending 250, chunk 100); {pauses} reports")
    assert 250 < waiting <= 250 + 100  # it stopped at the first chunk over the limit
    [result] = outcome
    assert isinstance(result, SnapshotResult) and result.rows == 1000
    assert len({r.key for r in received}) == 1000


def test_a_chunk_waits_for_an_application_transaction_and_reads_its_value(db_url: str) -> None:
    """The mechanism behind guarantee 2, made deterministic: an application transaction has
    updated a row (its capture event already inserted) and not committed; the snapshot's chunk
    waits for it, then reads the committed value, and its event comes after the capture
    event in seq order. Without the shared row lock the snapshot would read the old value and
    be published after the newer change: a stale record that wins compaction."""
    table = unique_table()
    app = App(db_url, make_model("int", table))
    try:
        app.seed("int", 300)
        holder = app.factory()
        row = holder.get(app.model, 42)
        row.name = "changed by the application"
        holder.flush()  # the UPDATE and its capture event: the row's lock is now held
        outcome: list[object] = []
        snapshot = threading.Thread(
            target=lambda: outcome.append(app.outbox.snapshot(app.factory, app.model))
        )
        snapshot.start()
        # Let the chunk reach the locked row (if it has not yet, the result is the same).
        snapshot.join(1.0)
        holder.commit()
        holder.close()
        snapshot.join(60)
        o = app.outbox.table
        with app.engine.connect() as conn:
            events = conn.execute(
                sa.select(o.c.seq, o.c.type, o.c.payload)
                .where(o.c.aggregateid == "42")
                .order_by(o.c.seq)
            ).all()
    finally:
        app.close()

    assert [t for _, t, _ in events] == [f"{table}.updated", f"{table}.snapshot"]
    assert json.loads(events[1][2])["row"]["name"] == "changed by the application"
    assert outcome and outcome[0].rows == 300  # type: ignore[attr-defined]
