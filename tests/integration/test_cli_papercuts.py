"""Typical first-hour mistakes and options (issue 13): one clear line, before any I/O."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from outbox import InMemoryPublisher
from outbox.config import RelayConfig
from outbox.demo.broker import free_port
from outbox.ops.progress import ProgressObserver
from outbox.relay import Relay
from outbox.write.outbox import Outbox
from tests.integration.test_cli import assert_one_line_error, run
from tests.support import RelayProcess, clean_env, create_outbox_tables, http_status

pytestmark = pytest.mark.integration

# Nothing listens here: a relay that connected first would wait for it (and time out the test).
UNREACHABLE_DB = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["-X", "linger_ms=abc"], ["linger_ms='abc'", "not a number", "whole number"]),
        (["-X", "request_timeout_ms=1.5s"], ["request_timeout_ms", "not a number"]),
        (["-X", "enable_idempotence=maybe"], ["enable_idempotence", "boolean"]),
        (["-X", "no_such_setting=1"], ["no_such_setting"]),
        (
            ["--bootstrap-servers", "127.0.0.1:notaport"],
            ["bootstrap servers", "'127.0.0.1:notaport'"],
        ),
        (["--bootstrap-servers", "kafka:9092,:9093"], ["bootstrap servers", "':9093'"]),
        (["-X", "acks=1"], ["acks", "idempotence"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("-") else "",
)
def test_static_settings_fail_before_any_io(args: list[str], fragments: list[str]) -> None:
    result = run("relay", "--db-url", UNREACHABLE_DB, *args, timeout=30)
    assert_one_line_error(result, *fragments)
    assert "unreachable" not in result.stderr and "waiting" not in result.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_health_host(how: str, sqlite_url: str, kafka: str, relays: list[RelayProcess]) -> None:
    create_outbox_tables(sqlite_url)
    port = free_port()
    args = ["--db-url", sqlite_url, "--bootstrap-servers", kafka, "--health-port", str(port)]
    if how == "flag":
        relay = RelayProcess(*args, "--health-host", "127.0.0.1")
    else:
        relay = RelayProcess(*args, env=clean_env(OUTBOX_HEALTH_HOST="127.0.0.1"))
    relays.append(relay)
    relay.wait_for_log(f"health endpoints on http://127.0.0.1:{port}")
    relay.wait_for_log("lease acquired")
    assert http_status(port, "/healthz") == 200
    assert relay.terminate() == 0, relay.log


def test_health_host_default_is_every_interface() -> None:
    assert RelayConfig(db_url="sqlite://").health_host == "0.0.0.0"
    assert (
        RelayConfig.from_env(
            {"OUTBOX_DB_URL": "sqlite://", "OUTBOX_HEALTH_HOST": "::1"}
        ).health_host
        == "::1"
    )


def test_progress_line_while_publishing(sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = sa.create_engine(sqlite_url)
    outbox = Outbox()
    outbox.metadata.create_all(engine)
    Session = sessionmaker(engine)
    outbox.install(Session)
    try:
        for batch in range(3):
            with Session.begin() as session:
                for i in range(4 + batch):
                    outbox.emit(session, "E", {"i": i}, aggregate_type="p", aggregate_id=str(i))
        publisher = InMemoryPublisher()
        progress = ProgressObserver(interval=0)  # every report is "a minute later"
        with (
            caplog.at_level(logging.INFO, logger="outbox.relay"),
            Relay(RelayConfig(db_url=sqlite_url), publisher=publisher, observer=progress) as relay,
        ):
            published = relay.run_once()
        lines = [m for m in caplog.messages if m.startswith("published ")]
        assert published == len(publisher.messages) == 15
        assert lines and sum(int(line.split()[1]) for line in lines) == 15, lines
        assert all(
            " events in the last 0 s" in line or " event in the last 0 s" in line for line in lines
        )
    finally:
        outbox.uninstall(Session)
        engine.dispose()


def _outbox_head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from outbox.schema.migrate import SCRIPT_LOCATION

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def test_migrate_says_what_it_did(db_url: str) -> None:
    from outbox.schema.migrate import Target

    head = _outbox_head()
    # Every table the revisions own, starting with the outbox and its lease.
    tables = ", ".join(Target("events").tables)
    assert tables.startswith("events, events_lease")
    first = run("migrate", "--db-url", db_url, "--table", "events")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"created {tables} at revision {head}"
    again = run("migrate", "--db-url", db_url, "--table", "events")
    assert again.stdout.strip() == f"{tables} already at revision {head}"
    sql = run("migrate", "--db-url", db_url, "--sql")
    assert "already at" not in sql.stdout and "created" not in sql.stdout.splitlines()[-1]
