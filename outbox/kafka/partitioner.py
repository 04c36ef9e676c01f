"""The partitioner the Kafka publisher installs: kafka-python's default, with a hash cache."""

from __future__ import annotations

from typing import Any

from outbox.kafka._client import DefaultPartitioner, Partitioner, murmur2


class CachedHashPartitioner(Partitioner):  # type: ignore[misc]
    """kafka-python's default partitioner (murmur2 of the key, like the Java client), remembering
    the hashes of recent keys: murmur2 is pure Python here and costs more than the rest of
    `send`, while an outbox's keys (aggregate ids) recur. Same partition for every key."""

    def __init__(self, limit: int = 65536) -> None:
        self._limit = limit
        self._hashes: dict[bytes, int] = {}
        self._default = DefaultPartitioner()

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: bytes | None,
        cluster: Any,
    ) -> int:
        partitions = cluster.partitions_for_topic(topic) if serialized_key is not None else None
        if not partitions:  # no key, or an unknown topic: the default's behaviour and errors
            result: int = self._default.partition(
                topic, key, serialized_key, value, serialized_value, cluster
            )
            return result
        hashes = self._hashes
        h = hashes.get(serialized_key)  # type: ignore[arg-type]
        if h is None:
            if len(hashes) >= self._limit:
                hashes.clear()
            h = hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF  # type: ignore[index]
        ordered = sorted(partitions)
        return int(ordered[h % len(ordered)])


__all__ = ["CachedHashPartitioner"]
