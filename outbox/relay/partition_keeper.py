"""Partitioned mode's keeper: which of the table's 64 partitions this relay publishes, with the
same contract as `LeaseKeeper` (the loop cannot tell them apart), and the rebalance.

* **Each partition is a lease** (`store.partitions`): claimed with an epoch bump, renewed every
  ``lease_ttl / 3`` seconds, judged by the database's clock. Before each send the relay checks a
  local deadline (0.8 TTL after the last renewal started), and every mark carries the epochs of
  the partitions in its batch (`fence`), checked by the database in the mark's transaction.
* **Fair share.** The live partitioned relays (the relays table's heartbeats, `Heartbeat`) are
  sorted by id; relay ``i`` of ``n`` targets ``64 // n`` partitions, one more when
  ``i < 64 % n``. Above its target a relay releases its highest-numbered surplus; below it, it
  claims partitions that are free or expired, starting at an offset set by its index so that
  claimers rarely collide. It never takes a partition from a live owner.
* **Release, then claim** (Kafka's cooperative rebalance, KIP-429). The round runs between
  passes only, when no batch is in flight, so a partition is released only once everything sent
  for it was marked; the next owner can claim it only after that release (or after its lease
  expired, when its owner died). So two relays never publish one partition at once.
* **A relay that loses a partition** (a renewal that no longer matches: paused past the TTL)
  raises `LeaseLostError` from `fresh`, so the pass ends before anything more is sent; its
  marks of that partition's batches fail the fence.
* **The mode** (`outbox partitions enable|disable`): outside partitioned mode the keeper holds
  nothing and releases what it held, so the table can be handed back to single-active relays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence

from outbox.config import RelayConfig
from outbox.errors import LeaseLostError
from outbox.partitioning import PARTITIONS
from outbox.relay.heartbeat import Heartbeat
from outbox.relay.lease import (
    DEADLINE_FRACTION,
    RENEWALS_PER_TTL,
    LeaseHolder,
    LeaseKeeper,
    first_line,
)
from outbox.relay.store import OutboxStore, PartitionFence

logger = logging.getLogger("outbox.relay")

#: Seconds between the log lines saying that the table is not in partitioned mode.
MODE_LOG_INTERVAL = 60.0


def fair_share(live: Sequence[str], me: str, partitions: int = PARTITIONS) -> tuple[int, int]:
    """(target count, index) of relay `me` among the `live` relay ids (me counted if absent)."""
    ids = sorted({*live, me})
    index = ids.index(me)
    base, extra = divmod(partitions, len(ids))
    return base + (1 if index < extra else 0), index


class PartitionKeeper:
    """Claims, renews and releases this relay's partitions. Not thread-safe: the loop's thread
    calls it. `on_change(held, released)` is called when it starts or stops holding any
    partition; `on_moved(held, claimed, released, lost)` after each round that changed them."""

    def __init__(
        self,
        store: OutboxStore,
        owner: str,
        ttl: float,
        heartbeat: Heartbeat,
        on_change: Callable[[bool, bool], None],
        on_moved: Callable[[int, int, int, int], None],
    ) -> None:
        self._store = store
        self.owner = owner
        self.ttl = ttl
        self._heartbeat = heartbeat
        self._on_change = on_change
        self._on_moved = on_moved
        #: partition -> epoch, of the partitions held now.
        self.held: dict[int, int] = {}
        self._renew_at = 0.0
        self._deadline = 0.0
        # Rounds have their own timer: the renewals `fresh` makes during a pass must not
        # postpone the rebalance.
        self._round_at = 0.0
        self._mode_logged = 0.0

    # -- the loop's contract (as LeaseKeeper) ------------------------------------------------

    @property
    def current(self) -> PartitionFence | None:
        """All partitions held (None while none is)."""
        return PartitionFence(self.owner, dict(self.held)) if self.held else None

    def partitions(self) -> list[int] | None:
        """The partitions to read from in the next pass."""
        return sorted(self.held)

    def seconds_to_renewal(self) -> float:
        return max(0.0, min(self._renew_at, self._round_at) - time.monotonic())

    def round_due(self) -> bool:
        """A rebalance round is due: the loop ends its pass (after the batches in flight)."""
        return time.monotonic() >= self._round_at

    def hold(self) -> bool:
        """Between passes: when due, renew, rebalance to the fair share; True while any
        partition is held."""
        now = time.monotonic()
        if now >= self._round_at:
            self._round_at = now + self.ttl / RENEWALS_PER_TTL
            self._round(now)
        elif now >= self._renew_at:
            self._renew(now)
        return bool(self.held)

    def fresh(self) -> PartitionFence:
        """Before a read that will be sent: renew when due; LeaseLostError if any partition
        was lost (the pass ends: no partition of another owner is read) or past the deadline."""
        if not self.held:
            raise LeaseLostError("no partition")
        now = time.monotonic()
        if now >= self._renew_at:
            before = len(self.held)
            self._renew(now)
            if len(self.held) < before:
                raise LeaseLostError(f"{before - len(self.held)} partitions lost")
        elif now >= self._deadline:
            raise LeaseLostError("local partition lease deadline passed")
        return PartitionFence(self.owner, dict(self.held))

    def sendable(self) -> PartitionFence:
        """Check, without a database call, that a send may start now (right before it)."""
        if not self.held:
            raise LeaseLostError("no partition")
        if time.monotonic() >= self._deadline:
            raise LeaseLostError("local partition lease deadline passed")
        return PartitionFence(self.owner, dict(self.held))

    def fence(
        self, why: str = "no partition", partitions: Collection[int | None] | None = None
    ) -> PartitionFence:
        """The epochs a mark of events of `partitions` must carry; LeaseLostError(why) when one
        of them is not held (or a row has no partition: it cannot be fenced)."""
        wanted = self.held.keys() if partitions is None else partitions
        epochs: dict[int, int] = {}
        for p in wanted:
            if p is None or p not in self.held:
                raise LeaseLostError(why)
            epochs[p] = self.held[p]
        return PartitionFence(self.owner, epochs)

    def lost(self) -> None:
        """A mark failed its fence: keep only what the database still says is ours."""
        try:
            self._renew(time.monotonic())
        except Exception as error:  # the database is down: hold nothing until it is back
            logger.debug("could not renew the partitions: %s", first_line(error))
            self._set({})

    def release(self) -> None:
        """Give every partition up (a clean stop: nothing in flight)."""
        if not self.held:
            return
        released = True
        try:
            self._store.partitions.release(self.owner, self.held)
        except Exception as error:
            logger.warning("could not release the partitions: %s", first_line(error))
            released = False
        count = len(self.held)
        self._set({}, released=released)
        self._on_moved(0, 0, count if released else 0, 0 if released else count)

    # -- the round ---------------------------------------------------------------------------

    def _renew(self, now: float) -> None:
        kept = self._store.partitions.renew(self.owner, self.held, self.ttl)
        self._set_deadlines(now)
        if kept != self.held:
            lost = len(self.held) - len(kept)
            logger.warning("lost %d partitions (paused past the lease?)", lost)
            self._set(kept)
            self._on_moved(len(kept), 0, 0, lost)

    def _round(self, now: float) -> None:
        partitions = self._store.partitions
        lost = 0
        if self.held:
            before = len(self.held)
            self._renew(now)
            lost = before - len(self.held)
        else:
            self._set_deadlines(now)
        mode = partitions.mode()
        if mode != "partitioned":
            if self.held:
                logger.info("table in %s mode: releasing %d partitions", mode, len(self.held))
                self.release()
            elif now >= self._mode_logged:
                self._mode_logged = now + MODE_LOG_INTERVAL
                logger.warning(
                    "table %s is in %s mode: waiting for `outbox partitions enable`",
                    self._store.table.fullname,
                    mode,
                )
            return
        live = [m.relay_id for m in self._heartbeat.live if m.mode == "partitioned"]
        target, index = fair_share(live, self.owner)
        relays = len({*live, self.owner})
        claimed = released = 0
        held = dict(self.held)
        if len(held) > target:
            surplus = {p: held[p] for p in sorted(held, reverse=True)[: len(held) - target]}
            partitions.release(self.owner, surplus)
            for p in surplus:
                del held[p]
            released = len(surplus)
        elif len(held) < target:
            free = [
                r.partition for r in partitions.rows() if not r.held and r.partition not in held
            ]
            start = index * PARTITIONS // relays
            free.sort(key=lambda p: (p - start) % PARTITIONS)
            for p in free:
                if len(held) >= target:
                    break
                epoch = partitions.claim(self.owner, p, self.ttl)
                if epoch is not None:
                    held[p] = epoch
                    claimed += 1
        if claimed or released:
            self._set(held)
        if claimed or released or lost:
            logger.info(
                "partitions: holding %d of %d (target %d of %d relays; +%d -%d, %d lost)",
                len(held), PARTITIONS, target, relays,
                claimed, released, lost,
            )  # fmt: skip
            self._on_moved(len(held), claimed, released, 0)
        if held and partitions.backfill():
            logger.warning("filled p_partition in rows an older writer left without it")

    def _set_deadlines(self, started: float) -> None:
        self._renew_at = started + self.ttl / RENEWALS_PER_TTL
        self._deadline = started + self.ttl * DEADLINE_FRACTION

    def _set(self, held: dict[int, int], released: bool = False) -> None:
        changed = bool(held) != bool(self.held)
        self.held = held
        if changed:
            self._on_change(bool(held), released)


def keeper_for(
    config: RelayConfig,
    store: OutboxStore,
    owner: str,
    heartbeat: Heartbeat,
    on_change: Callable[[bool, bool], None],
    on_moved: Callable[[int, int, int, int], None],
) -> LeaseHolder:
    """The relay's keeper: its partitions (partitioned mode) or the table's one lease."""
    if config.partitioned:
        return PartitionKeeper(store, owner, config.lease_ttl, heartbeat, on_change, on_moved)
    return LeaseKeeper(store, owner, config.lease_ttl, on_change)


__all__ = ["PartitionKeeper", "fair_share", "keeper_for"]
