"""KafkaPublisher against a real broker: delivery, rejections, outages and close."""

from __future__ import annotations

import gc
import logging
import os
import time
import uuid
from collections.abc import Iterator

import pytest

from outbox import kafka as outbox_kafka
from outbox.demo.broker import free_port, start_broker
from outbox.errors import BrokerUnavailableError, EventRejectedError
from outbox.kafka import KafkaPublisher
from outbox.relay.publisher import Delivery, Message, Publisher
from tests.support import consume

pytestmark = pytest.mark.integration

# Small bounds so that outage tests finish in seconds.
FAST_FAILURE = {
    "max_block_ms": 1000,
    "request_timeout_ms": 1000,
    "delivery_timeout_ms": 2000,
    "bootstrap_timeout_ms": 2000,
    "reconnect_backoff_max_ms": 200,
}


def new_topic() -> str:
    return f"test-publisher-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def publisher(kafka: str) -> Iterator[KafkaPublisher]:
    pub = KafkaPublisher(kafka, client_id="test-publisher")
    try:
        yield pub
    finally:
        pub.close(timeout=5)


def test_is_a_publisher(publisher: KafkaPublisher) -> None:
    assert isinstance(publisher, Publisher)
    assert isinstance(publisher.publish([]), Delivery)
    assert publisher.publish([]).wait(1) == []


def test_messages_arrive_intact_and_in_order_per_key(publisher: KafkaPublisher, kafka: str) -> None:
    topic = new_topic()
    keys = [b"order-1", b"order-2", b"order-3"]
    messages = [
        Message(
            topic,
            keys[i % 3],
            f'{{"n": {i}}}'.encode(),
            [("event_id", str(i).encode()), ("event_type", b"OrderPlaced")],
            1_700_000_000_000 + i,
        )
        for i in range(30)
    ]
    assert publisher.publish(messages).wait(30) == [None] * 30

    received = consume(kafka, topic, expected=30)
    assert len(received) == 30
    by_value = {r.value: r for r in received}
    for i, message in enumerate(messages):
        got = by_value[message.value]
        assert got.key == message.key
        assert got.headers == {"event_id": str(i).encode(), "event_type": b"OrderPlaced"}
        assert got.timestamp_ms == message.timestamp_ms
    for key in keys:
        in_offset_order = sorted((r for r in received if r.key == key), key=lambda r: r.offset)
        assert len({r.partition for r in in_offset_order}) == 1
        assert [r.value for r in in_offset_order] == [m.value for m in messages if m.key == key]


def test_key_and_value_may_be_none(publisher: KafkaPublisher, kafka: str) -> None:
    topic = new_topic()
    outcomes = publisher.publish(
        [Message(topic, None, b"no key"), Message(topic, b"tombstone", None)]
    ).wait(30)
    assert outcomes == [None, None]
    received = consume(kafka, topic, expected=2)
    assert {(r.key, r.value) for r in received} == {(None, b"no key"), (b"tombstone", None)}


def test_too_large_message_is_rejected_and_holds_back_only_its_key(kafka: str) -> None:
    topic = new_topic()
    pub = KafkaPublisher(kafka, {"max_request_size": 10_000})
    try:
        messages = [
            Message(topic, b"k", b"small-1"),
            Message(topic, b"k", b"x" * 20_000),
            Message(topic, b"k", b"small-2"),
            Message(topic, b"j", b"other-key"),
        ]
        outcomes = pub.publish(messages).wait(30)
    finally:
        pub.close(timeout=5)
    assert outcomes[0] is None
    assert isinstance(outcomes[1], EventRejectedError)
    assert not outcomes[1].retriable
    # Not sent: it must not overtake the failed event of its key (the Publisher contract).
    assert outcomes[2] is outcomes[1]
    assert outcomes[3] is None
    received = consume(kafka, topic, expected=2, settle=0.5)
    assert sorted(r.value for r in received if r.value is not None) == [b"other-key", b"small-1"]


def test_invalid_topic_is_rejected(publisher: KafkaPublisher, kafka: str) -> None:
    topic = new_topic()
    outcomes = publisher.publish(
        [Message("bad topic!", b"k", b"v"), Message(topic, b"k", b"fine")]
    ).wait(30)
    assert isinstance(outcomes[0], EventRejectedError)
    assert outcomes[1] is None
    assert [r.value for r in consume(kafka, topic, expected=1)] == [b"fine"]


def test_unreachable_broker_fails_construction_quickly() -> None:
    servers = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=servers):
        KafkaPublisher(servers, FAST_FAILURE)
    assert time.monotonic() - started < 30  # bounded: never hangs


