"""Log formats, password masking and the state-change observer."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from outbox.errors import ConfigurationError
from outbox.ops.logs import KafkaClientFilter, LoggingObserver, configure_logging, mask_text
from outbox.relay.observer import RelayObserver

SECRET = "s3cr3t"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Restores the root logger after each test that configures it."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logging.getLogger("kafka").level)
    out = io.StringIO()
    yield out
    for handler in list(root.handlers):
        if handler not in saved[1]:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(saved[0])
    logging.getLogger("kafka").setLevel(saved[2])


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "connect postgresql+psycopg://app:s3cr3t@db:5432/shop failed",
            "connect postgresql+psycopg://app:***@db:5432/shop failed",
        ),
        ("mysql+pymysql://root:s3cr3t@h/db", "mysql+pymysql://root:***@h/db"),
        ("a://u:p@ss:w@rd@host/x and b://v:s3cr3t@h", "a://u:***@host/x and b://v:***@h"),
        ("postgresql://:s3cr3t@host/db", "postgresql://:***@host/db"),
        # No password: untouched.
        ("postgresql://app@db/shop", "postgresql://app@db/shop"),
        ("http://relay:8080/healthz", "http://relay:8080/healthz"),
        ("http://relay:8080/a@b", "http://relay:8080/a@b"),
        ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
        ("no url here: user:pass@host", "no url here: user:pass@host"),
    ],
)
def test_mask_text(text: str, expected: str) -> None:
    assert mask_text(text) == expected


def test_text_format_masks_messages_args_extras_and_tracebacks(stream: io.StringIO) -> None:
    configure_logging("text", "DEBUG", stream=stream)
    log = logging.getLogger("outbox.test")
    url = f"postgresql://app:{SECRET}@db/shop"
    log.info("in message postgresql://app:%s@db/shop", SECRET)
    log.info("as argument %s", url)
    log.info("as parsed URL %r", make_url(url))
    log.info("as extra", extra={"db_url": url})
    try:
        raise RuntimeError(f"cannot connect to {url}")
    except RuntimeError:
        log.exception("with traceback")
    output = stream.getvalue()
    assert SECRET not in output
    assert output.count("app:***@db/shop") == 5
    first = lines(stream)[0]
    assert " INFO    outbox.test: in message postgresql://app:***@db/shop" in first
    assert "as extra db_url=postgresql://app:***@db/shop" in output


def test_json_lines_shape(stream: io.StringIO) -> None:
    configure_logging("json", "INFO", stream=stream)
    log = logging.getLogger("outbox.relay")
    log.debug("not shown")
    log.warning("broker %s down", "kafka:9092", extra={"component": "broker", "attempt": 3})
    try:
        raise ValueError(f"bad url mysql://u:{SECRET}@h/d")
    except ValueError:
        log.error("failed", exc_info=True)
    records = [json.loads(line) for line in lines(stream)]
    assert len(records) == 2
    first, second = records
    assert set(first) == {"ts", "level", "logger", "message", "component", "attempt"}
    assert first["level"] == "WARNING"
    assert first["logger"] == "outbox.relay"
    assert first["message"] == "broker kafka:9092 down"
    assert (first["component"], first["attempt"]) == ("broker", 3)
    assert first["ts"].endswith("Z")
    assert first["ts"][10] == "T"
    assert "ValueError: bad url mysql://u:***@h/d" in second["exc_info"]
    assert SECRET not in stream.getvalue()


def test_unserializable_extra_becomes_text(stream: io.StringIO) -> None:
    configure_logging("json", stream=stream)
    logging.getLogger("outbox.x").info("obj", extra={"thing": object()})
    assert json.loads(lines(stream)[0])["thing"].startswith("<object object")


def test_configure_twice_replaces_the_handler(stream: io.StringIO) -> None:
    configure_logging("text", stream=stream)
    configure_logging("json", stream=stream)
    logging.getLogger("outbox.x").info("once")
    assert len(lines(stream)) == 1
    assert json.loads(lines(stream)[0])["message"] == "once"


def test_kafka_chatter_is_quiet_at_info(stream: io.StringIO) -> None:
    configure_logging("text", "INFO", stream=stream)
    logging.getLogger("kafka.conn").info("connecting")
    logging.getLogger("kafka.conn").warning("node down")
    assert len(lines(stream)) == 1
    assert "node down" in lines(stream)[0]


def reconnect_errors(count: int) -> None:
    """What kafka-python logs per failed reconnect while a broker is unreachable."""
    log = logging.getLogger("kafka.conn")
    for _ in range(count):
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError:
            log.error("<BrokerConnection node_id=1>: Error receiving network data", exc_info=True)


def test_kafka_errors_are_rate_limited_one_line_summaries(stream: io.StringIO) -> None:
    handler = configure_logging("text", "INFO", stream=stream)
    reconnect_errors(500)
    logging.getLogger("outbox.relay").warning("broker unreachable")
    assert len(lines(stream)) == 2, stream.getvalue()
    assert "Traceback" not in stream.getvalue()
    first = lines(stream)[0]
    assert "ERROR" in first and "kafka-python: <BrokerConnection node_id=1>" in first
    assert "(ConnectionResetError: [Errno 104] Connection reset by peer)" in first
    assert "broker unreachable" in lines(stream)[1]

    kafka_filter = next(f for f in handler.filters if isinstance(f, KafkaClientFilter))
    kafka_filter._next = 0.0  # the interval has passed
    reconnect_errors(1)
    assert len(lines(stream)) == 3
    assert "[499 more kafka-python records held back in the last 60s" in lines(stream)[2]
    assert "Traceback" not in stream.getvalue()


def test_kafka_details_at_debug(stream: io.StringIO) -> None:
    configure_logging("text", "DEBUG", stream=stream)
    reconnect_errors(3)
    logging.getLogger("kafka.conn").debug("connecting")
    assert stream.getvalue().count("Traceback") == 3
    assert stream.getvalue().count("Error receiving network data") == 3
    assert "connecting" in stream.getvalue()


@pytest.mark.parametrize(
    ("fmt", "level", "fragment"),
    [("xml", "INFO", "unknown log format"), ("text", "LOUD", "unknown log level")],
)
def test_bad_settings_are_configuration_errors(fmt: str, level: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        configure_logging(fmt, level)  # type: ignore[arg-type]


# --- LoggingObserver -------------------------------------------------------------------------


def observed(caplog: pytest.LogCaptureFixture) -> LoggingObserver:
    caplog.set_level(logging.INFO, logger="outbox.test.observer")
    return LoggingObserver(logging.getLogger("outbox.test.observer"))


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records]


def test_observer_logs_state_changes_once(caplog: pytest.LogCaptureFixture) -> None:
    observer = observed(caplog)
    assert isinstance(observer, RelayObserver)
    observer.state("database", True)
    observer.state("broker", True)
    for _ in range(50):
        observer.state("broker", False, "connection refused")
        observer.published("orders", 10, [0.01] * 10)
        observer.publish_failed("orders", "unavailable", 10)
        observer.batch(10, 0.1)
        observer.backlog(10, 1.0)
    observer.state("broker", True)
    observer.state("broker", True)
    assert messages(caplog) == [
        ("INFO", "database reachable"),
        ("INFO", "broker reachable"),
        ("WARNING", "broker unreachable: connection refused"),
        ("INFO", "broker reachable again: down for 0.0s"),
    ]
    assert caplog.records[2].__dict__["component"] == "broker"


def test_observer_reminds_of_a_lasting_outage_with_the_backlog(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="outbox.test.observer")
    observer = LoggingObserver(logging.getLogger("outbox.test.observer"), reminder_interval=3600)
    observer.state("broker", True)
    observer.backlog(7, 1.0)
    observer.state("broker", False, "waiting for the broker at k:9092")
    for _ in range(100):
        observer.state("broker", False, "waiting for the broker at k:9092")
        observer.backlog(7, 1.0)
    assert len(caplog.records) == 2  # no reminder within the interval
    observer.reminder_interval = 0.0
    observer.backlog(9, 2.0)
    observer.state("broker", True, "down for 21.0s since the first unacknowledged send")
    reminder, back = messages(caplog)[2:]
    assert reminder[0] == "WARNING"
    assert reminder[1].startswith("broker still unreachable after ")
    assert reminder[1].endswith("s, 9 events pending")
    assert back[0] == "INFO"
    assert back[1] == "broker reachable again: down for 21.0s since the first unacknowledged send"


def test_observer_logs_lease_changes(caplog: pytest.LogCaptureFixture) -> None:
    observer = observed(caplog)
    observer.lease(False)
    observer.lease(False)
    observer.lease(True)
    observer.lease(True)
    observer.lease(False)
    assert messages(caplog) == [
        ("INFO", "another relay holds the lease: standing by"),
        ("INFO", "lease acquired: this relay is now active"),
        ("WARNING", "lease lost: standing by"),
    ]


def test_observer_logs_one_line_per_parking(caplog: pytest.LogCaptureFixture) -> None:
    observer = observed(caplog)
    observer.parked("orders", 3)
    observer.parked("users", 1, "MessageSizeTooLargeError: too big")
    assert messages(caplog) == [
        (
            "WARNING",
            "parked 3 events for topic orders after a permanent rejection (see `outbox parked`)",
        ),
        (
            "WARNING",
            "parked 1 event for topic users after a permanent rejection (see `outbox parked`)"
            ": MessageSizeTooLargeError: too big",
        ),
    ]
