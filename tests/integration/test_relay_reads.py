"""The relay's read on PostgreSQL formats the id and the timestamp in SQL (`store.reads`): the
same text and number as Python's, so that the records stay byte-identical."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from outbox.config import RelayConfig
from outbox.relay.envelope import make_encoder, rfc3339, timestamp_ms
from outbox.relay.records import PendingEvent
from outbox.relay.store import OutboxStore
from tests.support import create_outbox_tables, insert_rows

pytestmark = pytest.mark.integration

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FORMATTED = ("id_text", "created_text", "created_us")


def moments() -> list[datetime]:
    fixed = [
        datetime(2025, 1, 1, tzinfo=UTC),
        datetime(2025, 1, 1, 0, 0, 0, 1000, tzinfo=UTC),  # a whole millisecond: float rounding
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),  # before the epoch
        datetime(1900, 3, 1, 12, 0, 0, 7, tzinfo=UTC),
        datetime(812, 6, 1, 1, 2, 3, 4, tzinfo=UTC),  # a year of three digits
        datetime(2099, 7, 1, 12, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC),
    ]
    rng = random.Random(7)
    spread = [
        EPOCH + timedelta(microseconds=rng.randrange(-(10**16), 4 * 10**15)) for _ in range(300)
    ]
    # Whole milliseconds, where the float arithmetic of timestamp_ms rounds down now and then.
    ms = [EPOCH + timedelta(milliseconds=rng.randrange(0, 4 * 10**12)) for _ in range(300)]
    return fixed + spread + ms


@pytest.fixture(params=["UTC", "America/St_Johns", "Asia/Kathmandu", "Pacific/Kiritimati"])
def store(request: pytest.FixtureRequest, pg_url: str) -> Iterator[OutboxStore]:
    """The store on a session whose TimeZone is not UTC (half-hour and odd offsets)."""
    engine = sa.create_engine(pg_url, connect_args={"options": f"-c TimeZone={request.param}"})
    store = OutboxStore(engine)
    try:
        yield store
    finally:
        store.dispose()


def test_the_database_formats_id_and_timestamp_as_python_does(
    pg_url: str, store: OutboxStore
) -> None:
    table = create_outbox_tables(pg_url)
    created = moments()
    insert_rows(
        pg_url,
        table,
        [
            {"aggregateid": f"a{i}", "created_at": c, "payload": b"{}"}
            for i, c in enumerate(created)
        ],
    )
    events, _ = store.fetch_after(0, len(created) + 1, count_limit=1)
    assert len(events) == len(created)
    for event, moment in zip(events, created, strict=True):
        assert event.created_at == moment
        assert event.id_text == str(event.id)
        assert event.created_text == rfc3339(event.created_at)
        assert event.created_us == (moment - EPOCH) // timedelta(microseconds=1)
    by_hand = [
        PendingEvent(
            **{f: getattr(e, f) for f in PendingEvent.__dataclass_fields__ if f not in FORMATTED}
        )
        for e in events
    ]
    assert all(e.id_text is None for e in by_hand)
    for envelope in ("plain", "cloudevents", "cloudevents-structured"):
        encode = make_encoder(RelayConfig(db_url=pg_url, envelope=envelope, source="s"))
        for read, hand in zip(events, by_hand, strict=True):
            assert encode(read) == encode(hand)
            assert encode(read).timestamp_ms == timestamp_ms(read.created_at)


def test_an_event_built_by_hand_is_formatted_by_python(pg_url: str) -> None:
    event = PendingEvent(
        1, uuid.uuid4(), "order", "o-1", "Placed", b"{}", None, None, None, EPOCH, 0
    )
    message = make_encoder(RelayConfig(db_url=pg_url))(event)
    assert dict(message.headers)["event_id"] == str(event.id).encode()
    assert dict(message.headers)["created_at"] == b"1970-01-01T00:00:00.000000Z"
    assert message.timestamp_ms == 0
