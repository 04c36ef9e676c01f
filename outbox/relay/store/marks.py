"""What the relay writes after a publish: completions (delete, or stamp when retaining) and
rejections (a counted attempt, parking), each fenced by the lease in the same transaction, or
on PostgreSQL in the same statement (`postgresql.FencedCompletion`). In partitioned mode the
fence is a `PartitionFence`: the epochs of every partition in the batch, checked in the same
transaction (`PartitionLeases.fence`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from outbox.errors import LeaseLostError
from outbox.relay.store.executor import Executor, now
from outbox.relay.store.leases import Lease, Leases
from outbox.relay.store.partitions import PartitionFence, PartitionLeases
from outbox.relay.store.postgresql import FencedCompletion, seq_in_array

#: What a mark carries: the relay lease (single-active) or its batch's partitions' epochs.
Fence = Lease | PartitionFence


class Marks:
    """Marks published and failed events of one outbox table, fenced by `leases` (or, in
    partitioned mode, by `partitions`)."""

    def __init__(
        self, executor: Executor, leases: Leases, table: sa.Table, partitions: PartitionLeases
    ) -> None:
        self._executor = executor
        self._leases = leases
        self._partitions = partitions
        self.table = t = table
        self.seq_range = t.c.seq.between(sa.bindparam("seq_lo"), sa.bindparam("seq_hi"))
        self.seq_any: sa.ColumnElement[bool] | None = None
        #: PostgreSQL only: the fence and the completion as one statement.
        self.fenced: FencedCompletion | None = None
        if executor.dialect == "postgresql":
            self.seq_any = seq_in_array(t)
            self.fenced = FencedCompletion(executor, leases, self.completion)

    def fence(self, conn: sa.Connection, lease: Fence, ttl: float) -> None:
        """The fence inside a mark's transaction: raises `LeaseLostError` unless it holds."""
        if isinstance(lease, PartitionFence):
            self._partitions.fence(conn, lease, ttl)
        else:
            self._leases.fence(conn, lease, ttl)

    def complete(self, lease: Fence, ttl: float, seqs: Sequence[int], retain: bool = False) -> None:
        """Delete (or, when retaining, stamp) published events, fenced by the lease."""
        if not seqs:
            return
        if self.fenced is not None and isinstance(lease, PartitionFence):
            ((where, params),) = self.seq_conditions(seqs)  # one condition on PostgreSQL
            if retain:
                params = {**params, "published_at": now()}
            statement = self._partitions.fenced(
                lease, ttl, lambda held: self.completion(sa.and_(where, held), retain)
            )
            if self._executor.rows(statement, params)[0][0] != len(lease.epochs):
                raise LeaseLostError(f"partitions {sorted(lease.epochs)} are no longer all ours")
            return
        if self.fenced is not None and isinstance(lease, Lease):
            ((where, params),) = self.seq_conditions(seqs)  # one condition on PostgreSQL
            if retain:
                params = {**params, "published_at": now()}
            self.fenced.complete(lease, ttl, where, params, retain)
            return
        with self._executor.write() as conn:
            self.fence(conn, lease, ttl)
            for where, params in self.seq_conditions(seqs):
                if retain:
                    params = {**params, "published_at": now()}
                conn.execute(self.completion(where, retain), params)

    def completion(self, where: sa.ColumnElement[bool], retain: bool) -> sa.Delete | sa.Update:
        """The DELETE of the rows `where` (when retaining: the UPDATE that stamps them)."""
        t = self.table
        if retain:
            stamp = sa.bindparam("published_at", type_=t.c.published_at.type)
            return sa.update(t).where(where).values(published_at=stamp)
        return sa.delete(t).where(where)

    def seq_conditions(
        self, seqs: Sequence[int]
    ) -> Iterator[tuple[sa.ColumnElement[bool], dict[str, Any]]]:
        """WHERE clauses (with their parameters) that match exactly the rows `seqs`.

        A sorted run of consecutive seqs is one range: seq is the primary key, so no other row
        can fall inside it. Otherwise PostgreSQL takes the list as one array parameter (no
        per-item placeholders to render and bind); the others get IN lists of 1,000."""
        if seqs[-1] - seqs[0] + 1 == len(seqs) and all(
            b - a == 1 for a, b in itertools.pairwise(seqs)
        ):
            yield self.seq_range, {"seq_lo": seqs[0], "seq_hi": seqs[-1]}
        elif self.seq_any is not None:
            yield self.seq_any, {"seqs": list(seqs)}
        else:
            for chunk in _chunks(seqs, 1000):
                yield self.table.c.seq.in_(chunk), {}

    def record_rejections(
        self,
        lease: Fence,
        ttl: float,
        rejections: Sequence[tuple[int, str]],
        max_attempts: int,
        park_now: bool = False,
    ) -> list[int]:
        """Count a failed attempt for each (seq, error); park those out of attempts (or all, with
        `park_now`, for rows that can never be sent). Returns the seqs parked."""
        if not rejections:
            return []
        t = self.table
        parked: list[int] = []
        parked_at = now()
        with self._executor.write() as conn:
            self.fence(conn, lease, ttl)
            for seq, error in rejections:
                attempts = conn.execute(
                    sa.select(t.c.attempts).where(t.c.seq == seq)
                ).scalar_one_or_none()
                if attempts is None:
                    continue
                attempts += 1
                park = park_now or attempts >= max_attempts
                conn.execute(
                    sa.update(t)
                    .where(t.c.seq == seq)
                    .values(
                        attempts=attempts,
                        last_error=error[:2000],
                        parked_at=parked_at if park else None,
                    )
                )
                if park:
                    parked.append(seq)
        return parked


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
