"""The Kafka partition of a keyed message, computed by the relay and passed to `send`.

kafka-python's default partitioner (murmur2 of the key, like the Java client) is pure Python
and runs once per message with a `sorted()` of the topic's partitions; an outbox's keys
(aggregate ids) recur, so the relay hashes each key once (`key_hash`, a bounded cache) and
sorts a topic's partitions once per `publish` call (`PartitionChooser`). Same partition as
kafka-python's `DefaultPartitioner` for every key (pinned by tests/unit/test_partitioner.py);
messages without a key, and topics whose metadata is not known yet, are left to kafka-python.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from outbox.kafka._client import DefaultPartitioner, Partitioner

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 as Kafka's Java client computes it (`Utils.murmur2`), as the unsigned 32-bit
    int kafka-python's returns: the 4-byte words read with one `int.from_bytes` each."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    end = length & ~3
    for i in range(0, end, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra:
        if extra == 3:
            h ^= data[end + 2] << 16
        if extra >= 2:
            h ^= data[end + 1] << 8
        h = ((h ^ data[end]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


#: Hashes of recent keys; cleared when it reaches `_HASH_LIMIT` (bounded memory).
_hashes: dict[bytes, int] = {}
_HASH_LIMIT = 65536


def key_hash(key: bytes) -> int:
    """`murmur2(key) & 0x7FFFFFFF`, the positive hash the partition is taken from, cached."""
    h = _hashes.get(key)
    if h is None:
        if len(_hashes) >= _HASH_LIMIT:
            _hashes.clear()
        h = _hashes[key] = murmur2(key) & 0x7FFFFFFF
    return h


def partition_of(key: bytes, partitions: list[int]) -> int:
    """The partition of `key` among `partitions` (sorted), as kafka-python's default picks."""
    return partitions[key_hash(key) % len(partitions)]


class PartitionChooser:
    """Per `publish` call: ``choose = PartitionChooser.for_call(producer)``, then
    ``choose(topic, key)`` for each message, the partition to pass to `send` (None: let
    kafka-python pick, for a message without a key or a topic it has no metadata for yet)."""

    @staticmethod
    def for_call(producer: Any) -> Callable[[str, bytes | None], int | None]:
        metadata = getattr(producer, "_metadata", None)
        topics: dict[str, list[int] | None] = {}

        def choose(topic: str, key: bytes | None) -> int | None:
            if key is None or metadata is None:
                return None
            try:
                ordered = topics[topic]
            except KeyError:
                known = metadata.partitions_for_topic(topic)
                ordered = topics[topic] = sorted(known) if known else None
            if ordered is None:
                return None
            h = _hashes.get(key)
            if h is None:
                h = key_hash(key)
            return ordered[h % len(ordered)]

        return choose


class CachedHashPartitioner(Partitioner):  # type: ignore[misc]
    """kafka-python's default partitioner with the cached hash: what kafka-python uses for the
    messages the relay leaves to it (a topic whose metadata arrives inside `send`)."""

    def __init__(self) -> None:
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
        return partition_of(bytes(serialized_key), sorted(partitions))  # type: ignore[arg-type]


__all__ = ["CachedHashPartitioner", "PartitionChooser", "key_hash", "murmur2", "partition_of"]
