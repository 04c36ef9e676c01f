"""The checker, in the terms of Jepsen's queue checker, and the scenario figures it reports.

* lost: committed events never delivered (unique event ids); must be 0.
* duplicates: deliveries minus unique events delivered.
* order violations: per key, the first deliveries of its events must follow the key's commit
  order; each event delivered (for the first time) before an event of its key committed
  earlier counts once. Must be 0.
* phantom: events delivered that were never committed (rolled back, or made up); must be 0.

The application side records an event as committed only after its transaction's commit returned.
"""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Figures of every scenario of a run land here (git-ignored), one JSON file per scenario.
RESULTS_DIR = Path(os.environ.get("OUTBOX_FAULTS_RESULTS", Path(__file__).parent / ".results"))


class Ledger:
    """What the application committed: per key, event ids in commit order. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_key: dict[str, list[str]] = defaultdict(list)
        self.rolled_back = 0

    def committed(self, events: Iterable[tuple[str, str]]) -> None:
        """Record (key, event id) pairs of a transaction whose commit has returned."""
        with self._lock:
            for key, event_id in events:
                self.by_key[key].append(event_id)

    def discarded(self, count: int) -> None:
        with self._lock:
            self.rolled_back += count

    @property
    def total(self) -> int:
        with self._lock:
            return sum(len(ids) for ids in self.by_key.values())


@dataclass(frozen=True)
class Delivery:
    """One record read back from the broker."""

    key: str
    event_id: str
    partition: int
    offset: int


@dataclass
class Figures:
    committed: int
    delivered: int
    unique: int
    lost: int
    duplicates: int
    order_violations: int
    phantom: int
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        more = " ".join(f"{k}={v}" for k, v in self.extra.items())
        return (
            f"committed={self.committed} delivered={self.delivered} lost={self.lost} "
            f"duplicates={self.duplicates} order_violations={self.order_violations} "
            f"phantom={self.phantom} {more}"
        ).strip()


def check(committed: Mapping[str, Sequence[str]], deliveries: Sequence[Delivery]) -> Figures:
    """Compare what was committed with what was delivered.

    `deliveries` may come in any order across partitions; within a key they are ordered by
    (partition, offset), which is the order a consumer sees them in.
    """
    position: dict[str, tuple[str, int]] = {}
    for key, ids in committed.items():
        for index, event_id in enumerate(ids):
            position[event_id] = (key, index)
    seen: set[str] = set()
    phantom = 0
    firsts: dict[str, list[int]] = defaultdict(list)
    for d in sorted(deliveries, key=lambda d: (d.partition, d.offset)):
        where = position.get(d.event_id)
        if where is None:
            phantom += 1
            continue
        if d.event_id in seen:
            continue
        seen.add(d.event_id)
        firsts[where[0]].append(where[1])
    violations = 0
    for indexes in firsts.values():
        highest = -1
        for index in indexes:
            if index < highest:
                violations += 1
            highest = max(highest, index)
    total = len(position)
    return Figures(
        committed=total,
        delivered=len(deliveries),
        unique=len(seen),
        lost=total - len(seen),
        duplicates=len(deliveries) - len(seen) - phantom,
        order_violations=violations,
        phantom=phantom,
    )


def raw_order_regressions(
    committed: Mapping[str, Sequence[str]], deliveries: Sequence[Delivery]
) -> int:
    """Per key, in the order a consumer reads them, the deliveries (repeats included) of an
    event committed before one of its key already delivered: what a consumer that does not drop
    repeats sees go backwards. A resent tail (5 6 7 5 6 7) counts 2 (the second 5 and 6)."""
    position = {event_id: index for ids in committed.values() for index, event_id in enumerate(ids)}
    highest: dict[str, int] = {}
    regressions = 0
    for d in sorted(deliveries, key=lambda d: (d.partition, d.offset)):
        index = position.get(d.event_id)
        if index is None:
            continue
        if index < highest.get(d.key, -1):
            regressions += 1
        highest[d.key] = max(index, highest.get(d.key, -1))
    return regressions


def report(scenario: str, figures: Figures, **extra: Any) -> Figures:
    """Print the figures and write them to RESULTS_DIR/<scenario>.json."""
    figures.extra.update(extra)
    print(f"\n[faults] {scenario}: {figures.line()}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{scenario}.json").write_text(
        json.dumps({"scenario": scenario, **asdict(figures)}, indent=2, default=str)
    )
    return figures


def assert_exact(figures: Figures) -> None:
    """Nothing lost, no phantom, per-key order kept."""
    assert figures.lost == 0, figures.line()
    assert figures.phantom == 0, figures.line()
    assert figures.order_violations == 0, figures.line()
