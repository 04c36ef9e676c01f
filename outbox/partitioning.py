"""The partition number of an event: stable across processes, languages and databases.

``partition_of(key) = crc32(utf8(key)) % PARTITIONS`` with CRC-32 of ISO 3309 (zlib's
polynomial): Python's ``zlib.crc32``, MySQL/MariaDB's ``CRC32()``, PostgreSQL 18's
``crc32(bytea)``, Java's ``CRC32`` and Go's ``crc32.ChecksumIEEE`` all give the same number.
Python's ``hash(str)`` (salted per process) and PostgreSQL's ``hashtext`` (changed between
versions) do not. The key is the *effective* key, the Kafka record key the relay sends:
the event's explicit key, else its aggregate id.

``PARTITIONS`` never changes for a table with rows in it: a different count would put a key's
old and new events in different partitions, and two relays could then publish them out of
order. (A change would need a drain in single-active mode first.)
"""

from __future__ import annotations

import zlib

#: Virtual partitions per table: the unit a relay owns in partitioned mode.
PARTITIONS = 64


def partition_of(key: str) -> int:
    """The partition of an effective key (`PendingEvent.partition_key`)."""
    return zlib.crc32(key.encode("utf-8")) % PARTITIONS


def effective_key(key: str | None, aggregate_id: str) -> str:
    """The key Kafka partitions by, and the relay orders by: the key, else the aggregate id."""
    return key if key is not None else aggregate_id


__all__ = ["PARTITIONS", "effective_key", "partition_of"]
