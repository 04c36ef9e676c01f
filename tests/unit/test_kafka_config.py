"""Producer settings reach kafka-python unchanged; kafka-python errors become outbox errors."""

from __future__ import annotations

import kafka.errors as kafka_errors
import pytest

from outbox.errors import BrokerUnavailableError, ConfigurationError, EventRejectedError
from outbox.kafka import DEFAULT_PRODUCER_SETTINGS, KafkaPublisher, producer_settings, translate

pytestmark = pytest.mark.unit

SASL_SSL = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "PLAIN",
    "sasl_plain_username": "relay",
    "sasl_plain_password": "s3cret",
    "ssl_cafile": "/etc/ssl/kafka-ca.pem",
    "compression_type": "gzip",
}


def test_security_settings_pass_through_unchanged() -> None:
    settings = producer_settings("broker-1:9093,broker-2:9093", SASL_SSL)
    assert settings["bootstrap_servers"] == "broker-1:9093,broker-2:9093"
    for name, value in SASL_SSL.items():
        assert settings[name] == value


def test_idempotence_and_acks_are_explicit_by_default() -> None:
    settings = producer_settings("localhost:9092")
    assert settings["enable_idempotence"] is True
    assert settings["acks"] == "all"
    assert settings["linger_ms"] == 0
    assert settings["max_block_ms"] <= 10_000
    assert settings["delivery_timeout_ms"] >= settings["request_timeout_ms"] + settings["linger_ms"]


def test_user_settings_override_defaults() -> None:
    settings = producer_settings("localhost:9092", {"linger_ms": 5, "max_block_ms": 1000})
    assert settings["linger_ms"] == 5
    assert settings["max_block_ms"] == 1000
    assert settings["acks"] == DEFAULT_PRODUCER_SETTINGS["acks"]


def test_client_id_is_passed() -> None:
    assert producer_settings("localhost:9092", client_id="relay-1")["client_id"] == "relay-1"


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"acks": 1}, "acks=1"),
        ({"acks": 0}, "acks=0"),
        ({"retries": 0}, "retries=0"),
        ({"max_in_flight_requests_per_connection": 10}, "max_in_flight"),
    ],
)
def test_conflict_with_idempotence_is_a_configuration_error(
    config: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        producer_settings("localhost:9092", config)


def test_conflict_is_refused_before_connecting() -> None:
    with pytest.raises(ConfigurationError, match="enable_idempotence"):
        KafkaPublisher("127.0.0.1:1", {"acks": 1})


def test_idempotence_off_explicitly_allows_weaker_acks() -> None:
    settings = producer_settings("localhost:9092", {"acks": 1, "enable_idempotence": False})
    assert settings["acks"] == 1
    assert settings["enable_idempotence"] is False


@pytest.mark.parametrize("acks", ["all", -1])
def test_idempotent_acks_spellings_are_accepted(acks: object) -> None:
    assert producer_settings("localhost:9092", {"acks": acks})["acks"] == acks


def test_unknown_setting_is_named() -> None:
    with pytest.raises(ConfigurationError, match=r"sasl_plain_user\b"):
        producer_settings("localhost:9092", {"sasl_plain_user": "x", "linger_ms": 1})


def test_unknown_setting_is_refused_before_connecting() -> None:
    with pytest.raises(ConfigurationError, match="lingerms"):
        KafkaPublisher("127.0.0.1:1", {"lingerms": 1})


def test_bootstrap_servers_inside_producer_config_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="bootstrap_servers"):
        producer_settings("localhost:9092", {"bootstrap_servers": "other:9092"})


def test_empty_bootstrap_servers_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        producer_settings("  ")


def test_caller_mapping_is_not_modified() -> None:
    config = {"linger_ms": 3}
    producer_settings("localhost:9092", config, client_id="x")
    assert config == {"linger_ms": 3}


@pytest.mark.parametrize(
    "exc",
    [
        kafka_errors.MessageSizeTooLargeError("too big"),
        kafka_errors.RecordListTooLargeError(),
        kafka_errors.InvalidTopicError(),
        kafka_errors.TopicAuthorizationFailedError(),
        kafka_errors.InvalidRecordError(),
        ValueError('Topic name "bad topic!" is illegal'),
        TypeError("All headers items must be (str, bytes) tuples"),
    ],
)
def test_permanent_errors_reject_the_event(exc: Exception) -> None:
    assert isinstance(translate(exc), EventRejectedError)


@pytest.mark.parametrize(
    "exc",
    [
        kafka_errors.KafkaTimeoutError("Failed to update metadata after 5.0 secs."),
        kafka_errors.NotLeaderForPartitionError(),
        kafka_errors.KafkaConnectionError(),
        kafka_errors.RequestTimedOutError(),
        kafka_errors.NotEnoughReplicasError(),
        kafka_errors.IllegalStateError("KafkaProducer already closed!"),
        kafka_errors.OutOfOrderSequenceNumberError(),
        kafka_errors.ClusterAuthorizationFailedError(),
        kafka_errors.SaslAuthenticationFailedError(),
        RuntimeError("unexpected"),
    ],
)
def test_transient_and_producer_errors_mean_unavailable(exc: Exception) -> None:
    assert isinstance(translate(exc), BrokerUnavailableError)
