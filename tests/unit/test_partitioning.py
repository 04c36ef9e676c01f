"""Partitioned mode's pure parts: the hash, the fair share, the config rules, the workers'
environment, the status ranges."""

from __future__ import annotations

import zlib

import pytest

from outbox import RelayConfig
from outbox.cli.status import ranges
from outbox.errors import ConfigurationError
from outbox.ops.workers import worker_env
from outbox.partitioning import PARTITIONS, effective_key, partition_of
from outbox.relay.partition_keeper import fair_share


def test_partition_is_crc32_of_the_effective_key() -> None:
    assert effective_key(None, "agg-1") == "agg-1" and effective_key("k", "agg-1") == "k"
    assert partition_of("abc") == zlib.crc32(b"abc") % 64 == 891568578 % 64
    assert partition_of("é") == zlib.crc32("é".encode()) % PARTITIONS
    assert all(0 <= partition_of(f"order-{i}") < PARTITIONS for i in range(1000))


@pytest.mark.parametrize("relays", [1, 2, 3, 5, 7, 64, 65])
def test_fair_shares_add_up_to_every_partition_at_most_one_apart(relays: int) -> None:
    ids = [f"relay-{i:02d}" for i in range(relays)]
    shares = [fair_share(ids, me)[0] for me in ids]
    assert sum(shares) == PARTITIONS
    assert max(shares) - min(shares) <= 1
    assert [fair_share(ids, me)[1] for me in ids] == list(range(relays))


def test_a_relay_missing_from_the_live_list_counts_itself() -> None:
    assert fair_share([], "me") == (64, 0)
    assert fair_share(["a"], "me") == (32, 1)


def test_partitioned_config_rules() -> None:
    pg = "postgresql+psycopg://u@h/db"
    assert RelayConfig(db_url=pg, partitioned=True, workers=3).workers == 3
    with pytest.raises(ConfigurationError, match="needs partitioned mode"):
        RelayConfig(db_url=pg, workers=2)
    with pytest.raises(ConfigurationError, match="not supported on SQLite"):
        RelayConfig(db_url="sqlite:///x.db", partitioned=True)
    with pytest.raises(ConfigurationError, match="workers"):
        RelayConfig(db_url=pg, partitioned=True, workers=0)
    config = RelayConfig.from_env({"OUTBOX_DB_URL": pg, "OUTBOX_PARTITIONED": "true"})
    assert config.partitioned


def test_worker_env_carries_the_settings_and_offsets_the_ports() -> None:
    config = RelayConfig(
        db_url="postgresql+psycopg://u:secret@h/db",
        partitioned=True,
        workers=4,
        health_port=8080,
        metrics_port=9090,
        producer_config={"compression_type": "gzip"},
    )
    env = worker_env(config, 2, "DEBUG", {"PATH": "/bin", "OUTBOX_TABLE": "stale"})
    assert env["PATH"] == "/bin"
    assert env["OUTBOX_TABLE"] == "outbox"  # the parent's resolved value, not the stale one
    assert env["OUTBOX_WORKERS"] == "1" and env["OUTBOX_PARTITIONED"] == "true"
    assert (env["OUTBOX_HEALTH_PORT"], env["OUTBOX_METRICS_PORT"]) == ("8082", "9092")
    assert env["OUTBOX_PRODUCER_COMPRESSION_TYPE"] == "gzip"
    assert env["OUTBOX_LOG_LEVEL"] == "DEBUG"
    assert "OUTBOX_SCHEMA" not in env  # None: not set
    rebuilt = RelayConfig.from_env(env)
    assert rebuilt.replace(workers=4, health_port=8080, metrics_port=9090) == config


def test_ranges() -> None:
    assert ranges([]) == "-"
    assert ranges([0, 1, 2, 3, 7, 9, 10]) == "0-3,7,9-10"
    assert ranges([5]) == "5"
