"""The partition number the write side stores: crc32 of the effective key's UTF-8 bytes mod 64,
the same number MariaDB's own CRC32() gives, on every backend and for every kind of event."""

from __future__ import annotations

import zlib

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from outbox.partitioning import PARTITIONS, partition_of
from outbox.write.outbox import Outbox
from tests.support import write_engine

pytestmark = pytest.mark.integration

KEYS = ["a", "abc", "order-1", "ключ-7", "名前", "x" * 255, "00123", "😀 emoji"]


def test_partition_of_is_crc32_mod_64() -> None:
    assert partition_of("abc") == 891568578 % 64  # zlib.crc32(b"abc"), PostgreSQL 18 crc32
    for key in KEYS:
        assert partition_of(key) == zlib.crc32(key.encode()) % PARTITIONS


def _write(url: str) -> tuple[sa.Engine, Outbox]:
    engine = write_engine(url)
    outbox = Outbox()
    outbox.metadata.create_all(engine)
    maker = sessionmaker(engine)
    outbox.install(maker)
    with maker.begin() as session:
        for i, key in enumerate(KEYS):
            # Explicit keys, and events keyed by their aggregate id only.
            outbox.emit(session, "Placed", {"i": i}, aggregate_type="order", aggregate_id=key)
            outbox.emit(session, "Keyed", None, aggregate_type="o", aggregate_id="x", key=key)
    outbox.uninstall(maker)
    return engine, outbox


def test_every_written_row_stores_its_effective_keys_partition(db_url: str) -> None:
    engine, outbox = _write(db_url)
    t = outbox.table
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.key, t.c.aggregateid, t.c.p_partition)).all()
    finally:
        engine.dispose()
    assert len(rows) == 2 * len(KEYS)
    for key, aggregate_id, partition in rows:
        assert partition == partition_of(key if key is not None else aggregate_id)


def test_mariadb_crc32_agrees_with_the_write_side(mariadb_url: str) -> None:
    """The SQL form documented for backfills on MySQL/MariaDB gives the stored number."""
    engine, outbox = _write(mariadb_url)
    t = outbox.table
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    t.c.p_partition,
                    sa.func.crc32(sa.func.coalesce(t.c.key, t.c.aggregateid)) % PARTITIONS,
                )
            ).all()
    finally:
        engine.dispose()
    assert len(rows) == 2 * len(KEYS)
    assert all(stored == int(computed) for stored, computed in rows), rows
