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

* **Renewal does not depend on publishing.** In `Relay.run` the lease is renewed by the
  lease-keeper thread (`outbox.relay.timer`) on its own database connection, so a relay waiting
  for a broker that went away keeps its lease for as long as it reaches the database; a
  watchdog stops sending (aborts the producer) when no renewal succeeded for long enough that
  the lease may expire. Only losing the database, or the process, moves the lease.

Contract of `LeaseKeeper` (the loop's only way to the lease): `hold()` keeps (renewing when
due, unless the timer renews) or takes it; `acquire()` and `renew()` do one of the two now;
`fresh()` is called before each read for a send and `sendable()` right before the send, both
raise `LeaseLostError` past the local deadline; `fence()` gives the lease a fenced statement must
carry; `lost()`, `forget()` and `release()` give it up. Every change of holding is reported once
to `on_change` (from whichever thread noticed it).
"""

from __future__ import annotations

import logging
import threading
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

    def round_due(self) -> bool:
        """The pass should end now (between its batches) so that `hold` can rebalance."""

    def seconds_to_renewal(self) -> float: ...

    def hold(self) -> bool: ...

    def fresh(self) -> Fence: ...

    def sendable(self) -> Fence: ...

    def fence(self, why: str = ..., partitions: Collection[int | None] | None = None) -> Fence: ...

    def lost(self) -> None: ...

    def release(self) -> None: ...


class LeaseKeeper:
    """Acquires, renews and releases one relay's lease on its table, and keeps the local
    deadlines of the lease it holds.

    Thread-safe: the loop's thread calls it, and so do the lease-keeper and watchdog threads of
    `outbox.relay.timer` once `timed` is set. No lock is held during a database call. While
    `timed`, the loop never renews (`hold` and `fresh` only check the deadline): renewal is the
    timer's alone, so waiting for the broker never delays it.
    """

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
        self._lock = threading.Lock()
        self._lease: Lease | None = None
        self._renew_at = 0.0
        self._deadline = 0.0
        #: Set by the timer when it renews the lease on its own thread (`RenewalTimer`).
        self.timed = False
        #: Set whenever the lease or its deadlines change (the watchdog waits on it).
        self.changed = threading.Event()

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

    def deadline(self) -> tuple[Lease, float] | None:
        """The lease held and its local deadline (by `time.monotonic`), or None."""
        with self._lock:
            return None if self._lease is None else (self._lease, self._deadline)

    def hold(self) -> bool:
        """Keep or take the lease; False while another relay holds it."""
        now = time.monotonic()
        lease = self._lease
        if lease is not None:
            if now < self._renew_at or (self.timed and now < self._deadline):
                return True
            try:
                if self.timed:
                    self._renew_late(lease)
                else:
                    self.renew(now)
                return True
            except LeaseLostError:
                # Logged once by the observer (LoggingObserver); the epoch is debug detail.
                logger.debug("lost the lease (epoch %d): now standby", lease.epoch)
                self.forget(lease)
        return self.acquire(now)

    def acquire(self, now: float | None = None) -> bool:
        """Take the lease if it is free or expired; False when another relay holds it."""
        now = time.monotonic() if now is None else now
        lease = self._store.try_acquire(self.owner, self.ttl)
        if lease is None:
            return False
        with self._lock:
            self._set_deadlines(now)
            change = self._set(lease)
        self._notify(change)
        # Logged once by the observer (LoggingObserver); the epoch is debug detail.
        logger.debug("acquired the lease (epoch %d): now the active relay", lease.epoch)
        return True

    def fresh(self) -> Lease:
        """Renew before sending when due (unless the timer renews); raise LeaseLostError if
        the lease is gone or past its local deadline."""
        lease = self._lease
        if lease is None:
            raise LeaseLostError("no lease")
        now = time.monotonic()
        if now >= self._renew_at and not self.timed:
            self.renew(now)
        elif now >= self._deadline:
            self._renew_late(lease)
        return lease

    def sendable(self) -> Lease:
        """Check that a send may start now (right before it): without a database call unless
        the local deadline has passed."""
        lease = self._lease
        if lease is None:
            raise LeaseLostError("no lease")
        if time.monotonic() >= self._deadline:
            self._renew_late(lease)
        return lease

    def _renew_late(self, lease: Lease) -> None:
        """The local deadline passed before the timer's renewal came (a host starved of CPU
        can hold a thread back for longer than the margin): renew once from here. The database
        decides, by the epoch, whether the lease is still this relay's; if it cannot be asked,
        the lease counts as lost (nothing is sent on a lease the database did not confirm)."""
        try:
            self.renew(via=self._store)
        except LeaseLostError:
            raise
        except Exception as error:
            raise LeaseLostError(f"local lease deadline passed ({first_line(error)})") from None
        if self._lease is not lease:  # forgotten meanwhile (the watchdog): lost after all
            raise LeaseLostError("local lease deadline passed")

    def renew(self, now: float | None = None, via: OutboxStore | None = None) -> None:
        """Renew the held lease now (`now`: when the renewal started, by `time.monotonic`;
        `via`: the store to renew through, by default the loop's); LeaseLostError when none
        is held or the database says another relay took it."""
        lease = self._lease
        if lease is None:
            raise LeaseLostError("no lease")
        now = time.monotonic() if now is None else now
        (via or self._store).renew(lease, self.ttl)
        with self._lock:
            if self._lease is lease:  # not lost (or retaken) while the renewal ran
                self._set_deadlines(now)

    def renewal_due(self) -> Lease | None:
        """The held lease if it is due to be renewed now, else None."""
        lease = self._lease
        if lease is None or time.monotonic() < self._renew_at:
            return None
        return lease

    def fence(
        self, why: str = "no lease", partitions: Collection[int | None] | None = None
    ) -> Lease:
        """The lease a fenced mark must carry (whatever the `partitions` of its events);
        LeaseLostError(why) when none is held."""
        lease = self._lease
        if lease is None:
            raise LeaseLostError(why)
        return lease

    def lost(self) -> None:
        """Forget the lease: the database said another relay holds it now."""
        with self._lock:
            change = self._set(None)
        self._notify(change)

    def forget(self, lease: Lease) -> bool:
        """Forget `lease` if it is still the one held (lost, or past its local deadline);
        True when it was."""
        with self._lock:
            if self._lease is not lease:
                return False
            change = self._set(None)
        self._notify(change)
        return True

    def release(self) -> None:
        """Give the lease up in the database so a standby takes over at once; forgotten even
        when the database cannot be reached (it then expires by itself)."""
        lease = self._lease
        if lease is None:
            return
        try:
            self._store.release(lease)
            released = True
        except Exception as error:
            logger.warning("could not release the lease: %s", first_line(error))
            released = False
        with self._lock:
            change = self._set(None, released=released) if self._lease is lease else None
        self._notify(change)

    def _set_deadlines(self, started: float) -> None:
        self._renew_at = started + self.ttl / RENEWALS_PER_TTL
        self._deadline = started + self.ttl * DEADLINE_FRACTION
        self.changed.set()

    def _set(self, lease: Lease | None, released: bool = False) -> tuple[bool, bool] | None:
        """Hold `lease` (None: none); the change to report once the lock is released."""
        changed = (lease is None) != (self._lease is None)
        self._lease = lease
        self.changed.set()
        return (lease is not None, released) if changed else None

    def _notify(self, change: tuple[bool, bool] | None) -> None:
        # Outside the lock: the callback may abort the producer, which takes a moment.
        if change is not None:
            self._on_change(*change)


def first_line(error: BaseException) -> str:
    """The first line of an error (a driver's own message, not SQLAlchemy's wrapper), for logs."""
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip()
    return text.splitlines()[0] if text else type(error).__name__


__all__ = ["LeaseHolder", "LeaseKeeper"]
