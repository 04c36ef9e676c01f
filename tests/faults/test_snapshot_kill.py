"""Guarantee 3: a snapshot process killed with SIGKILL mid-way and resumed snapshots every row
exactly once across the crash (counted on the real broker)."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.snapshot_support import App, make_model, running_relay, unique_table, write_app
from tests.support import OUTBOX, clean_env, consume

pytestmark = pytest.mark.faults

ROWS = 3000


def snapshot_command(url: str, *extra: str) -> list[str]:
    return [
        OUTBOX,
        "snapshot",
        "run",
        "--db-url",
        url,
        "--app",
        "snapapp:outbox",
        "--model",
        "snapapp:Customer",
        "--chunk-size",
        "100",
        "--quiet",
        *extra,
    ]


def test_sigkill_mid_snapshot_then_resume_sends_every_row_once(
    db_url: str, kafka: str, tmp_path: Path
) -> None:
    table = unique_table()
    write_app(tmp_path, table)
    migrated = subprocess.run(
        [OUTBOX, "migrate", "--db-url", db_url], capture_output=True, text=True, env=clean_env()
    )
    assert migrated.returncode == 0, migrated.stderr
    app = App(db_url, make_model("int", table))
    try:
        app.seed("int", ROWS)
        snapshots = app.outbox.snapshot_table
        # Slow enough to be killed mid-way: 4000 rows/s is about 0.75 s for the table.
        log = tmp_path / "first.log"
        with log.open("w") as stderr:
            first = subprocess.Popen(
                snapshot_command(db_url, "--max-rows-per-second", "4000"),
                cwd=tmp_path,
                env=clean_env(),
                stderr=stderr,
            )
        done_at_kill = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.poll() is None:
            with app.engine.connect() as conn:
                done_at_kill = conn.execute(
                    sa.select(sa.func.coalesce(sa.func.max(snapshots.c.rows_done), 0))
                ).scalar_one()
            if done_at_kill >= ROWS // 3:
                break
            time.sleep(0.02)
        first.kill()
        first.wait(10)
        assert first.returncode == -9, log.read_text()
        with app.engine.connect() as conn:
            state, done_at_kill = conn.execute(
                sa.select(snapshots.c.state, snapshots.c.rows_done)
            ).one()
            # The cursor commits with its chunk's events: the outbox holds exactly that many.
            events_at_kill = conn.execute(
                sa.select(sa.func.count()).select_from(app.outbox.table)
            ).scalar_one()
        second = subprocess.run(
            snapshot_command(db_url), cwd=tmp_path, env=clean_env(), capture_output=True, text=True
        )
        with running_relay(db_url, kafka):
            received = consume(kafka, table, ROWS, timeout=60, settle=1.0)
    finally:
        app.close()

    keys = Counter((r.key or b"").decode() for r in received)
    expected = {str(i + 1) for i in range(ROWS)}
    lost = len(expected - set(keys))
    duplicates = sum(n - 1 for n in keys.values() if n > 1)
    print(
        f"\n{sa.make_url(db_url).get_backend_name()}: killed at {done_at_kill} of {ROWS} rows "
        f"(state {state!r}, {events_at_kill} events in the outbox); after resume: "
        f"{len(received)} records, lost {lost}, "
        f"duplicates {duplicates}; second run: {second.stdout.strip()}"
    )
    assert state == "running" and 0 < done_at_kill < ROWS and events_at_kill == done_at_kill
    assert second.returncode == 0, second.stderr
    assert "resumed and finished" in second.stdout
    assert lost == 0 and duplicates == 0 and len(received) == ROWS
