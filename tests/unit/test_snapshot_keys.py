"""Keyset pagination predicates, the cursor's JSON form, and the snapshot options' checks."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from outbox.errors import ConfigurationError
from outbox.snapshot.keys import KeySet
from outbox.snapshot.options import SnapshotOptions


class Base(DeclarativeBase):
    pass


class Color(enum.Enum):
    red = "red"
    blue = "blue"


class Composite(Base):
    __tablename__ = "composite"
    region: Mapped[str] = mapped_column(sa.String(5), primary_key=True)
    day: Mapped[dt.date] = mapped_column(primary_key=True)
    num: Mapped[int] = mapped_column(primary_key=True)


class Odd(Base):
    __tablename__ = "odd"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    price: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2), primary_key=True)
    color: Mapped[Color] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(primary_key=True)


def sql(clause: sa.ColumnElement[bool], dialect: sa.Dialect) -> str:
    return str(clause.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def test_a_composite_key_is_compared_lexicographically_with_an_index_bound() -> None:
    keys = KeySet(sa.inspect(Composite))
    after = sql(keys.after(("eu", dt.date(2025, 1, 2), 7)), postgresql.dialect())
    assert after == (
        "composite.region >= 'eu' AND (composite.region > 'eu' OR composite.region = 'eu' AND "
        "composite.day > '2025-01-02' OR composite.region = 'eu' AND composite.day = "
        "'2025-01-02' AND composite.num > 7)"
    )
    assert sql(keys.at_most(("eu", dt.date(2025, 1, 2), 7)), mysql.dialect()).startswith(
        "NOT (composite.region >= 'eu'"
    )


def test_a_single_key_is_a_plain_comparison() -> None:
    class Single(Base):
        __tablename__ = "single"
        id: Mapped[int] = mapped_column(primary_key=True)

    keys = KeySet(sa.inspect(Single))
    assert sql(keys.after((41,)), postgresql.dialect()) == "single.id > 41"


def test_the_cursor_round_trips_through_json() -> None:
    keys = KeySet(sa.inspect(Odd))
    key = (uuid.uuid4(), Decimal("12.50"), Color.blue, dt.datetime(2025, 3, 4, 5, 6, 7, 8))
    text = keys.dump(key)
    assert text is not None and keys.load(text) == key
    assert keys.load(None) is None and keys.dump(None) is None
    with pytest.raises(ConfigurationError, match="does not match the primary key"):
        keys.load('["only one"]')


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"chunk_size": 0}, "chunk_size must be a positive integer"),
        ({"chunk_size": 10**6}, "chunk_size must be at most"),
        ({"chunk_size": True}, "chunk_size must be a positive integer"),
        ({"max_rows_per_second": -1}, "max_rows_per_second must be a positive number"),
        ({"max_pending": 0}, "max_pending must be a positive integer"),
        ({"where": "  "}, "where must be SQL text"),
    ],
)
def test_options_are_checked_when_built(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SnapshotOptions(**changes)  # type: ignore[arg-type]


def test_a_rate_cap_shrinks_the_chunk() -> None:
    assert SnapshotOptions(chunk_size=1000, max_rows_per_second=200).effective_chunk_size == 200
    assert SnapshotOptions(chunk_size=100, max_rows_per_second=0.5).effective_chunk_size == 1
    assert SnapshotOptions(chunk_size=100).effective_chunk_size == 100


def test_a_slow_chunk_halves_the_next_and_a_fast_one_grows_it_back() -> None:
    from outbox.snapshot.pacing import next_limit

    assert next_limit(1000, 0.25, 1000) == 500
    assert next_limit(12, 0.25, 1000) == 10  # never below MIN_CHUNK
    assert next_limit(5, 0.25, 5) == 5  # a rate cap below MIN_CHUNK stays the ceiling
    assert next_limit(500, 0.01, 1000) == 1000
    assert next_limit(1000, 0.01, 1000) == 1000
    assert next_limit(400, 0.07, 1000) == 400


class RecordingStop:
    """A stop event that records how long the pacer asked to wait, and never waits."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def is_set(self) -> bool:
        return False

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return False


def test_the_rate_cap_sleeps_until_the_rows_fit_the_rate() -> None:
    import time

    from outbox.snapshot.pacing import Pacer

    stop = RecordingStop()
    pacer = Pacer(SnapshotOptions(max_rows_per_second=500), stop)  # type: ignore[arg-type]
    pacer.throttle(time.monotonic(), 1000)  # 1000 rows at 500/s: 2 s from the start
    assert len(stop.waits) == 1 and 0 < stop.waits[0] <= 2.0
    pacer.throttle(time.monotonic() - 10, 1000)  # already slower than the cap: no wait
    assert len(stop.waits) == 1
    Pacer(SnapshotOptions(), stop).throttle(time.monotonic(), 10**6)  # type: ignore[arg-type]
    assert len(stop.waits) == 1


def test_the_backlog_pause_waits_until_the_relay_caught_up() -> None:
    from outbox.snapshot.pacing import Pacer

    stop = RecordingStop()
    backlog = iter([900, 600, 200])
    notes: list[str] = []
    pacer = Pacer(SnapshotOptions(max_pending=500), stop)  # type: ignore[arg-type]
    pacer.wait_for_backlog(lambda limit: next(backlog), notes.append)
    assert notes == ["paused: over 500 events wait for the relay"] * 2
    assert stop.waits == [0.5, 0.5]
