"""The Outbox object without a database: configuration, install/uninstall, emit's checks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from outbox.errors import ConfigurationError, NotInstalledError, PayloadError
from outbox.write.entity import EventSource
from outbox.write.outbox import Outbox, fix_sqlite_transactions

pytestmark = pytest.mark.unit


class Base(DeclarativeBase):
    pass


class Ticket(Base, EventSource):
    __tablename__ = "tickets"
    id: Mapped[int] = mapped_column(primary_key=True)


def emit(outbox: Outbox, session: Any, **changes: Any) -> Any:
    args: dict[str, Any] = {"aggregate_type": "order", "aggregate_id": "7", **changes}
    payload = args.pop("payload", {"order_id": 7})
    return outbox.emit(session, args.pop("type", "OrderPlaced"), payload, **args)


def test_defaults_and_tables() -> None:
    outbox = Outbox()
    assert outbox.table.name == "outbox"
    assert outbox.table.schema is None
    assert outbox.lease_table.name == "outbox_lease"
    assert outbox.snapshot_table.name == "outbox_snapshot"
    assert set(outbox.metadata.tables) == {
        "outbox",
        "outbox_lease",
        "outbox_relays",
        "outbox_snapshot",
    }
    assert outbox.max_payload_bytes == 1024 * 1024
    custom = Outbox(table_name="events_outbox", schema="app")
    assert custom.table.fullname == "app.events_outbox"
    assert custom.notify_channel == "outbox_app_events_outbox"
    assert custom.metadata is not outbox.metadata


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"table_name": "bad name"}, "invalid table name 'bad name'"),
        ({"table_name": "x;drop"}, "invalid table name"),
        ({"schema": "1app"}, "invalid schema name '1app'"),
        ({"max_payload_bytes": 0}, "max_payload_bytes must be a positive integer"),
        ({"max_payload_bytes": True}, "max_payload_bytes must be a positive integer"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Outbox(**kwargs)


def test_emit_returns_the_event_as_stored() -> None:
    outbox = Outbox()
    maker = sessionmaker()
    outbox.install(maker)
    session = maker()
    before = datetime.now(UTC)
    event = emit(outbox, session, aggregate_id=7, key="k", topic="orders.v1", headers={"h": b"v"})
    assert event.id.version == 7
    assert event.type == "OrderPlaced"
    assert (event.aggregate_type, event.aggregate_id) == ("order", "7")
    assert event.payload == b'{"order_id":7}'
    assert (event.key, event.topic, dict(event.headers)) == ("k", "orders.v1", {"h": "v"})
    assert event.created_at.tzinfo is UTC
    assert before <= event.created_at <= before + timedelta(minutes=1)
    assert event.partition_key == "k"
    second = emit(outbox, session, payload=None)
    assert second.id > event.id
    assert second.payload is None
    assert (second.key, second.topic, dict(second.headers)) == (None, None, {})
    assert second.partition_key == "7"
    session.close()


def test_emit_begins_the_session_transaction_like_add() -> None:
    outbox = Outbox()
    maker = sessionmaker()
    outbox.install(maker)
    with maker() as session:
        assert not session.in_transaction()
        emit(outbox, session)
        assert session.in_transaction()
        session.rollback()
        assert outbox._buffer(session, create=False) is None


def test_emit_without_install_says_what_to_do() -> None:
    outbox = Outbox()
    with pytest.raises(NotInstalledError, match=r"call outbox.install\(\.\.\.\)"):
        emit(outbox, Session())


def test_emit_rejects_non_sessions() -> None:
    with pytest.raises(
        ConfigurationError, match="expected a Session, AsyncSession or scoped_session"
    ):
        emit(Outbox(), object())


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"type": ""}, ConfigurationError, "event type must be a non-empty string"),
        ({"aggregate_type": None}, ConfigurationError, "aggregate_type must be"),
        ({"aggregate_id": "x" * 256}, ConfigurationError, "aggregate_id is longer than 255"),
        ({"key": ""}, ConfigurationError, "key must be a non-empty string"),
        ({"topic": "bad topic"}, ConfigurationError, "invalid topic 'bad topic'"),
        ({"topic": ".."}, ConfigurationError, "invalid topic"),
        ({"topic": "t" * 250}, ConfigurationError, "invalid topic"),
        ({"payload": object()}, PayloadError, "cannot be serialized"),
        ({"payload": b"x" * 11}, PayloadError, "over max_payload_bytes=10"),
        ({"headers": {"h": b"\xff"}}, PayloadError, "not UTF-8"),
    ],
)
def test_bad_events_fail_at_emit(changes: dict[str, Any], error: type, message: str) -> None:
    outbox = Outbox(max_payload_bytes=10)
    maker = sessionmaker()
    outbox.install(maker)
    with maker() as session:
        with pytest.raises(error, match=message):
            emit(outbox, session, **{"payload": b"ok", **changes})
        assert outbox._buffer(session, create=False) is None


def test_install_is_idempotent_and_uninstall_symmetric() -> None:
    outbox = Outbox()
    maker = sessionmaker()
    outbox.install(maker)
    outbox.install(maker)
    assert sa_event.contains(maker.class_, "before_commit", outbox._hooks.before_commit)
    outbox.uninstall(maker)
    assert not sa_event.contains(maker.class_, "before_commit", outbox._hooks.before_commit)
    assert not sa_event.contains(maker.class_, "after_flush", outbox._hooks.after_flush)
    outbox.uninstall(maker)  # harmless twice
    with pytest.raises(NotInstalledError):
        emit(outbox, maker())
    outbox.install(maker)
    assert emit(outbox, maker()).type == "OrderPlaced"  # installed again


def test_install_on_session_subclass_covers_its_subclasses() -> None:
    class AppSession(Session):
        pass

    class Child(AppSession):
        pass

    outbox = Outbox()
    outbox.install(AppSession)
    try:
        assert emit(outbox, Child()).type == "OrderPlaced"
        with pytest.raises(NotInstalledError):
            emit(outbox, Session())
    finally:
        outbox.uninstall(AppSession)


def test_a_second_outbox_on_the_same_factory_fails_clearly() -> None:
    maker = sessionmaker()
    first, second = Outbox(), Outbox(table_name="other")
    first.install(maker)
    with pytest.raises(ConfigurationError, match=r"already has Outbox.*'outbox'.* installed"):
        second.install(maker)
    first.uninstall(maker)
    second.install(maker)
    emit(second, maker())


def test_two_outboxes_on_two_factories() -> None:
    one, two = sessionmaker(), sessionmaker()
    first, second = Outbox(), Outbox(table_name="other")
    first.install(one)
    second.install(two)
    emit(first, one())
    with pytest.raises(NotInstalledError):
        emit(first, two())


def test_install_async_factories_on_their_sync_session_class() -> None:
    outbox = Outbox()
    maker = async_sessionmaker()
    outbox.install(maker)
    outbox.install(maker)
    sync_class = maker.kw["sync_session_class"]
    assert issubclass(sync_class, Session) and sync_class is not Session
    session = maker()
    assert emit(outbox, session).type == "OrderPlaced"
    with pytest.raises(NotInstalledError):  # the plain Session class was left alone
        emit(outbox, Session())
    outbox.uninstall(maker)
    assert "sync_session_class" not in maker.kw

    class AppSync(Session):
        pass

    class AppAsync(AsyncSession):
        sync_session_class = AppSync

    outbox.install(AppAsync)
    assert emit(outbox, AppAsync()).type == "OrderPlaced"
    outbox.uninstall(AppAsync)
    with pytest.raises(NotInstalledError):
        emit(outbox, AppAsync())


def test_install_rejects_other_targets() -> None:
    with pytest.raises(ConfigurationError, match="install\\(\\) takes a Session class"):
        Outbox().install(object())


def test_capture_rejects_unmapped_classes() -> None:
    with pytest.raises(ConfigurationError, match="capture\\(\\) takes mapped classes"):
        Outbox().capture(int)


def test_record_event_in_an_uninstalled_session_fails() -> None:
    session = Session()
    ticket = Ticket(id=1)
    session.add(ticket)
    with pytest.raises(NotInstalledError, match="no Outbox is installed"):
        ticket.record_event("Opened", {})


def test_record_event_on_a_detached_entity_waits_for_the_session() -> None:
    outbox = Outbox(max_payload_bytes=20)
    maker = sessionmaker()
    outbox.install(maker)
    ticket = Ticket(id=1)
    event_id = ticket.record_event("Opened", {"n": 1})
    assert isinstance(event_id, uuid.UUID)
    with pytest.raises(PayloadError):
        ticket.record_event("Opened", object())
    big = Ticket(id=2)
    big.record_event("Opened", b"x" * 21)  # the cap is known only once the entity is added
    with maker() as session:
        session.add(ticket)
        buffer = outbox._buffer(session, create=False)
        assert buffer is not None and [d.id for d in buffer.drafts] == [event_id]
        with pytest.raises(PayloadError, match="over max_payload_bytes=20"):
            session.add(big)


def test_trace_context_of_the_active_span_is_stored() -> None:
    outbox = Outbox()
    maker = sessionmaker()
    outbox.install(maker)
    tracer = TracerProvider().get_tracer("test")
    with maker() as session:
        assert "traceparent" not in emit(outbox, session).headers
        with tracer.start_as_current_span("place order") as span:
            event = emit(outbox, session, headers={"tenant": "a"})
            explicit = emit(outbox, session, headers={"traceparent": "mine"})
        context = span.get_span_context()
        assert event.headers["traceparent"] == (
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        )
        assert event.headers["tenant"] == "a"
        assert explicit.headers["traceparent"] == "mine"
        assert trace.get_current_span().get_span_context().is_valid is False


def test_fix_sqlite_transactions_refuses_other_engines() -> None:
    engine = sa.create_engine("postgresql+psycopg://u@127.0.0.1:1/x")
    with pytest.raises(ConfigurationError, match="for SQLite engines, not postgresql"):
        fix_sqlite_transactions(engine)
