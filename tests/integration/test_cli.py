"""The `outbox` console script as users run it: real processes, databases and broker."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from outbox.demo.broker import free_port, start_broker
from tests.support import (
    MYSQL_BASE,
    OUTBOX,
    PG_BASE,
    RelayProcess,
    clean_env,
    consume,
    count_rows,
    create_outbox_tables,
    http_status,
    insert_rows,
)

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-Pa55"


def run(
    *args: str, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OUTBOX, *args], capture_output=True, text=True, input=input, timeout=timeout,
        env=clean_env(),
    )  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("outbox: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def with_password(base: str, user: str) -> str:
    return (
        sa.make_url(base).set(username=user, password=SECRET).render_as_string(hide_password=False)
    )


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["relay", "status"])
def test_malformed_url(command: str) -> None:
    result = run(command, "--db-url", f"postgresql://u:{SECRET}@host:notaport/db")
    assert_one_line_error(result, "malformed database URL")
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["relay", "--db-url", "sqlite://", "--no-such-option"],
        ["relay", "--db-url", "sqlite://", "--batch-size", "0"],
        ["relay", "--db-url", "sqlite://", "--envelope", "xml"],
        ["relay", "--db-url", "sqlite://", "-X", "compression_type"],
        ["relay"],
        ["status", "--db-url", "nosuchdialect://x/y"],
        ["purge", "--db-url", "sqlite://", "--older-than", "soon"],
        ["parked", "drop", "--db-url", "sqlite://", "not-a-uuid"],
        ["parked", "requeue", "--db-url", "sqlite://"],
        ["no-such-command"],
    ],
    ids=lambda a: " ".join(a),
)
def test_invalid_input(args: list[str]) -> None:
    assert_one_line_error(run(*args))


@pytest.mark.parametrize("command", ["relay", "status"])
def test_missing_table_names_the_migrate_command(command: str, sqlite_url: str) -> None:
    assert_one_line_error(run(command, "--db-url", sqlite_url), "outbox migrate")


@pytest.mark.parametrize("command", ["relay", "status", "parked list"])
def test_wrong_mariadb_password(command: str) -> None:
    url = with_password(MYSQL_BASE, "root")
    result = run(*command.split(), "--db-url", url)
    assert_one_line_error(result, "Access denied")
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize("command", ["relay", "status"])
def test_unknown_postgresql_user(command: str) -> None:
    # The local server trusts every password of existing users, so the login fails on the role.
    url = with_password(PG_BASE, f"nobody_{uuid.uuid4().hex[:6]}")
    result = run(command, "--db-url", url)
    assert_one_line_error(result, "does not exist")
    assert SECRET not in result.stderr + result.stdout


# -- status, parked, purge ------------------------------------------------------------------------


def seed(url: str) -> tuple[sa.Table, list[uuid.UUID]]:
    """3 pending, 2 parked, 1 published event; returns the table and the parked ids."""
    table = create_outbox_tables(url)
    now = datetime.now(UTC)
    parked = [uuid.uuid4(), uuid.uuid4()]
    insert_rows(
        url,
        table,
        [{"aggregateid": f"p{i}", "created_at": now - timedelta(minutes=5)} for i in range(3)],
    )
    insert_rows(
        url, table,
        [{"id": i, "aggregateid": "x", "attempts": 3, "last_error": "MessageSizeTooLargeError",
          "parked_at": now} for i in parked],
    )  # fmt: skip
    insert_rows(url, table, [{"aggregateid": "done", "published_at": now}])
    return table, parked


def test_status_json(db_url: str) -> None:
    seed(db_url)
    result = run("status", "--db-url", db_url, "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert set(status) == {
        "pending", "oldest_pending_age_seconds", "failed", "lease", "relays_live", "relays",
        "standbys",
    }  # fmt: skip
    assert (status["lease"], status["relays"], status["standbys"]) == (None, [], [])
    assert status["pending"] == 3
    assert status["failed"] == 2
    assert 240 <= status["oldest_pending_age_seconds"] < 3600


def test_status_table_and_empty_json(sqlite_url: str) -> None:
    create_outbox_tables(sqlite_url)
    assert json.loads(run("status", "--db-url", sqlite_url, "--json").stdout) == {
        "pending": 0, "oldest_pending_age_seconds": None, "failed": 0,
        "lease": None, "relays_live": 0, "relays": [], "standbys": [],
    }  # fmt: skip
    seed(sqlite_url)
    result = run("status", "--db-url", sqlite_url)
    assert result.returncode == 0, result.stderr
    assert re.search(r"pending events\s*│\s*3\s*│", result.stdout), result.stdout
    assert re.search(r"parked \(failed\) events\s*│\s*2\s*│", result.stdout), result.stdout


def test_parked_list_requeue_drop(pg_url: str) -> None:
    table, parked = seed(pg_url)
    listed = json.loads(run("parked", "list", "--db-url", pg_url, "--json").stdout)
    assert sorted(e["id"] for e in listed) == sorted(map(str, parked))
    assert listed[0]["last_error"] == "MessageSizeTooLargeError"
    assert str(parked[0]) in run("parked", "list", "--db-url", pg_url).stdout

    requeued = run("parked", "requeue", "--db-url", pg_url, str(parked[0]))
    assert requeued.returncode == 0 and "requeued 1 parked event" in requeued.stdout
    status = json.loads(run("status", "--db-url", pg_url, "--json").stdout)
    assert (status["pending"], status["failed"]) == (4, 1)

    declined = run("parked", "drop", "--db-url", pg_url, "--all", input="n\n")
    assert declined.returncode != 0
    assert count_rows(pg_url, table) == 6

    dropped = run("parked", "drop", "--db-url", pg_url, "--all", "--yes")
    assert dropped.returncode == 0 and "dropped 1 parked event" in dropped.stdout
    assert json.loads(run("parked", "list", "--db-url", pg_url, "--json").stdout) == []
    assert count_rows(pg_url, table) == 5


def test_purge_deletes_only_old_published_events(mariadb_url: str) -> None:
    table = create_outbox_tables(mariadb_url)
    now = datetime.now(UTC)
    insert_rows(
        mariadb_url,
        table,
        [{"aggregateid": "a", "published_at": now - timedelta(hours=3)} for _ in range(5)],
    )
    insert_rows(mariadb_url, table, [{"aggregateid": "b", "published_at": now}])
    insert_rows(mariadb_url, table, [{"aggregateid": "c"}])
    result = run("purge", "--db-url", mariadb_url, "--older-than", "2h", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    assert "purged 5 published events" in result.stdout
    assert count_rows(mariadb_url, table) == 2


# -- the relay process ----------------------------------------------------------------------------


def test_relay_publishes_and_stops_cleanly_on_sigterm(
    pg_url: str, kafka: str, relays: list[RelayProcess]
) -> None:
    table = create_outbox_tables(pg_url)
    topic = f"cli-{uuid.uuid4().hex[:8]}"
    insert_rows(
        pg_url,
        table,
        [
            {"aggregateid": f"k{i % 3}", "topic": topic, "payload": f"{i}".encode()}
            for i in range(50)
        ],
    )
    port = free_port()
    relay = RelayProcess(
        "--db-url", pg_url, "--bootstrap-servers", kafka, "--health-port", str(port),
        "--metrics-port", str(port), "--log-format", "json", "-X", "compression_type=gzip",
    )  # fmt: skip
    relays.append(relay)
    received = consume(kafka, topic, expected=50)
    assert sorted(int(r.value or b"") for r in received) == list(range(50))
    relay.wait_for_log("lease acquired")
    assert run("healthcheck", "--port", str(port)).returncode == 0
    assert http_status(port, "/readyz") == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        assert b"outbox_events_published_total" in response.read()
    # The rows go once Kafka acknowledged them (the relay marks right after the ack).
    deadline = time.monotonic() + 10
    while count_rows(pg_url, table) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count_rows(pg_url, table) == 0

    assert relay.terminate() == 0, relay.log
    assert all(json.loads(line)["level"] for line in relay.lines), relay.log
    assert "SIGTERM received" in relay.log
    assert run("healthcheck", "--port", str(port), "--timeout", "0.5").returncode == 1


def test_relay_waits_for_an_unreachable_broker(sqlite_url: str, relays: list[RelayProcess]) -> None:
    table = create_outbox_tables(sqlite_url)
    topic = f"cli-late-{uuid.uuid4().hex[:8]}"
    insert_rows(
        sqlite_url,
        table,
        [
            {"aggregateid": f"k{i % 4}", "topic": topic, "payload": f"{i}".encode()}
            for i in range(20)
        ],
    )
    broker_port, health_port = free_port(), free_port()
    servers = f"127.0.0.1:{broker_port}"
    relay = RelayProcess(
        "--db-url", sqlite_url, "--bootstrap-servers", servers, "--health-port", str(health_port)
    )
    relays.append(relay)
    relay.wait_for_log(f"waiting for the broker at {servers}")
    assert http_status(health_port, "/readyz") == 503
    assert http_status(health_port, "/healthz") == 200
    assert count_rows(sqlite_url, table) == 20

    broker = start_broker(broker_port)
    try:
        received = consume(broker.bootstrap_servers, topic, expected=20, timeout=60)
        assert sorted(int(r.value or b"") for r in received) == list(range(20))
        assert http_status(health_port, "/readyz") == 200
        assert relay.terminate() == 0, relay.log
    finally:
        broker.stop()
    assert count_rows(sqlite_url, table) == 0


def test_sigterm_while_waiting_for_the_broker_exits_0(
    sqlite_url: str, relays: list[RelayProcess]
) -> None:
    create_outbox_tables(sqlite_url)
    relay = RelayProcess("--db-url", sqlite_url, "--bootstrap-servers", f"127.0.0.1:{free_port()}")
    relays.append(relay)
    relay.wait_for_log("database reachable")
    assert relay.terminate() == 0, relay.log
    assert "outbox: error" not in relay.log
