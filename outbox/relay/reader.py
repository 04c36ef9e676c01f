"""The relay's reads within one pass, in outbox order, with no row skipped.

**No skipped rows, no overtaking.** Each pass reads from the first pending row. Within a pass
a read continues after the last seq read only while no lower seq has become visible (a
transaction that committed late): the store counts, in the same statement as the read, the
pending rows up to the cursor, and the count must equal the events this pass has in flight.
When it does not, the read is dropped and the pass ends; the next pass starts from the first
row again, so the late event is published and no later event of its key goes first.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from outbox.relay.records import PendingEvent
from outbox.relay.store import OutboxStore


class OrderedReader:
    """One pass's cursor over the pending events (a new reader for each pass)."""

    def __init__(
        self, store: OutboxStore, batch_size: int, partitions: Sequence[int] | None = None
    ) -> None:
        self._store = store
        self._batch_size = batch_size
        #: Partitioned mode: the partitions held for this pass (reads and the late-commit
        #: count see only those); None reads the whole table.
        self._partitions = partitions
        #: The highest seq read in this pass (None before the first read).
        self.cursor: int | None = None

    def read(self, excluded: Collection[str], in_flight: int) -> tuple[list[PendingEvent], bool]:
        """Up to a batch of the next pending events, leaving out the `excluded` keys, and
        whether a late commit was seen (then the list is empty and the pass must end).

        `in_flight`: the events read in this pass and not yet marked (all still pending, all
        at or below the cursor)."""
        if self.cursor is None:
            events = self._store.fetch_pending(self._batch_size, excluded, self._partitions)
            below = in_flight
        else:
            # Only a count of one more than those in flight is needed to see a late one.
            events, below = self._store.fetch_after(
                self.cursor,
                self._batch_size,
                excluded,
                count_limit=in_flight + 1,
                partitions=self._partitions,
            )
        if events and below != in_flight:
            return [], True
        if events:
            self.cursor = events[-1].seq
        return events, False


__all__ = ["OrderedReader"]