def test_outage_gives_unavailable_outcomes_and_never_raises() -> None:
    broker = start_broker()
    pub = KafkaPublisher(broker.bootstrap_servers, FAST_FAILURE)
    try:
        known_topic = new_topic()
        assert pub.publish([Message(known_topic, b"k", b"before")]).wait(30) == [None]
        assert pub.reachable(timeout=5)
        broker.stop()

        delivery = pub.publish(
            [Message(known_topic, b"k", b"during"), Message(new_topic(), b"k", b"unknown topic")]
        )
        outcomes = delivery.wait(30)
        assert len(outcomes) == 2
        assert all(isinstance(o, BrokerUnavailableError) for o in outcomes), outcomes
        assert all(o is not None and o.retriable for o in outcomes)
        assert not pub.reachable(timeout=0.5)
    finally:
        pub.close(timeout=1)
        broker.stop()


def test_wait_timeout_reports_unresolved_messages_as_unavailable() -> None:
    broker = start_broker()
    pub = KafkaPublisher(broker.bootstrap_servers, {**FAST_FAILURE, "delivery_timeout_ms": 20_000})
    try:
        topic = new_topic()
        assert pub.publish([Message(topic, b"k", b"warm-up")]).wait(30) == [None]
        broker.stop()
        # The producer keeps retrying for 20 s; a 0.5 s wait gives up on the message first.
        outcomes = pub.publish([Message(topic, b"k", b"stuck")]).wait(0.5)
        assert len(outcomes) == 1
        assert isinstance(outcomes[0], BrokerUnavailableError)
    finally:
        pub.close(timeout=0)
        broker.stop()


def test_close_flushes_what_was_published(kafka: str) -> None:
    topic = new_topic()
    pub = KafkaPublisher(kafka)
    pub.publish([Message(topic, str(i % 5).encode(), f"m{i}".encode()) for i in range(200)])
    pub.close(timeout=30)
    received = consume(kafka, topic, expected=200)
    assert sorted(r.value for r in received if r.value is not None) == sorted(
        f"m{i}".encode() for i in range(200)
    )


def test_abort_drops_what_is_buffered_and_the_publisher_goes_on(kafka: str) -> None:
    """What a relay that lost its lease does: nothing buffered may reach the broker."""
    topic = new_topic()
    # A long linger keeps the records in the producer's buffer, as a stalled broker would.
    with KafkaPublisher(kafka) as plain:  # the topic exists before the test starts
        assert plain.publish([Message(topic, b"k", b"before")]).wait(30) == [None]
    pub = KafkaPublisher(kafka, {"linger_ms": 30000, "batch_size": 1 << 20})
    try:
        buffered = pub.publish([Message(topic, b"k", f"dropped {i}".encode()) for i in range(50)])
        assert not buffered.done()
        pub.abort()
        outcomes = buffered.wait(5)
        assert len(outcomes) == 50
        assert all(isinstance(o, BrokerUnavailableError) for o in outcomes), outcomes[:3]
        after = pub.publish([Message(topic, b"k", b"after")])
        pub.close(timeout=30)  # flushes "after" despite the linger
        assert after.wait(1) == [None]
    finally:
        pub.close(timeout=5)
    received = consume(kafka, topic, expected=2, settle=2.0)
    assert [r.value for r in received] == [b"before", b"after"]


def test_publish_after_close_gives_unavailable_outcomes(kafka: str) -> None:
    pub = KafkaPublisher(kafka)
    pub.close(timeout=5)
    pub.close(timeout=5)  # closing twice is harmless
    outcomes = pub.publish([Message(new_topic(), b"k", b"v")]).wait(1)
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], BrokerUnavailableError)
    assert not pub.reachable()


def test_reachable_with_a_running_broker(publisher: KafkaPublisher) -> None:
    assert publisher.reachable(timeout=5)


def test_missing_crc32c_is_warned_about(
    kafka: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(outbox_kafka._client, "crc32c_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="outbox.kafka"):
        KafkaPublisher(kafka).close(timeout=5)
    assert any("crc32c" in r.getMessage() for r in caplog.records)


def test_crc32c_present_means_no_warning(kafka: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="outbox.kafka"):
        KafkaPublisher(kafka).close(timeout=5)
    assert not any("crc32c" in r.getMessage() for r in caplog.records)


def _open_descriptors() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def test_publishers_leave_no_descriptor_open(kafka: str) -> None:
    # The suite ignores unclosed-socket warnings (kafka-python leaves some failed connects to
    # the garbage collector), so the publisher's own hygiene is checked here, with a live broker.
    topic = new_topic()
    with KafkaPublisher(kafka) as warm_up:  # first imports and the topic's creation
        assert warm_up.publish([Message(topic, b"k", b"warm-up")]).wait(30) == [None]
    before = _open_descriptors()
    for i in range(10):
        pub = KafkaPublisher(kafka)
        assert pub.publish([Message(topic, b"k", f"m{i}".encode())]).wait(30) == [None]
        assert pub.reachable(timeout=5)
        pub.close(timeout=5)
    assert _open_descriptors() <= before
