"""Both PostgreSQL drivers (psycopg 3 and psycopg2): writing, relaying and the LISTEN wake-up."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from outbox import InMemoryPublisher, Outbox, RelayConfig
from outbox.relay import Relay
from outbox.relay.store import OutboxStore

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_write_relay_and_wake_up(pg_url: str, driver: str) -> None:
    url = sa.make_url(pg_url).set(drivername=f"postgresql+{driver}")
    text_url = url.render_as_string(hide_password=False)
    engine = sa.create_engine(url)
    outbox = Outbox()
    outbox.metadata.create_all(engine)
    factory = sessionmaker(engine)
    outbox.install(factory)
    store = OutboxStore.from_url(text_url)
    waker = store.waker()
    try:
        assert waker.wait(0.01) is False  # opens the LISTEN connection; nothing pending
        woken: list[bool] = []
        listener = threading.Thread(target=lambda: woken.append(waker.wait(30)))
        listener.start()
        with factory.begin() as session:
            for n in range(3):
                outbox.emit(session, "Ping", {"n": n}, aggregate_type="ping", aggregate_id="1")
        listener.join(35)
        assert woken == [True]  # the commit's NOTIFY woke the relay's wait before its timeout

        publisher = InMemoryPublisher()
        relay = Relay(RelayConfig(db_url=text_url), publisher=publisher, store=store)
        assert relay.run_once() == 3
        assert [m.value for m in publisher.messages] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
        relay.close()
    finally:
        waker.close()
        store.dispose()
        outbox.uninstall(factory)
        engine.dispose()
