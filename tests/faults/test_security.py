"""Security checks: table and schema names are validated and quoted, passwords never reach logs
or messages, Kafka SASL/SSL settings reach kafka-python unchanged."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from outbox.config import RelayConfig, mask_url
from outbox.demo.broker import free_port
from outbox.errors import ConfigurationError
from outbox.kafka import producer_settings
from outbox.write.outbox import Outbox
from tests.faults.checker import Ledger, assert_exact, check
from tests.faults.harness import FAST, read_back, unique_topic, wait_until
from tests.faults.test_startup import assert_one_line_error, run_relay
from tests.support import RelayProcess

pytestmark = pytest.mark.faults

SECRET = "Sup3r-s3cret"
INJECTIONS = [
    'outbox"; DROP TABLE victim; --',
    "outbox; DROP TABLE victim",
    "outbox' OR '1'='1",
    "out box",
    "../outbox",
]


@pytest.mark.parametrize("name", INJECTIONS)
@pytest.mark.parametrize("option", ["--table", "--schema"])
def test_injection_through_table_or_schema_names_is_refused(
    pg_url: str, option: str, name: str
) -> None:
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE victim (id int)")
        result = run_relay("--db-url", pg_url, option, name)
        assert_one_line_error(result, "invalid")
        with pytest.raises(ConfigurationError):
            Outbox(**({"table_name": name} if option == "--table" else {"schema": name}))
        assert sa.inspect(engine).has_table("victim")
    finally:
        engine.dispose()


def test_a_reserved_word_as_table_name_is_quoted_end_to_end(
    pg_url: str, kafka: str, relays: list[RelayProcess]
) -> None:
    topic = unique_topic("sec")
    outbox = Outbox(table_name="select")
    engine = sa.create_engine(pg_url)
    factory = sa.orm.sessionmaker(engine)
    outbox.metadata.create_all(engine)
    outbox.install(factory)
    ledger = Ledger()
    try:
        with factory.begin() as session:
            emitted = [
                (f"k{i % 3}", str(outbox.emit(session, "T", {"n": i}, aggregate_type="t",
                                              aggregate_id=f"k{i % 3}", topic=topic).id))
                for i in range(20)
            ]  # fmt: skip
        ledger.committed(emitted)
        relay = RelayProcess(
            "--db-url", pg_url, "--bootstrap-servers", kafka, "--table", "select", *FAST
        )
        relays.append(relay)

        def pending() -> int:
            with engine.connect() as conn:
                count = conn.execute(sa.select(sa.func.count()).select_from(outbox.table))
                return int(count.scalar_one())

        wait_until(lambda: pending() == 0, 30, "the relay to publish")
        assert relay.terminate() == 0, relay.log[-3000:]
        assert_exact(check(ledger.by_key, read_back(kafka, topic, ledger.total)))
    finally:
        outbox.uninstall(factory)
        engine.dispose()


def test_url_masking() -> None:
    url = f"postgresql+psycopg://app:{SECRET}@db.example:5432/shop"
    assert SECRET not in mask_url(url)
    assert "app:***@db.example" in mask_url(url)
    config = RelayConfig(db_url=url)
    assert SECRET not in config.masked_db_url
    assert SECRET not in repr(config.masked_db_url)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_passwords_never_appear_in_the_relay_logs(
    log_format: str, relays: list[RelayProcess]
) -> None:
    # Nothing listens on the port: the relay waits and logs the URL it waits for, many times
    # (the repeats are debug lines; every level is checked).
    url = f"postgresql+psycopg://app:{SECRET}@127.0.0.1:{free_port()}/shop"
    relay = RelayProcess("--db-url", url, "--log-format", log_format, "--log-level", "debug", *FAST)
    relays.append(relay)
    relay.wait_for_log("waiting for the database", times=3)
    assert relay.terminate() == 0, relay.log[-3000:]
    assert SECRET not in relay.log
    assert "app:***@127.0.0.1" in relay.log
    if log_format == "json":
        assert all(json.loads(line) for line in relay.lines)


def test_sasl_and_ssl_settings_reach_kafka_python_unchanged() -> None:
    given = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "relay",
        # Passwords that look like numbers or booleans are still passwords.
        "sasl_plain_password": "00123",
        "ssl_password": "true",
        "ssl_cafile": "/etc/kafka/ca.pem",
        "ssl_certfile": "/etc/kafka/client.pem",
        "ssl_keyfile": "/etc/kafka/client.key",
        "ssl_check_hostname": True,
    }
    environ = {"OUTBOX_DB_URL": "sqlite://"}
    environ.update(
        {
            f"OUTBOX_PRODUCER_{name.upper()}": str(value).lower()
            if isinstance(value, bool)
            else str(value)
            for name, value in given.items()
        }
    )
    config = RelayConfig.from_env(environ)
    settings = producer_settings("broker:9093", config.producer_config)
    assert {name: settings[name] for name in given} == given
