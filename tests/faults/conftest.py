"""Fixtures of the fault-injection scenarios (see docs/RELIABILITY.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import ProxiedBroker, RelayProcess, relay_pool, start_proxied_broker


@pytest.fixture
def proxied_kafka() -> Iterator[ProxiedBroker]:
    """A broker of its own whose every connection goes through a controllable TCP proxy."""
    broker = start_proxied_broker()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def relays() -> Iterator[list[RelayProcess]]:
    """Append every relay process started by the test: all are killed at the end."""
    with relay_pool() as started:
        yield started
