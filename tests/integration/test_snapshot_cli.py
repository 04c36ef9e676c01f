"""`outbox snapshot run|status|cancel`: the command end to end, Ctrl-C, and bad input."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from outbox.snapshot.options import SnapshotOptions
from tests.snapshot_support import App, make_model, unique_table, write_app
from tests.support import OUTBOX, clean_env

pytestmark = pytest.mark.integration


def outbox_cmd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OUTBOX, *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=120
    )


def run_args(url: str, model: str = "snapapp:Customer", app: str = "snapapp:outbox") -> list[str]:
    return ["snapshot", "run", "--db-url", url, "--app", app, "--model", model]


@pytest.fixture
def cli_app(db_url: str, tmp_path: Path) -> Iterator[tuple[str, App]]:
    table = unique_table()
    write_app(tmp_path, table)
    assert outbox_cmd("migrate", "--db-url", db_url, cwd=tmp_path).returncode == 0
    app = App(db_url, make_model("int", table))
    app.seed("int", 1200)
    yield db_url, app
    app.close()


def test_run_then_status_and_cancel(cli_app: tuple[str, App], tmp_path: Path) -> None:
    url, app = cli_app
    done = outbox_cmd(*run_args(url), "--chunk-size", "500", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r"finished: 1200 rows in \d+ chunks", done.stdout), done.stdout

    listed = outbox_cmd("snapshot", "status", "--db-url", url, "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert entry["state"] == "done" and entry["rows_done"] == 1200
    assert entry["estimated_total"] == 1200 and entry["model"] == "snapapp:Customer"
    assert entry["rate_rows_per_second"] > 0 and entry["last_error"] is None
    table_view = outbox_cmd("snapshot", "status", "--db-url", url, cwd=tmp_path)
    assert entry["id"][:8] in table_view.stdout and "done" in table_view.stdout

    again = outbox_cmd("snapshot", "cancel", entry["id"], "--db-url", url, cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip() == f"outbox: error: snapshot {entry['id']} is already done"

    # An unfinished one (stopped by Ctrl-C after its first chunk) can be cancelled.
    def stop(progress: object) -> None:
        raise KeyboardInterrupt

    runner = app.outbox.snapshot_runner(
        app.factory, app.model, SnapshotOptions(chunk_size=100, restart=True), on_progress=stop
    )
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    [_, unfinished] = json.loads(
        outbox_cmd("snapshot", "status", "--db-url", url, "--json", cwd=tmp_path).stdout
    )
    assert unfinished["state"] == "interrupted" and unfinished["rows_done"] == 100
    cancelled = outbox_cmd("snapshot", "cancel", unfinished["id"], "--db-url", url, cwd=tmp_path)
    assert cancelled.returncode == 0 and cancelled.stdout.strip().endswith("cancelled")
    listed = outbox_cmd("snapshot", "status", "--db-url", url, "--json", cwd=tmp_path)
    assert [e["state"] for e in json.loads(listed.stdout)] == ["done", "cancelled"]


@pytest.mark.parametrize("db_url", ["postgresql", "sqlite"], indirect=True)
def test_ctrl_c_stops_after_the_chunk_and_the_same_command_resumes(
    cli_app: tuple[str, App], tmp_path: Path
) -> None:
    url, app = cli_app
    snapshots = app.outbox.snapshot_table
    args = [*run_args(url), "--chunk-size", "50", "--max-rows-per-second", "1500"]
    process = subprocess.Popen(
        [OUTBOX, *args],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with app.engine.connect() as conn:
            done = conn.execute(sa.select(sa.func.max(snapshots.c.rows_done))).scalar()
        if done:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    with app.engine.connect() as conn:
        state, rows, snapshot_id = conn.execute(
            sa.select(snapshots.c.state, snapshots.c.rows_done, snapshots.c.id)
        ).one()
        events = conn.execute(sa.select(sa.func.count()).select_from(app.outbox.table)).scalar()
    assert process.returncode == 130, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert state == "interrupted" and 0 < rows < 1200 and events == rows

    resumed = outbox_cmd(*args, "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"snapshot {snapshot_id} of Customer resumed and finished: 1200 rows" in resumed.stdout


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("app_path", "model", "expected"),
    [
        ("nosuchmodule:outbox", "snapapp:Customer", "cannot import --app 'nosuchmodule:outbox'"),
        ("snapapp", "snapapp:Customer", "--app 'snapapp' is not package.module:name"),
        ("snapapp:missing", "snapapp:Customer", "--app 'snapapp:missing': snapapp has no"),
        ("snapapp:not_an_outbox", "snapapp:Customer", "is a int, not an Outbox"),
        ("snapapp:outbox", "snapapp:Uncaptured", "Uncaptured is not captured by this outbox"),
        ("snapapp:outbox", "snapapp:outbox", "is not a class"),
    ],
)
def test_bad_input_is_one_line(
    cli_app: tuple[str, App], tmp_path: Path, app_path: str, model: str, expected: str
) -> None:
    url, app = cli_app
    result = outbox_cmd(*run_args(url, model=model, app=app_path), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("outbox: error: "), result.stderr
    assert expected in lines[0]
    with app.engine.connect() as conn:  # nothing was written
        assert conn.execute(sa.select(sa.func.count()).select_from(app.outbox.table)).scalar() == 0


@pytest.mark.parametrize("db_url", ["postgresql", "sqlite"], indirect=True)
def test_a_bad_where_is_one_line(cli_app: tuple[str, App], tmp_path: Path) -> None:
    url, _ = cli_app
    result = outbox_cmd(*run_args(url), "--where", "no_such_column > 1", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("outbox: error: cannot start the snapshot")
    assert "no_such_column" in lines[0]


def test_without_the_snapshot_table_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    result = outbox_cmd("snapshot", "status", "--db-url", url, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "outbox: error: snapshot table 'outbox_snapshot' does not exist: run "
        "`outbox migrate --db-url URL`"
    )
    cancelled = outbox_cmd("snapshot", "cancel", "nope", "--db-url", url, cwd=tmp_path)
    assert cancelled.returncode == 2 and "does not exist" in cancelled.stderr
