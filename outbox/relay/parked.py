"""The keys held back by parked events: while a key has a parked event, its later events wait
(``hold_parked_keys``), so the relay leaves those keys out of every read."""

from __future__ import annotations

import time

from outbox.relay.store import OutboxStore

#: Seconds the set of keys held back by parked events is cached.
HELD_KEYS_TTL = 5.0


class ParkedKeys:
    """The set of keys with a parked event, cached: only the lease holder parks, so the cache is
    dropped (`invalidate`) when this relay parks or the lease changes hands, and refreshed every
    `HELD_KEYS_TTL` seconds: a running relay sees an operator's requeue or drop within that time.
    Empty, and never read, when parked keys are not held."""

    def __init__(self, store: OutboxStore, enabled: bool) -> None:
        self._store = store
        self.enabled = enabled
        self._keys: frozenset[str] | None = None
        self._until = 0.0

    def get(self) -> frozenset[str]:
        """The keys whose events must not be sent now."""
        if not self.enabled:
            return frozenset()
        now = time.monotonic()
        if self._keys is None or now >= self._until:
            self._keys = self._store.parked_keys()
            self._until = now + HELD_KEYS_TTL
        return self._keys

    def invalidate(self) -> None:
        """Read the keys again next time (this relay parked, or the lease changed hands)."""
        self._keys = None


__all__ = ["HELD_KEYS_TTL", "ParkedKeys"]
