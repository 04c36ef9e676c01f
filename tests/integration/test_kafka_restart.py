"""A broker that lost the producer id (the embedded broker restarted on the same port)."""

from __future__ import annotations

import uuid

import pytest

from outbox.demo.broker import start_broker
from outbox.errors import PublishError
from outbox.kafka import KafkaPublisher
from outbox.relay.publisher import Message

pytestmark = pytest.mark.integration


def test_new_producer_at_once_when_the_broker_forgot_the_producer_id() -> None:
    broker = start_broker()
    port = broker.port
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    publisher = KafkaPublisher(broker.bootstrap_servers)
    try:
        assert publisher.publish([Message(topic, b"k", b"before")]).wait(10) == [None]
        broker.stop()
        broker = start_broker(port=port)
        # A topic this producer never had an acknowledgement on: kafka-python alone would take
        # the broker's "unknown producer id" for retention and resend until its delivery
        # timeout (2 minutes), so each wait below would time out.
        outcomes: list[PublishError | None] = []
        for attempt in range(5):
            outcomes = publisher.publish([Message(f"{topic}-new", b"k", b"%d" % attempt)]).wait(15)
            if outcomes == [None]:
                break
            assert isinstance(outcomes[0], PublishError)
            assert "not acknowledged within" not in str(outcomes[0]), outcomes
            assert "UnknownProducerId" in str(outcomes[0]), outcomes
        assert outcomes == [None]
        assert attempt <= 2, attempt
    finally:
        publisher.close(1)
        broker.stop()
