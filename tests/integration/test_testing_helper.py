"""`outbox.testing`: users assert on their committed domain events without a broker."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from outbox.testing import OutboxRecorder, record_events
from outbox.write.outbox import Outbox
from tests.integration.test_write_side import Base, Order
from tests.support import write_engine

pytestmark = pytest.mark.integration


def test_recorder_sees_committed_events_only(db_url: str) -> None:
    engine = write_engine(db_url)
    outbox = Outbox()
    outbox.metadata.create_all(engine)
    Base.metadata.create_all(engine)
    Session = sessionmaker(engine)
    outbox.install(Session)
    try:
        with Session.begin() as session:  # before the recorder: not reported
            outbox.emit(session, "Before", None, aggregate_type="a", aggregate_id="0")
        with record_events(engine, outbox) as recorded:
            with Session.begin() as session:
                order = Order(total="9.90")
                session.add(order)
                order.place()
                outbox.emit(
                    session, "Tagged", b"raw", aggregate_type="a", aggregate_id="1",
                    key="k", topic="t", headers={"h": "v"},
                )  # fmt: skip
                with session.begin_nested() as savepoint:
                    outbox.emit(session, "RolledBack", None, aggregate_type="a", aggregate_id="2")
                    savepoint.rollback()
                session.flush()
                order_id = order.id
            with Session() as session:
                outbox.emit(session, "NeverCommitted", None, aggregate_type="a", aggregate_id="3")
                session.rollback()
        assert recorded.types() == ["OrderPlaced", "Tagged"]
        placed, tagged = recorded.events()
        assert placed.json() == {"total": "9.90"}
        assert (placed.aggregate_type, placed.key, placed.topic) == ("orders", str(order_id), None)
        assert (tagged.payload, tagged.key, tagged.topic) == (b"raw", "k", "t")
        assert tagged.headers == {"h": "v", "content-type": "application/octet-stream"}
        assert [e.type for e in recorded.events("Tagged")] == ["Tagged"]
        recorded.clear()
        assert len(recorded) == 0
    finally:
        outbox.uninstall(Session)
        engine.dispose()


def test_recorder_on_the_tests_own_connection(sqlite_url: str) -> None:
    """A test wrapped in an outer transaction that is rolled back: pass its connection."""
    engine = write_engine(sqlite_url)
    outbox = Outbox()
    outbox.metadata.create_all(engine)
    try:
        with engine.connect() as conn:
            outer = conn.begin()
            Session = sessionmaker(bind=conn, join_transaction_mode="create_savepoint")
            outbox.install(Session)
            recorder = OutboxRecorder(conn, outbox.table)
            with Session() as session:
                outbox.emit(session, "Inside", None, aggregate_type="a", aggregate_id="1")
                session.commit()
            assert recorder.types() == ["Inside"]
            outer.rollback()
            outbox.uninstall(Session)
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(outbox.table)).scalar() == 0
    finally:
        engine.dispose()


USER_SUITE = """
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker
from outbox import Outbox

outbox = Outbox()

@pytest.fixture
def outbox_bind(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path}/app.db")
    outbox.metadata.create_all(engine)
    yield engine
    engine.dispose()

def place_order(engine, total):
    Session = sessionmaker(engine)
    outbox.install(Session)
    with Session.begin() as session:
        outbox.emit(session, "OrderPlaced", {"total": total}, aggregate_type="order",
                    aggregate_id="1", headers={"tenant": "acme"})

def test_one(outbox_bind, outbox_events):
    place_order(outbox_bind, "1.00")
    [event] = outbox_events.events()
    assert (event.type, event.key, event.json()) == ("OrderPlaced", "1", {"total": "1.00"})
    assert event.headers == {"tenant": "acme"}

def test_two_sees_only_its_own(outbox_bind, outbox_events):
    place_order(outbox_bind, "2.00")
    assert [e.json()["total"] for e in outbox_events.events()] == ["2.00"]

def test_wrong_expectation_fails(outbox_bind, outbox_events):
    place_order(outbox_bind, "3.00")
    assert outbox_events.types() == ["OrderCancelled"]
"""


def test_pytest_plugin_in_a_users_suite(tmp_path: Path) -> None:
    (tmp_path / "test_app.py").write_text(textwrap.dedent(USER_SUITE))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "outbox.testing", "-p", "no:cacheprovider",
         "-W", "error", str(tmp_path / "test_app.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # Two pass; the third shows that the fixture reports what was committed, not a constant.
    assert "2 passed" in result.stdout and "1 failed" in result.stdout, result.stdout
    assert "test_wrong_expectation_fails" in result.stdout
    assert "['OrderPlaced']" in result.stdout
