"""The outbox INSERT on the driver's cursor (`outbox.write.direct`): taken only when nothing could
see the difference, and writing exactly the rows SQLAlchemy's own execution writes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from outbox.errors import TableMissingError
from outbox.write.outbox import Outbox

pytestmark = pytest.mark.integration

COLUMNS = ("id", "aggregatetype", "aggregateid", "type", "payload", "topic", "key", "headers")


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    # A plain engine: no listeners (write_engine's SQLite fix adds a `begin` hook).
    engine = sa.create_engine(db_url)
    yield engine
    engine.dispose()


def emit_mix(box: Outbox, session: Session, tag: str) -> None:
    """Events of every shape: JSON, text, bytes, a tombstone, key, topic and headers."""
    box.emit(session, f"{tag}.json", {"n": 1, "é": "ü"}, aggregate_type="a", aggregate_id=1)
    box.emit(session, f"{tag}.text", "plain text", aggregate_type="a", aggregate_id="2", key="k")
    box.emit(session, f"{tag}.bytes", b"\x00\xff", aggregate_type="a", aggregate_id="3")
    box.emit(
        session,
        f"{tag}.tombstone",
        None,
        aggregate_type="a",
        aggregate_id="4",
        topic="t.x",
        headers={"h": "v"},
    )


def write_both(box: Outbox, maker: sessionmaker[Session], tag: str) -> None:
    """A one-event transaction (`execute`), then a four-event one (`executemany`)."""
    with maker.begin() as session:
        box.emit(session, f"{tag}.one", {"n": 1}, aggregate_type="a", aggregate_id=9)
    with maker.begin() as session:
        emit_mix(box, session, tag)


def stored(engine: sa.Engine, box: Outbox, tag: str) -> list[tuple[Any, ...]]:
    table = box.table
    query = (
        sa.select(*(table.c[c] for c in (*COLUMNS, "created_at", "p_partition")))
        .where(table.c.type.like(f"{tag}.%"))
        .order_by(table.c.seq)
    )
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


def written_directly(engine: sa.Engine, box: Outbox, maker: sessionmaker[Session]) -> bool:
    """Whether the outbox statement of a one-event transaction goes to the driver's cursor."""
    taken: list[bool] = []
    with maker() as session:
        box.emit(session, "probe.x", {}, aggregate_type="a", aggregate_id=1)
        conn = session.connection()
        taken.append(box._writer._notifying.on(conn) is not None)
        taken.append(box._writer._plain.on(conn) is not None)
        session.commit()
    assert taken[0] == taken[1]
    return taken[0]


def test_direct_rows_equal_sqlalchemys_rows(engine: sa.Engine) -> None:
    box = Outbox()
    box.metadata.create_all(engine)
    maker = sessionmaker(engine)
    box.install(maker)
    assert written_directly(engine, box, maker)
    write_both(box, maker, "direct")
    direct = stored(engine, box, "direct")

    seen: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    assert not written_directly(engine, box, maker)  # a listener: SQLAlchemy's execution
    write_both(box, maker, "sa")
    via_sqlalchemy = stored(engine, box, "sa")
    assert any("INSERT INTO outbox" in s or "outbox_insert" in s for s in seen)

    assert len(direct) == len(via_sqlalchemy) == 5
    for mine, theirs in zip(direct, via_sqlalchemy, strict=True):
        # Same values in every column but the fresh id, the type's tag and the time.
        assert mine[1:3] == theirs[1:3]
        assert mine[3].split(".", 1)[1] == theirs[3].split(".", 1)[1]
        assert mine[4:8] == theirs[4:8]
        assert mine[9] == theirs[9]
        assert type(mine[0]) is type(theirs[0]) and type(mine[8]) is type(theirs[8])
    # Emit order is kept by executemany, as by SQLAlchemy's batches.
    assert [r[3] for r in direct] == [
        "direct.one",
        "direct.json",
        "direct.text",
        "direct.bytes",
        "direct.tombstone",
    ]


def test_direct_path_is_skipped_when_someone_would_notice(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox()
    box.metadata.create_all(engine)
    statements = box._writer._plain
    with engine.connect() as conn:
        assert statements.on(conn) is None  # no transaction begun: let execute autobegin
        conn.begin()
        assert statements.on(conn) is not None
        translated = conn.execution_options(schema_translate_map={None: None})
        assert statements.on(translated) is None
        conn.rollback()
    # SQL logging (echo, or the sqlalchemy.engine logger at INFO) sees every statement.
    with caplog.at_level(logging.INFO, logger="sqlalchemy.engine.Engine"), engine.begin() as conn:
        assert statements.on(conn) is None
    listened = sa.create_engine(engine.url)
    try:
        sa.event.listen(listened, "after_cursor_execute", lambda *args: None)
        with listened.begin() as conn:
            assert statements.on(conn) is None
    finally:
        listened.dispose()


def test_direct_path_reports_a_missing_table_as_before(engine: sa.Engine) -> None:
    box = Outbox(table_name="outbox_never_created")
    maker = sessionmaker(engine)
    box.install(maker)
    with (
        pytest.raises(TableMissingError, match="outbox_never_created"),
        maker.begin() as session,
    ):
        assert box._writer._plain.on(session.connection()) is not None
        box.emit(session, "x.y", {}, aggregate_type="a", aggregate_id=1)
    # The connection went back to the pool usable.
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
