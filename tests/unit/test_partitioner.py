"""The relay's own partition choice equals kafka-python's DefaultPartitioner for every key."""

from __future__ import annotations

import random

import pytest

from outbox.kafka._client import DefaultPartitioner
from outbox.kafka._client import murmur2 as kafka_murmur2
from outbox.kafka.partitioner import (
    CachedHashPartitioner,
    PartitionChooser,
    key_hash,
    murmur2,
    partition_of,
)


class Cluster:
    """The two ClusterMetadata lookups the partitioners read, for a fixed topic layout."""

    def __init__(self, partitions: dict[str, set[int]]) -> None:
        self._partitions = partitions

    def topics(self) -> set[str]:
        return set(self._partitions)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self._partitions.get(topic)

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions.get(topic) or set()


class Producer:
    def __init__(self, cluster: Cluster) -> None:
        self._metadata = cluster


def keys() -> list[bytes]:
    rng = random.Random(17)
    found = [b"", b"a", b"ab", b"abc", b"abcd", b"abcde", b"\x00", b"\xff" * 7, b"\x80\x7f"]
    found += [f"order-{i}".encode() for i in range(2000)]
    found += [s.encode() for s in ("café", "Ωμέγα-7", "注文-42", "🙂🙃", "ñ" * 33, " ")]
    found += [rng.randbytes(rng.randrange(0, 64)) for _ in range(3000)]
    found += [rng.randbytes(n) for n in range(0, 300, 7)]
    return found


@pytest.mark.parametrize("key", keys()[:40] + keys()[-40:])
def test_murmur2_matches_kafka_python(key: bytes) -> None:
    assert murmur2(key) == kafka_murmur2(key)


def test_murmur2_matches_kafka_python_for_many_keys() -> None:
    mismatched = [k for k in keys() if murmur2(k) != kafka_murmur2(k)]
    assert mismatched == []


@pytest.mark.parametrize("count", [1, 2, 3, 5, 6, 7, 12, 16, 31, 100])
def test_partition_matches_default_partitioner(count: int) -> None:
    default = DefaultPartitioner()
    # Partition ids need not be 0..n-1 for the sort to matter: leave gaps.
    partitions = {p * 3 + 1 for p in range(count)}
    cluster = Cluster({"orders": partitions})
    choose = PartitionChooser.for_call(Producer(cluster))
    cached = CachedHashPartitioner()
    for key in keys():
        expected = default.partition("orders", key, key, b"v", b"v", cluster)
        assert choose("orders", key) == expected, key
        assert partition_of(key, sorted(partitions)) == expected, key
        assert cached.partition("orders", key, key, b"v", b"v", cluster) == expected, key


def test_cached_hash_is_stable_and_positive() -> None:
    for key in keys()[:500]:
        first = key_hash(key)
        assert first == key_hash(key) == kafka_murmur2(key) & 0x7FFFFFFF
        assert first >= 0


def test_no_key_or_unknown_topic_is_left_to_kafka_python() -> None:
    choose = PartitionChooser.for_call(Producer(Cluster({"orders": {0, 1}})))
    assert choose("orders", None) is None
    assert choose("unknown", b"k") is None
    assert PartitionChooser.for_call(object())("orders", b"k") is None


def test_partitions_are_read_once_per_call() -> None:
    cluster = Cluster({"orders": {0, 1, 2}})
    choose = PartitionChooser.for_call(Producer(cluster))
    before = choose("orders", b"order-1")
    cluster._partitions["orders"] = {0}
    assert choose("orders", b"order-1") == before  # the call's snapshot
    assert PartitionChooser.for_call(Producer(cluster))("orders", b"order-1") == 0
