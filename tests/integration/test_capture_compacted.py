"""`capture(Model, compacted=True)` end to end: full rows, tombstones, primary key changes."""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, load_only, mapped_column, sessionmaker

from outbox.errors import ConfigurationError
from outbox.write.outbox import Outbox
from tests.snapshot_support import op_of, running_relay
from tests.support import consume, write_engine

pytestmark = pytest.mark.integration


def make_model(table: str) -> type[DeclarativeBase]:
    class Base(DeclarativeBase):
        pass

    class Account(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(sa.String(40))
        # Filled by the database: the session never loads it unless asked to.
        tier: Mapped[str] = mapped_column(sa.String(10), server_default="basic")
        note: Mapped[bytes | None] = mapped_column(sa.LargeBinary, nullable=True)

    return Account


def test_full_rows_tombstones_and_key_changes_reach_the_broker(db_url: str, kafka: str) -> None:
    table = f"acct_{uuid.uuid4().hex[:10]}"
    account = make_model(table)
    outbox = Outbox()
    outbox.capture(account, compacted=True)
    engine = write_engine(db_url)
    outbox.metadata.create_all(engine)
    account.metadata.create_all(engine)
    factory = sessionmaker(engine)
    outbox.install(factory)
    try:
        with factory.begin() as session:
            session.add(account(id=1, name="ann", note=b"\x00\x01"))
            session.add(account(id=2, name="bob"))
        with factory.begin() as session:
            # Only `name` is loaded: the event must still carry every column.
            one = session.scalars(
                sa.select(account).where(account.id == 1).options(load_only(account.name))
            ).one()
            one.name = "anne"
        with factory.begin() as session:
            session.delete(session.get(account, 2))
        with factory.begin() as session:
            session.get(account, 1).id = 10  # a primary key change
        with running_relay(db_url, kafka):
            received = consume(kafka, table, 8, timeout=60, settle=0.5)
    finally:
        outbox.uninstall(factory)
        engine.dispose()

    ordered = sorted(received, key=lambda r: (r.partition, r.offset))
    got = [((r.key or b"").decode(), op_of(r), r.value) for r in ordered]
    per_key: dict[str, list[str]] = {}
    for key, op, _ in got:
        per_key.setdefault(key, []).append(op)
    print(f"\n{sa.make_url(db_url).get_backend_name()}: {per_key}")
    # Kafka orders records per partition, so per key: that is the order compaction keeps.
    assert per_key == {
        "1": ["created", "updated", "deleted", "tombstone"],
        "2": ["created", "deleted", "tombstone"],
        "10": ["created"],
    }
    rows = {(k, op): json.loads(v)["row"] for k, op, v in got if v is not None}
    full = {"id": 1, "name": "ann", "tier": "basic", "note": "AAE="}
    assert rows[("1", "created")] == full
    assert rows[("2", "created")] == {"id": 2, "name": "bob", "tier": "basic", "note": None}
    assert rows[("1", "updated")] == {**full, "name": "anne"}
    assert rows[("1", "deleted")] == {**full, "name": "anne"}
    assert rows[("10", "created")] == {**full, "id": 10, "name": "anne"}
    tombstones = [r for r in received if op_of(r) == "tombstone"]
    assert [r.value for r in tombstones] == [None, None]


def test_a_class_is_captured_in_one_mode() -> None:
    account = make_model("acct_modes")
    outbox = Outbox()
    outbox.capture(account)
    outbox.capture(account)  # idempotent
    with pytest.raises(ConfigurationError, match="already captured with compacted=False"):
        outbox.capture(account, compacted=True)
