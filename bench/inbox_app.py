"""The application `bench.inbox` runs under `outbox consume`: one row inserted per event."""

from __future__ import annotations

import os
import time

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from outbox import Inbox, InboxConfig, InboxEvent

metadata = sa.MetaData()
rows = sa.Table(
    "bench_inbox_rows",
    metadata,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False),
    # Wall-clock time of the insert: the rate is taken between the first and the last row, so
    # the group join before the first record is not counted.
    sa.Column("at", sa.Float, nullable=False),
)

_engine = sa.create_engine(os.environ.get("BENCH_INBOX_DB", "sqlite://"))
_batch = int(os.environ.get("BENCH_INBOX_BATCH", "1"))
inbox = Inbox(sessionmaker(_engine), consumer="bench", config=InboxConfig(batch_size=_batch))


@inbox.handler("BenchEvent")
def insert_one(session: Session, event: InboxEvent) -> None:
    session.execute(rows.insert().values(event_id=event.id, at=time.time()))
