"""The relays table: heartbeats by the database's clock, the live relays, leaving; and what
`outbox status` shows of the fleet (the lease holder and the live standbys)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from outbox import InMemoryPublisher, RelayConfig
from outbox.errors import ConfigurationError
from outbox.relay import Relay
from outbox.relay.store import OutboxStore
from tests.integration.test_cli import run
from tests.support import create_outbox_tables

pytestmark = pytest.mark.integration


def test_beat_upserts_live_filters_by_ttl_and_leave_removes(db_url: str) -> None:
    create_outbox_tables(db_url)
    store = OutboxStore.from_url(db_url)
    try:
        assert store.live_relays(6) == []
        store.beat("a", "host-a", 11, "single", 6)
        live = store.beat("b", "host-b", 22, "partitioned", 6)
        assert [(m.relay_id, m.host, m.pid, m.mode) for m in live] == [
            ("a", "host-a", 11, "single"),
            ("b", "host-b", 22, "partitioned"),
        ]
        first = live[0]
        again = next(m for m in store.beat("a", "host-a", 11, "single", 6) if m.relay_id == "a")
        assert again.started_at == first.started_at  # an upsert, not a new row
        assert again.heartbeat_at >= first.heartbeat_at
        assert all(0 <= m.silent_seconds < 6 for m in store.live_relays(6))

        # b falls silent: its last beat long ago.
        members = store.members_table
        with store.engine.begin() as conn:
            conn.execute(
                sa.update(members)
                .where(members.c.relay_id == "b")
                .values(heartbeat_at=datetime(2000, 1, 1, tzinfo=UTC))
            )
        assert [m.relay_id for m in store.live_relays(6)] == ["a"]

        store.leave("a")
        assert store.live_relays(6) == []
        with store.engine.connect() as conn:
            # b stays (a killed relay never leaves) until it is long dead.
            assert conn.execute(sa.select(members.c.relay_id)).scalars().all() == ["b"]
        store.beat("c", "host-c", 33, "single", 6)
        with store.engine.connect() as conn:
            assert conn.execute(sa.select(members.c.relay_id)).scalars().all() == ["c"]

        with pytest.raises(ConfigurationError, match="relay mode"):
            store.beat("d", "h", 1, "both", 6)
    finally:
        store.dispose()


def test_status_shows_the_lease_holder_and_the_live_standbys(db_url: str) -> None:
    create_outbox_tables(db_url)
    config = RelayConfig(db_url=db_url, lease_ttl=30)
    active = Relay(config, publisher=InMemoryPublisher())
    standby = Relay(config, publisher=InMemoryPublisher())
    try:
        active.run_once()
        standby.run_once()
        assert active.lease is not None and standby.lease is None

        result = run("status", "--db-url", db_url, "--json", "--lease-ttl", "30")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        lease = status["lease"]
        assert (lease["owner"], lease["epoch"]) == (active.owner, 1)
        assert 0 <= lease["held_for_seconds"] < 30
        assert 0 <= lease["renewed_seconds_ago"] < 30
        assert 0 < lease["expires_in_seconds"] <= 30
        assert status["relays_live"] == 2
        assert {(r["relay_id"], r["active"]) for r in status["relays"]} == {
            (active.owner, True),
            (standby.owner, False),
        }
        assert [s["relay_id"] for s in status["standbys"]] == [standby.owner]

        text = run("status", "--db-url", db_url, "--lease-ttl", "30").stdout
        assert re.search(r"active relay\s*│\s*" + re.escape(active.owner), text), text
        assert re.search(r"live relays\s*│\s*2\s*│", text), text
        assert "standby" in text

        active.close()  # releases the lease and leaves
        status = json.loads(run("status", "--db-url", db_url, "--json", "--lease-ttl", "30").stdout)
        assert status["lease"]["owner"] is None
        assert [r["relay_id"] for r in status["relays"]] == [standby.owner]
    finally:
        active.close()
        standby.close()
        active.store.dispose()
        standby.store.dispose()
