"""Scenario 9: start-up against an unreachable database or broker (wait with backoff, say so,
not ready meanwhile, then work), a wrong password or a missing table (one clear line, non-zero
exit). Never a traceback, never a silent hang, never a password in the output."""

from __future__ import annotations

import subprocess
import time

import pytest
import sqlalchemy as sa

from outbox.demo.broker import free_port
from tests.faults.checker import Ledger, assert_exact, check, report
from tests.faults.harness import (
    FAST,
    App,
    ProxiedBroker,
    read_back,
    relay_env,
    unique_topic,
    wait_until,
)
from tests.faults.proxy import TcpProxy
from tests.support import MYSQL_BASE, OUTBOX, RelayProcess, http_status

pytestmark = pytest.mark.faults

SECRET = "Sup3r-s3cret"


def seed(app: App, ledger: Ledger, count: int = 50) -> None:
    with app.factory.begin() as session:
        emitted = [(f"k{i % 5}", app.emit(session, f"k{i % 5}", i)) for i in range(count)]
    ledger.committed(emitted)


def watch_not_ready(relay: RelayProcess, port: int, text: str) -> set[int]:
    """Wait for two backoff messages about `text` and an answer from /readyz; return the
    answers meanwhile (0 is "not listening yet", before the health server is up)."""
    answers: set[int] = set()
    deadline = time.monotonic() + 30
    while relay.count(text) < 2 or not answers - {0}:
        assert relay.running(), relay.log[-3000:]
        assert time.monotonic() < deadline, f"no repeated {text!r}:\n{relay.log[-3000:]}"
        answers.add(http_status(port, "/readyz"))
        time.sleep(0.2)
    return answers


def test_database_unreachable_at_start_then_appears(
    pg_url: str, kafka: str, relays: list[RelayProcess]
) -> None:
    topic = unique_topic("s9db")
    app = App(pg_url, topic)
    ledger = Ledger()
    seed(app, ledger)
    url = sa.make_url(pg_url)
    try:
        with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
            proxy.set_mode("refuse")
            relay_url = url.set(port=proxy.port, password=SECRET)
            health = free_port()
            relay = RelayProcess(
                "--db-url", relay_url.render_as_string(hide_password=False),
                "--bootstrap-servers", kafka, *FAST, "--health-port", str(health),
            )  # fmt: skip
            relays.append(relay)
            answers = watch_not_ready(relay, health, "waiting for the database")
            assert http_status(health, "/healthz") == 200
            proxy.set_mode("forward")
            waited = wait_until(lambda: app.pending() == 0, 30, "the relay to start publishing")
            assert relay.terminate() == 0, relay.log[-3000:]
        figures = check(ledger.by_key, read_back(kafka, topic, ledger.total))
        report("s9-database-late", figures, readyz_while_waiting=sorted(answers))
        assert_exact(figures)
        assert answers - {0} == {503}, answers
        assert waited < 30
        assert SECRET not in relay.log
        assert "Traceback" not in relay.log
    finally:
        app.close()


def test_broker_unreachable_at_start_then_appears(
    pg_url: str, proxied_kafka: ProxiedBroker, relays: list[RelayProcess]
) -> None:
    topic = unique_topic("s9broker")
    app = App(pg_url, topic)
    ledger = Ledger()
    seed(app, ledger)
    proxied_kafka.proxy.set_mode("refuse")
    health = free_port()
    try:
        relay = RelayProcess(
            "--db-url", pg_url, "--bootstrap-servers", proxied_kafka.bootstrap_servers, *FAST,
            "--health-port", str(health),
        )  # fmt: skip
        relays.append(relay)
        answers = watch_not_ready(relay, health, "waiting for the broker")
        proxied_kafka.proxy.set_mode("forward")
        wait_until(lambda: app.pending() == 0, 30, "the relay to start publishing")
        assert relay.terminate() == 0, relay.log[-3000:]
        figures = check(
            ledger.by_key, read_back(proxied_kafka.bootstrap_servers, topic, ledger.total)
        )
        report("s9-broker-late", figures, readyz_while_waiting=sorted(answers))
        assert_exact(figures)
        assert answers - {0} == {503}, answers
        assert "Traceback" not in relay.log
    finally:
        app.close()


def run_relay(*args: str) -> subprocess.CompletedProcess[str]:
    # A hang would fail here: the relay must exit on its own.
    return subprocess.run(
        [OUTBOX, "relay", *args], capture_output=True, text=True, timeout=60, env=relay_env()
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    output = result.stderr + result.stdout
    assert result.returncode != 0, output
    assert "Traceback" not in output
    assert SECRET not in output
    errors = [line for line in result.stderr.splitlines() if "outbox: error:" in line]
    assert len(errors) == 1 and fragment in errors[0], output


def test_wrong_password_exits_with_one_clear_line(kafka: str) -> None:
    url = sa.make_url(MYSQL_BASE).set(password=SECRET).render_as_string(hide_password=False)
    result = run_relay("--db-url", url, "--bootstrap-servers", kafka, *FAST)
    assert_one_line_error(result, "Access denied")


def test_missing_table_exits_with_one_clear_line(pg_url: str, kafka: str) -> None:
    result = run_relay("--db-url", pg_url, "--bootstrap-servers", kafka, *FAST)
    assert_one_line_error(result, "outbox migrate")
