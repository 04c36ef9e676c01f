"""kafka-python's `KafkaConsumer` behind the few calls the inbox makes, with no kafka types out.

Offsets live in the consumer's database, so auto-commit is off and `commit` only feeds lag
dashboards. The rebalance callbacks run on kafka-python's IO thread while `poll` waits: they do
no database IO, they only pause the new partitions and tell the runner, which claims them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from outbox.errors import BrokerUnavailableError, ConfigurationError
from outbox.inbox.decode import Record
from outbox.kafka._client import (
    ConsumerRebalanceListener,
    KafkaConsumer,
    OffsetAndMetadata,
    TopicPartition,
    kafka_errors,
)

log = logging.getLogger(__name__)

Partition = tuple[str, int]
Callback = Callable[[list[Partition]], None]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaRecordSource, assigned: Callback, revoked: Callback) -> None:
        self._source = source
        self._assigned = assigned
        self._revoked = revoked

    def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        self._revoked([(tp.topic, tp.partition) for tp in revoked])

    def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        parts = [(tp.topic, tp.partition) for tp in assigned]
        # Nothing is read from a new partition before the runner has claimed it and sought.
        self._source.pause(parts)
        self._assigned(parts)


class KafkaRecordSource:
    """A group member reading `topics`; records come out as `outbox.inbox.decode.Record`."""

    def __init__(
        self,
        bootstrap_servers: str,
        group: str,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers.split(","),
            "group_id": group,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_records": 200,
        }
        options.update(settings or {})
        try:
            self._consumer = KafkaConsumer(**options)
        except (TypeError, AssertionError, kafka_errors.KafkaConfigurationError) as exc:
            raise ConfigurationError(f"invalid consumer settings: {exc}") from None
        except kafka_errors.KafkaError as exc:
            raise BrokerUnavailableError(
                f"no broker reachable at {bootstrap_servers}: {exc}"
            ) from None

    def subscribe(self, topics: list[str], assigned: Callback, revoked: Callback) -> None:
        self._consumer.subscribe(topics=topics, listener=_Listener(self, assigned, revoked))

    def poll(self, timeout: float) -> dict[Partition, list[Record]]:
        batches = self._consumer.poll(timeout_ms=int(timeout * 1000))
        return {
            (tp.topic, tp.partition): [
                Record(
                    topic=tp.topic,
                    partition=tp.partition,
                    offset=r.offset,
                    key=r.key,
                    value=r.value,
                    headers=list(r.headers or ()),
                )
                for r in records
            ]
            for tp, records in batches.items()
        }

    def pause(self, partitions: Iterable[Partition]) -> None:
        tps = [TopicPartition(t, p) for t, p in partitions]
        if tps:
            self._consumer.pause(*tps)

    def resume(self, partitions: Iterable[Partition]) -> None:
        tps = [TopicPartition(t, p) for t, p in partitions]
        if tps:
            self._consumer.resume(*tps)

    def assignment(self) -> set[Partition]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def seek(self, partition: Partition, offset: int | None) -> None:
        """Read `partition` from `offset` next (None: from its beginning)."""
        tp = TopicPartition(*partition)
        if offset is None:
            self._consumer.seek_to_beginning(tp)
        else:
            self._consumer.seek(tp, offset)

    def highwater(self, partition: Partition) -> int | None:
        value = self._consumer.highwater(TopicPartition(*partition))
        return None if value is None else int(value)

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Tell Kafka the stored offsets, for lag dashboards only (failures are harmless)."""
        if not offsets:
            return
        try:
            self._consumer.commit_async(
                {TopicPartition(*tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
            )
        except kafka_errors.KafkaError as exc:
            log.debug("kafka offset commit skipped: %s", exc)

    def close(self) -> None:
        try:
            self._consumer.close(autocommit=False)
        except kafka_errors.KafkaError as exc:
            log.debug("consumer close: %s", exc)


def end_offsets(bootstrap_servers: str, partitions: Iterable[Partition]) -> dict[Partition, int]:
    """The high watermark of each partition (for `outbox inbox status`'s lag); raises
    `BrokerUnavailableError` when no broker answers."""
    wanted = [TopicPartition(t, p) for t, p in partitions]
    if not wanted:
        return {}
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers.split(","),
            enable_auto_commit=False,
            request_timeout_ms=5000,
            bootstrap_timeout_ms=5000,
        )
    except kafka_errors.KafkaError as exc:
        raise BrokerUnavailableError(f"no broker reachable at {bootstrap_servers}: {exc}") from None
    try:
        ends = consumer.end_offsets(wanted)
        return {(tp.topic, tp.partition): int(o) for tp, o in ends.items()}
    except kafka_errors.KafkaError as exc:
        raise BrokerUnavailableError(f"cannot read end offsets: {exc}") from None
    finally:
        consumer.close()
