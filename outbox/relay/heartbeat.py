"""The relay's membership: a heartbeat in the table's relays table, so that `outbox status`
lists the live relays (active and standbys) and partitioned relays know each other.

A relay beats every ``lease_ttl / 3`` seconds (on its renewal timer) and leaves on a clean
stop; one that has not beaten within the lease TTL is not alive. A beat that fails (database
down) is only logged at debug level: the lease keeper reports the outage itself.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from outbox.relay.lease import RENEWALS_PER_TTL, first_line
from outbox.relay.observer import RelayObserver
from outbox.relay.store import OutboxStore

logger = logging.getLogger("outbox.relay")


class Heartbeat:
    """One relay's row in the relays table. Not thread-safe: one thread beats."""

    def __init__(
        self,
        store: OutboxStore,
        relay_id: str,
        ttl: float,
        observer: RelayObserver,
        mode: str = "single",
    ) -> None:
        #: Where the row is written: the loop's store, or the lease keeper's own (`RenewalTimer`).
        self.store = store
        self.relay_id = relay_id
        self.ttl = ttl
        self.mode = mode
        self._observer = observer
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._next = 0.0
        self._live: int | None = None

    def due(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self._next

    def seconds_to_beat(self) -> float:
        return max(0.0, self._next - time.monotonic())

    def beat(self) -> bool:
        """Beat now; False (logged at debug) when the database could not be reached."""
        now = time.monotonic()
        try:
            live = self.store.beat(self.relay_id, self._host, self._pid, self.mode, self.ttl)
        except Exception as error:
            logger.debug("heartbeat failed: %s", first_line(error))
            self._next = now + min(1.0, self.ttl / RENEWALS_PER_TTL)
            return False
        self._next = now + self.ttl / RENEWALS_PER_TTL
        if len(live) != self._live:
            self._live = len(live)
            self._observer.relays(len(live))
        return True

    def maybe_beat(self) -> None:
        if self.due():
            self.beat()

    def leave(self) -> None:
        """Remove this relay's row (a clean stop); harmless when the database is gone."""
        try:
            self.store.leave(self.relay_id)
        except Exception as error:
            logger.debug("could not remove this relay from the relays table: %s", first_line(error))


__all__ = ["Heartbeat"]
