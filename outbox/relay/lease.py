"""The relay's lease: leadership through a row in the database, and the fence its marks carry.

* **One active relay per table.** Relays elect a leader through a lease row in the database,
  judged by the database's clock. The holder renews it every ``lease_ttl / 3`` seconds;
  standbys try to take it every second, so after a holder dies a standby takes over within
  ``lease_ttl + 1`` seconds (7 s by default). A single publisher per table is what keeps every
  key's events in outbox order however many sidecars run.
* **Fencing.** Taking the lease bumps its epoch. Every mark (delete / park) runs in one
  transaction with an update of the lease row that matches only our epoch while unexpired (the
  store's statements take `fence()` and `ttl`), so a relay that was paused past its lease
  cannot mark anything, and before each send the relay checks a local deadline that ends before
  the database's expiry (`fresh()`).

Contract of `LeaseKeeper` (the loop's only way to the lease): `hold()` keeps (renewing when
due) or takes it; `acquire()` and `renew()` do one of the two now; `fresh()` is called before
each send and raises `LeaseLostError` past the local deadline; `fence()` gives the lease a fenced
statement must carry; `lost()` and `release()` give it up. Every change of holding is reported
once to `on_change`. The loop calls nothing else, so renewal can move to its own timer, or the
one lease become one per partition, behind these methods.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import Protocol

from outbox.errors import LeaseLostError
from outbox.relay.store import Fence, Lease, OutboxStore

logger = logging.getLogger("outbox.relay")

#: Renewals per TTL: the holder renews every ``ttl / RENEWALS_PER_TTL`` seconds.
RENEWALS_PER_TTL = 3
#: Fraction of the TTL after which this relay must not send without renewing first: ends before
#: the database's expiry (counted from after the renewal started), with a margin for clock drift.
DEADLINE_FRACTION = 0.8


class LeaseHolder(Protocol):
    """What the loop and the pipeline call: `LeaseKeeper` (one active relay per table) and
    `outbox.relay.partition_keeper.PartitionKeeper` (partitioned mode) both provide it."""

    ttl: float

    @property
    def current(self) -> Fence | None: ...

    def partitions(self) -> list[int] | None:
        """The partitions to read (None: the whole table)."""

    def seconds_to_renewal(self) -> float: ...

    def round_due(self) -> bool:
        """The pass should end now (between its batches) so that `hold` can rebalance."""

    def hold(self) -> bool: ...

    def fresh(self) -> Fence: ...

    def fence(self, why: str = ..., partitions: Collection[int | None] | None = None) -> Fence: ...

    def lost(self) -> None: ...

    def release(self) -> None: ...


class LeaseKeeper:
    """Acquires, renews and releases one relay's lease on its table, and keeps the local
    deadlines of the lease it holds. Not thread-safe: the loop's thread calls it."""

    def __init__(
        self,
        store: OutboxStore,
        owner: str,
        ttl: float,
        on_change: Callable[[bool, bool], None],
    ) -> None:
        self._store = store
        self.owner = owner
        #: Seconds the database keeps the lease after each renewal.
        self.ttl = ttl
        # Called with (held, released) each time the lease is taken or given up.
        self._on_change = on_change
        self._lease: Lease | None = None
        self._renew_at = 0.0
        self._deadline = 0.0

    @property
    def current(self) -> Lease | None:
        """The lease held now (None while standby)."""
        return self._lease

    def partitions(self) -> list[int] | None:
        """None: the one active relay reads the whole table."""
        return None

    def round_due(self) -> bool:
        """Never: a pass ends by itself (BATCHES_PER_PASS)."""
        return False

    def seconds_to_renewal(self) -> float:
        """Seconds until the held lease is due to be renewed (0 when due)."""
        return max(0.0, self._renew_at - time.monotonic())

    def hold(self) -> bool:
        """Keep or take the lease; False while another relay holds it."""
        now = time.monotonic()
        if self._lease is not None:
            if now < self._renew_at:
                return True
            try:
                self.renew(now)
                return True
            except LeaseLostError:
                # Logged once by the observer (LoggingObserver); the epoch is debug detail.
                logger.debug("lost the lease (epoch %d): now standby", self._lease.epoch)
                self._set(None)
        return self.acquire(now)

    def acquire(self, now: float | None = None) -> bool:
        """Take the lease if it is free or expired; False when another relay holds it."""
        now = time.monotonic() if now is None else now
        lease = self._store.try_acquire(self.owner, self.ttl)
        if lease is None:
            return False
        self._set_deadlines(now)
        self._set(lease)
        # Logged once by the observer (LoggingObserver); the epoch is debug detail.
        logger.debug("acquired the lease (epoch %d): now the active relay", lease.epoch)
        return True

    def fresh(self) -> Lease:
        """Renew before sending when due; raise LeaseLostError if the lease is gone."""
        if self._lease is None:
            raise LeaseLostError("no lease")
        now = time.monotonic()
        if now >= self._renew_at:
            self.renew(now)
        elif now >= self._deadline:
            raise LeaseLostError("local lease deadline passed")
        return self._lease

    def renew(self, now: float | None = None) -> None:
        """Renew the held lease now (`now`: when the renewal started, by `time.monotonic`);
        LeaseLostError when none is held or the database says another relay took it."""
        if self._lease is None:
            raise LeaseLostError("no lease")
        now = time.monotonic() if now is None else now
        self._store.renew(self._lease, self.ttl)
        self._set_deadlines(now)

    def fence(
        self, why: str = "no lease", partitions: Collection[int | None] | None = None
    ) -> Lease:
        """The lease a fenced mark must carry (whatever the `partitions` of its events);
        LeaseLostError(why) when none is held."""
        if self._lease is None:
            raise LeaseLostError(why)
        return self._lease

    def lost(self) -> None:
        """Forget the lease: the database said another relay holds it now."""
        self._set(None)

    def release(self) -> None:
        """Give the lease up in the database so a standby takes over at once; forgotten even
        when the database cannot be reached (it then expires by itself)."""
        if self._lease is None:
            return
        try:
            self._store.release(self._lease)
            released = True
        except Exception as error:
            logger.warning("could not release the lease: %s", first_line(error))
            released = False
        self._set(None, released=released)

    def _set_deadlines(self, started: float) -> None:
        self._renew_at = started + self.ttl / RENEWALS_PER_TTL
        self._deadline = started + self.ttl * DEADLINE_FRACTION

    def _set(self, lease: Lease | None, released: bool = False) -> None:
        changed = (lease is None) != (self._lease is None)
        self._lease = lease
        if changed:
            self._on_change(lease is not None, released)


def first_line(error: BaseException) -> str:
    """The first line of an error (a driver's own message, not SQLAlchemy's wrapper), for logs."""
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip()
    return text.splitlines()[0] if text else type(error).__name__


__all__ = ["LeaseHolder", "LeaseKeeper"]
