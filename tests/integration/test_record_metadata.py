"""Record timestamps and content types as a consumer of the real broker sees them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from outbox.config import RelayConfig
from outbox.relay import Relay
from outbox.write.outbox import Outbox
from tests.support import consume

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("envelope", ["plain", "cloudevents"])
def test_timestamp_is_created_at_and_content_type_follows_the_payload(
    pg_url: str, kafka: str, envelope: str
) -> None:
    topic = f"meta-{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(pg_url)
    outbox = Outbox()
    outbox.metadata.create_all(engine)
    Session = sessionmaker(engine)
    outbox.install(Session)
    try:
        kinds = {"json": {"a": 1}, "text": "plain words", "bytes": b"\x00\x01"}
        with Session.begin() as session:
            events = {
                name: outbox.emit(
                    session, name, payload, aggregate_type="m", aggregate_id=name, topic=topic
                )
                for name, payload in kinds.items()
            }
        # Held back as by an outage: the records must still carry the events' own time.
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        with engine.begin() as conn:
            conn.execute(outbox.table.update().values(created_at=an_hour_ago))
        with Relay(RelayConfig(db_url=pg_url, bootstrap_servers=kafka, envelope=envelope)) as relay:
            assert relay.run_once() == 3
        received = {r.key: r for r in consume(kafka, topic, expected=3)}
        expected_ms = int(an_hour_ago.timestamp() * 1000)
        want = {
            "json": b"application/json",
            "text": b"text/plain; charset=utf-8",
            "bytes": b"application/octet-stream",
        }
        for name, event in events.items():
            record = received[name.encode()]
            assert record.timestamp_ms == expected_ms, name
            assert record.headers["content-type"] == want[name], (name, record.headers)
            id_header = "event_id" if envelope == "plain" else "ce_id"
            assert record.headers[id_header] == str(event.id).encode()
    finally:
        outbox.uninstall(Session)
        engine.dispose()
