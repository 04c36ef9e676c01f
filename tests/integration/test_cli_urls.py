"""Every command takes the application's asyncio URL, and URL mistakes get a hint (issue 13)."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from outbox._urls import check_sqlite_file as _check_sqlite_file
from outbox.errors import TableMissingError
from tests.integration.test_cli import assert_one_line_error, run, seed
from tests.support import (
    RelayProcess,
    async_url,
    consume,
    count_rows,
    create_outbox_tables,
    insert_rows,
)

pytestmark = pytest.mark.integration

NOTE = "using the synchronous driver"


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def _noted(result: subprocess.CompletedProcess[str], sync_driver: str) -> None:
    notes = [line for line in result.stderr.splitlines() if NOTE in line]
    assert len(notes) == 1, result.stderr
    assert sync_driver in notes[0], notes[0]


@pytest.fixture(params=["postgresql", "sqlite"])
def app_url(request: pytest.FixtureRequest, pg_url: str, sqlite_url: str) -> tuple[str, str]:
    """(sync URL, the application's asyncio URL of the same database)."""
    url = pg_url if request.param == "postgresql" else sqlite_url
    return url, async_url(url)


def _sync_driver(url: str) -> str:
    return "psycopg" if url.startswith("postgresql") else "pysqlite"


def test_migrate_status_parked_purge_take_the_async_url(app_url: tuple[str, str]) -> None:
    sync, async_ = app_url
    _ok(run("migrate", "--db-url", async_))
    table, parked_ids = seed(sync)
    driver = _sync_driver(sync)

    status = _ok(run("status", "--db-url", async_, "--json"))
    _noted(status, driver)
    assert json.loads(status.stdout)["pending"] == 3

    listed = _ok(run("parked", "list", "--db-url", async_, "--json"))
    _noted(listed, driver)
    assert sorted(e["id"] for e in json.loads(listed.stdout)) == sorted(map(str, parked_ids))

    requeued = _ok(run("parked", "requeue", "--db-url", async_, str(parked_ids[0])))
    _noted(requeued, driver)
    assert "requeued 1 parked event" in requeued.stdout

    dropped = _ok(run("parked", "drop", "--db-url", async_, "--all", "--yes"))
    _noted(dropped, driver)
    assert "dropped 1 parked event" in dropped.stdout

    insert_rows(
        sync, table, [{"aggregateid": "old", "published_at": datetime.now(UTC) - timedelta(days=2)}]
    )
    purged = _ok(run("purge", "--db-url", async_, "--older-than", "1d"))
    _noted(purged, driver)
    assert "purged 1 published event\n" in purged.stdout  # the seeded one is 0 s old: kept
    assert count_rows(sync, table) == 5


def test_relay_publishes_with_the_async_url(
    app_url: tuple[str, str], kafka: str, relays: list[RelayProcess]
) -> None:
    sync, async_ = app_url
    table = create_outbox_tables(sync)
    topic = f"async-url-{uuid.uuid4().hex[:8]}"
    insert_rows(
        sync,
        table,
        [{"aggregateid": f"k{i}", "topic": topic, "payload": b"%d" % i} for i in range(5)],
    )
    relay = RelayProcess("--db-url", async_, "--bootstrap-servers", kafka)
    relays.append(relay)
    received = consume(kafka, topic, expected=5)
    assert sorted(r.value for r in received) == [b"%d" % i for i in range(5)]
    relay.wait_for_log(NOTE)
    assert relay.count(NOTE) == 1
    assert relay.terminate() == 0, relay.log
    assert "MissingGreenlet" not in relay.log and "Traceback" not in relay.log


@pytest.mark.parametrize(
    "command", ["relay", "status", "parked list", "parked requeue --all", "purge --older-than 1d"]
)
def test_postgres_scheme_gets_a_hint(command: str) -> None:
    result = run(*command.split(), "--db-url", "postgres://u:s3cret@db.example/app")
    assert_one_line_error(result, "'postgresql'", "postgresql://u:***@db.example/app")
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize("command", ["relay", "status", "migrate"])
def test_missing_driver_names_the_extra(command: str) -> None:
    # mysqlclient (MySQLdb), the default driver of mysql://, is not installed here.
    result = run(command, "--db-url", "mysql://root@127.0.0.1:3306/test")
    assert_one_line_error(result, "mysqldb", "mysql+pymysql://", "sqlalchemy-outbox[mysql]")


def test_async_url_without_a_counterpart_is_refused_in_one_line() -> None:
    result = run("status", "--db-url", "postgresql+pg8000_async_nope://u@h/db")
    assert_one_line_error(result)


@pytest.mark.parametrize(
    "command",
    ["relay", "status", "parked list", "parked drop --all --yes", "purge --older-than 1d"],
)
def test_read_only_commands_never_create_a_sqlite_file(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    for url in (f"sqlite:///{missing}", f"sqlite+aiosqlite:///{missing}"):
        result = run(*command.split(), "--db-url", url)
        # The asyncio URL's one note (which driver it uses) may come first: then the error.
        noted = [line for line in result.stderr.splitlines() if NOTE not in line]
        result = subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout, "\n".join(noted)
        )
        assert_one_line_error(result, str(missing), "does not exist", "outbox migrate")
        assert not missing.exists()


def test_migrate_creates_the_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    _ok(run("migrate", "--db-url", f"sqlite:///{path}"))
    assert path.exists()
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        assert {"outbox", "outbox_lease"} <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_demo_takes_the_async_url(tmp_path: Path) -> None:
    result = _ok(
        run("demo", "--db-url", f"sqlite+aiosqlite:///{tmp_path}/demo.db", "--events", "20")
    )
    assert "lost 0, phantom 0" in result.stdout, result.stdout


def test_a_missing_sqlite_file_is_reported_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(TableMissingError, match="does not exist"):
        _check_sqlite_file(sa.make_url(f"sqlite:///{missing}"))
    assert not missing.exists()
    for memory in (
        "sqlite://",
        "sqlite:///:memory:",
        f"sqlite:///file:{missing}?mode=memory&uri=true",
    ):
        _check_sqlite_file(sa.make_url(memory))
    missing.write_bytes(b"")
    _check_sqlite_file(sa.make_url(f"sqlite:///{missing}"))
