"""A snapshot event's row is exactly capture's row for the same object, for every common column
type: the snapshot reads rows by position and base64-encodes only the columns whose type can
hold bytes (`outbox.snapshot.chunks`), capture encodes every value it sees."""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from outbox.write.outbox import Outbox
from tests.support import write_engine

pytestmark = pytest.mark.integration


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Hexed(sa.TypeDecorator[bytes]):
    """Stored as text, read back as bytes: its type says str, its values are binary."""

    impl = sa.String(64)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return None if value is None else bytes(value).hex()

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else bytes.fromhex(value)


class Base(DeclarativeBase):
    pass


class Everything(Base):
    __tablename__ = "snapshot_payload_types"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(sa.String(40))
    flag: Mapped[bool] = mapped_column(sa.Boolean)
    ratio: Mapped[float] = mapped_column(sa.Float)
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(12, 4))
    when: Mapped[dt.datetime] = mapped_column(sa.DateTime)
    day: Mapped[dt.date] = mapped_column(sa.Date)
    ref: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    colour: Mapped[Colour] = mapped_column(sa.Enum(Colour))
    doc: Mapped[Any] = mapped_column(sa.JSON)
    blob: Mapped[bytes | None] = mapped_column(sa.LargeBinary, nullable=True)
    hexed: Mapped[bytes | None] = mapped_column(Hexed, nullable=True)


def test_snapshot_rows_equal_capture_rows(db_url: str) -> None:
    engine = write_engine(db_url)
    box = Outbox()
    box.capture(Everything, compacted=True)
    box.metadata.create_all(engine)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    factory = sessionmaker(engine)
    box.install(factory)
    try:
        with factory.begin() as session:
            for i in range(1, 4):
                session.add(
                    Everything(
                        id=i,
                        text=f"é{i}",
                        flag=i % 2 == 0,
                        ratio=i / 4,
                        amount=Decimal(f"{i}.2500"),
                        when=dt.datetime(2026, 1, i, 12, 30, 15, 250000),
                        day=dt.date(2026, 2, i),
                        ref=uuid.UUID(int=i),
                        colour=Colour.BLUE,
                        doc={"n": i, "list": [1, "x"]},
                        blob=bytes([0, 255, i]) if i != 2 else None,
                        hexed=b"\x01\x02" if i != 3 else None,
                    )
                )
        box.snapshot(factory, Everything, chunk_size=2)
        with engine.connect() as conn:
            events = conn.execute(
                sa.select(box.table.c.type, box.table.c.aggregateid, box.table.c.payload).order_by(
                    box.table.c.seq
                )
            ).all()
    finally:
        box.uninstall(factory)
        Base.metadata.drop_all(engine)
        engine.dispose()
    created = {a: json.loads(p)["row"] for t, a, p in events if t.endswith(".created")}
    snapshot = {a: json.loads(p)["row"] for t, a, p in events if t.endswith(".snapshot")}
    assert sorted(snapshot) == sorted(created) == ["1", "2", "3"]
    for key, row in snapshot.items():
        expected = dict(created[key])
        # Capture's `created` row holds the values as the application set them; the database
        # may hand some back in its own precision or spelling.
        for name in ("ratio", "amount", "when"):
            assert str(row[name])[:10] == str(expected.pop(name))[:10]
            row.pop(name)
        assert row == expected, key
    assert snapshot["1"]["blob"] is not None and snapshot["2"]["blob"] is None
    assert snapshot["1"]["hexed"] == "AQI="  # base64 of the bytes, as capture spells bytes
