"""The snapshot's settings (validated when built), its result, and what progress reports carry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from outbox.errors import ConfigurationError
from outbox.snapshot.state import SnapshotInfo

#: The default rows per chunk (Debezium's incremental snapshot uses 1024).
DEFAULT_CHUNK_SIZE = 1000
MAX_CHUNK_SIZE = 100_000


def _positive(value: Any, name: str, *, integer: bool) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigurationError(f"{name} must be {kind}, got {value!r}")


@dataclass(frozen=True, slots=True)
class SnapshotOptions:
    """How to run a snapshot. `where` is SQL text (or a SQLAlchemy expression) on the model's
    table; `max_rows_per_second` caps the rate; while more than `max_pending` outbox events
    wait for the relay, the snapshot pauses; `restart` abandons an unfinished snapshot."""

    where: Any = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_rows_per_second: float | None = None
    max_pending: int | None = None
    restart: bool = False

    def __post_init__(self) -> None:
        _positive(self.chunk_size, "chunk_size", integer=True)
        if self.chunk_size > MAX_CHUNK_SIZE:
            raise ConfigurationError(
                f"chunk_size must be at most {MAX_CHUNK_SIZE} (one chunk is one transaction "
                f"that holds row locks), got {self.chunk_size}"
            )
        if self.max_rows_per_second is not None:
            _positive(self.max_rows_per_second, "max_rows_per_second", integer=False)
        if self.max_pending is not None:
            _positive(self.max_pending, "max_pending", integer=True)
        if isinstance(self.where, str) and not self.where.strip():
            raise ConfigurationError("where must be SQL text such as \"country = 'NL'\" or None")

    @property
    def effective_chunk_size(self) -> int:
        """Rows per chunk: `chunk_size`, or less under a rate cap (so a pause stays short)."""
        if self.max_rows_per_second is None:
            return self.chunk_size
        return max(1, min(self.chunk_size, int(self.max_rows_per_second)))


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    """A finished (or interrupted) snapshot: its id, the rows emitted and chunks committed over
    all its runs, the seconds spent in chunks, its state and whether this call resumed it."""

    id: str
    rows: int
    chunks: int
    seconds: float
    state: str = "done"
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress report: the snapshot row after a chunk, or why the snapshot waits."""

    info: SnapshotInfo
    waiting: str | None = None
