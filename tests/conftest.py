from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import RelayProcess, fresh_database

DATABASES = ["postgresql", "mariadb", "sqlite"]


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    """A fresh, empty database on each of the three backends."""
    with fresh_database(request.param, str(tmp_path)) as url:
        yield url


@pytest.fixture
def pg_url(tmp_path: object) -> Iterator[str]:
    with fresh_database("postgresql", str(tmp_path)) as url:
        yield url


@pytest.fixture
def mariadb_url(tmp_path: object) -> Iterator[str]:
    with fresh_database("mariadb", str(tmp_path)) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: object) -> Iterator[str]:
    with fresh_database("sqlite", str(tmp_path)) as url:
        yield url


@pytest.fixture(scope="session")
def kafka() -> Iterator[str]:
    """Bootstrap servers of a real Kafka-protocol broker.

    `OUTBOX_TEST_KAFKA=host:port` selects an existing broker (for example Apache Kafka);
    otherwise an embedded Tansu broker is started for the session.
    """
    given = os.environ.get("OUTBOX_TEST_KAFKA")
    if given:
        yield given
        return
    from outbox.demo.broker import start_broker

    broker = start_broker()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture
def relays() -> Iterator[list[RelayProcess]]:
    """`outbox relay` processes a test starts; each is killed at the end, whatever happened."""
    started: list[RelayProcess] = []
    yield started
    for relay in started:
        relay.kill()
